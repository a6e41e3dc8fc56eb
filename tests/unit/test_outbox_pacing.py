"""Outbox pacing (``batch_interval_s``): a trickle of events goes out in fewer, fuller batches, while a full
batch and a shutdown never wait for the interval."""

from __future__ import annotations

import asyncio
import time

from bridge.bus.memory import InMemoryBus
from bridge.bus.outbox import Outbox
from bridge.events.cloudevent import CloudEvent
from support.events import context, make_event
from support.waiting import eventually


def _events(n: int) -> list[CloudEvent]:
    ctx = context("room")
    return [make_event(ctx, i) for i in range(1, n + 1)]


def _no_drops(bus: str, events: list[CloudEvent]) -> None:
    raise AssertionError(f"{bus}: {len(events)} events dropped")


async def _trickle(interval_s: float) -> int:
    """Batches needed for 30 events put 3 ms apart."""
    bus = InMemoryBus()
    await bus.start()
    outbox = Outbox(bus, capacity=100, overflow="block", on_drop=_no_drops, batch_interval_s=interval_s)
    outbox.start()
    for event in _events(30):
        await outbox.put(event)
        await asyncio.sleep(0.003)  # the input's pace, not a synchronisation
    await eventually(lambda: outbox.published == 30, within=5, what="all published")
    await outbox.aclose(1)
    return outbox.batches


async def test_a_trickle_is_gathered_into_fewer_batches() -> None:
    eager, paced = await _trickle(0.0), await _trickle(0.03)
    assert eager >= 20, eager  # each event on its own, or nearly
    assert paced <= 6, paced  # ~90 ms of input at one batch per 30 ms (+ the first, sent at once)


async def test_the_first_event_a_full_batch_and_a_shutdown_do_not_wait() -> None:
    bus = InMemoryBus()
    await bus.start()
    outbox = Outbox(bus, capacity=100, overflow="block", on_drop=_no_drops, max_batch=10, batch_interval_s=1)
    outbox.start()
    events = _events(25)
    start = time.monotonic()
    await outbox.put(events[0])
    await eventually(lambda: outbox.published == 1, within=2, what="the first event")
    for event in events[1:11]:
        await outbox.put(event)
    await eventually(lambda: outbox.published == 11, within=2, what="a full batch")
    for event in events[11:]:
        await outbox.put(event)  # fewer than a batch: they would wait for the interval
    await outbox.aclose(5)
    assert outbox.published == 25
    assert time.monotonic() - start < 0.9  # nothing waited for the 1 s interval
    assert [e.sequence for e in bus.events] == [e.sequence for e in events]
