"""A forward being set up while its room session closes, or while the same track is forwarded already."""

from __future__ import annotations

import asyncio

import pytest

from bridge.errors import MediaRefused
from bridge.media.forward import Forwarder


def _forwarder(max_forwards: int = 2) -> Forwarder:
    return Forwarder(
        room="r",
        allow=("127.0.0.1/32", "localhost"),
        max_forwards=max_forwards,
        queue_packets=10,
        request_keyframe=lambda sid: False,
        count_dropped=lambda remote, n: None,
    )


async def test_a_forward_that_resolves_while_the_session_closes_is_refused_and_leaves_nothing() -> None:
    forwarder = _forwarder()
    starting = asyncio.create_task(forwarder.start("TR_a", "localhost", 9, "opus"))
    await asyncio.sleep(0)  # let it reach the name lookup (an await in a worker thread)
    await forwarder.aclose()
    with pytest.raises(MediaRefused) as caught:
        await starting
    assert caught.value.code == "unavailable"
    assert forwarder.forwards == {}


async def test_two_starts_for_one_track_give_one_forward() -> None:
    forwarder = _forwarder()
    try:
        results = await asyncio.gather(
            forwarder.start("TR_a", "localhost", 9, "opus"),
            forwarder.start("TR_a", "localhost", 9, "opus"),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, MediaRefused)]
        assert [r.code for r in refused] == ["busy"], results
        assert list(forwarder.forwards) == ["TR_a"]
    finally:
        await forwarder.aclose()
