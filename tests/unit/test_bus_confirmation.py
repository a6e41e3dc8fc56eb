"""``bus.base.confirmation``: a batch's confirmation from a client's ack futures, without a task."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from bridge.bus.base import confirmation, rejected
from bridge.errors import BusError, BusUnavailable, PublishFailed


class Refused(Exception):
    """A client's "this record is wrong"."""


class Strange(Exception):
    """A client exception the adapter does not know."""


def _translate(exc: BaseException) -> BusError | None:
    if isinstance(exc, Refused):
        return rejected("test", "refused", exc)
    if isinstance(exc, (OSError, asyncio.CancelledError, TimeoutError)):
        return BusUnavailable(f"test: not confirmed ({type(exc).__name__})")
    return None


def _acks(n: int) -> list[asyncio.Future[Any]]:
    loop = asyncio.get_running_loop()
    return [loop.create_future() for _ in range(n)]


async def test_done_once_every_ack_is() -> None:
    acks = _acks(3)
    confirmed = confirmation("test", acks, 5, _translate)
    acks[2].set_result(1)
    acks[0].set_result(1)
    await asyncio.sleep(0)
    assert not confirmed.done()
    acks[1].set_result(1)
    await asyncio.sleep(0)
    assert confirmed.done()
    assert confirmed.result() is None


async def test_no_acks_is_already_confirmed() -> None:
    assert confirmation("test", [], 5, _translate).result() is None


async def test_the_first_failure_is_translated_and_keeps_its_cause() -> None:
    acks = _acks(2)
    confirmed = confirmation("test", acks, 5, _translate)
    cause = Refused("record too large")
    acks[1].set_exception(cause)
    with pytest.raises(PublishFailed) as raised:
        await confirmed
    assert not raised.value.retriable
    assert raised.value.__cause__ is cause
    acks[0].set_exception(OSError("later"))  # settled already: ignored, and retrieved
    await asyncio.sleep(0)


async def test_a_bus_error_passes_through_and_an_unknown_one_stays_itself() -> None:
    acks = _acks(1)
    confirmed = confirmation("test", acks, 5, _translate)
    own = BusUnavailable("test: gone")
    acks[0].set_exception(own)
    with pytest.raises(BusUnavailable) as raised:
        await confirmed
    assert raised.value is own

    acks = _acks(1)
    confirmed = confirmation("test", acks, 5, _translate)
    acks[0].set_exception(Strange())
    with pytest.raises(Strange):  # the outbox keeps the events of an adapter bug and retries
        await confirmed


async def test_a_cancelled_ack_is_a_failure() -> None:
    acks = _acks(1)
    confirmed = confirmation("test", acks, 5, _translate)
    acks[0].cancel()
    with pytest.raises(BusUnavailable):
        await confirmed


async def test_no_answer_in_time_is_unavailable_and_the_ack_is_left_alone() -> None:
    acks = _acks(1)
    confirmed = confirmation("test", acks, 0.05, _translate)
    with pytest.raises(BusUnavailable, match="not confirmed") as raised:
        await confirmed
    assert isinstance(raised.value.__cause__, TimeoutError)  # translated like the client's own timeout
    # The client may still resolve it (nats-py's reader would die on a cancelled PONG future).
    assert not acks[0].done()
    acks[0].set_result(True)
    await asyncio.sleep(0)


async def test_late_failures_are_retrieved(caplog: pytest.LogCaptureFixture) -> None:
    acks = _acks(1)
    confirmed = confirmation("test", acks, 0.01, _translate)
    with pytest.raises(BusUnavailable):
        await confirmed
    acks[0].set_exception(OSError("after the timeout"))
    await asyncio.sleep(0)
    del acks
    gc.collect()
    assert "never retrieved" not in caplog.text


async def test_a_translation_bug_fails_the_batch_at_once() -> None:
    def broken(exc: BaseException) -> BusError | None:
        raise KeyError("bug")

    acks = _acks(1)
    confirmed = confirmation("test", acks, 60, broken)
    acks[0].set_exception(OSError("lost"))
    with pytest.raises(KeyError):
        await asyncio.wait_for(confirmed, 5)
