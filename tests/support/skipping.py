"""The one deliberate skip that tests marked ``nats``/``kafka``/``sdk`` may use (see tests/conftest.py)."""

from __future__ import annotations

from typing import NoReturn

from _pytest.outcomes import Skipped


class AllowedSkip(Skipped):  # what pytest.skip() raises
    """A skip that the must-run rule accepts: raise it through :func:`allowed_skip`."""


def allowed_skip(reason: str) -> NoReturn:
    """Skip a nats/kafka/sdk test on purpose; the reason shows in the ``-ra`` summary."""
    raise AllowedSkip(msg=f"[allowed] {reason}", _use_item_location=True)
