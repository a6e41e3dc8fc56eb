"""The added-latency measurement of the outbox: the histogram, and what the outbox counts into it."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

import pytest

from bridge.bus.memory import InMemoryBus
from bridge.bus.outbox import EventFanout, LatencyHistogram, Outbox
from bridge.events.cloudevent import CloudEvent
from support.events import context, make_event
from support.waiting import eventually

RESOLUTION = 10 ** (1 / 20)  # one bucket of the default histogram


def _events(n: int) -> list[CloudEvent]:
    ctx = context("room")
    return [make_event(ctx, i) for i in range(1, n + 1)]


def _no_drops(bus: str, events: list[CloudEvent]) -> None:
    raise AssertionError(f"{bus}: {len(events)} events dropped")


# -- the histogram -----------------------------------------------------------------------------------


def test_empty_histogram() -> None:
    h = LatencyHistogram()
    assert h.count == 0
    assert h.percentile(50) == 0.0
    assert h.percentile(99) == 0.0
    assert h.mean_s == 0.0


def test_percentiles_of_known_samples() -> None:
    h = LatencyHistogram()
    # 1 .. 1000 ms: the p-th percentile is p * 10 ms.
    samples = [i / 1000 for i in range(1, 1001)]
    random.Random(4).shuffle(samples)
    h.record_since(10.0, [10.0 - s for s in samples])
    assert h.count == 1000
    assert h.max_s == pytest.approx(1.0)
    assert h.mean_s == pytest.approx(0.5005)
    for p, exact in ((1, 0.010), (50, 0.500), (90, 0.900), (99, 0.990)):
        got = h.percentile(p)
        # The bucket's upper bound: never below the true value, at most one bucket above it.
        assert exact * (1 - 1e-9) <= got <= exact * RESOLUTION, (p, got)
    assert h.percentile(100) == pytest.approx(1.0)  # capped at the largest sample
    assert h.percentile(0) <= 0.001 * RESOLUTION


def test_skewed_samples_and_the_tail() -> None:
    h = LatencyHistogram()
    for _ in range(990):
        h.record(0.002)
    for _ in range(10):
        h.record(0.050)
    assert 0.002 <= h.percentile(50) <= 0.002 * RESOLUTION
    assert 0.002 <= h.percentile(99) <= 0.002 * RESOLUTION  # rank 990 is still a 2 ms sample
    assert h.percentile(99.1) == pytest.approx(0.050)  # rank 991: the tail (capped at the max)


def test_out_of_range_samples_are_kept() -> None:
    h = LatencyHistogram(low_s=1e-3, high_s=1.0, per_decade=10)
    h.record(0.0)
    h.record(-0.5)  # a clock that stepped back is counted, in the lowest bucket
    h.record(5.0)
    h.record(500.0)
    assert h.count == 4
    assert h.percentile(50) == pytest.approx(1e-3)
    assert h.percentile(100) == pytest.approx(500.0)
    h.reset()
    assert h.count == 0
    assert h.percentile(99) == 0.0


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="low_s"):
        LatencyHistogram(low_s=1.0, high_s=0.5)
    with pytest.raises(ValueError, match="within"):
        LatencyHistogram().percentile(101)


# -- the outbox --------------------------------------------------------------------------------------


class SlowBus(InMemoryBus):
    """Confirms each batch after ``delay_s``."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    async def publish_batch(self, events: Sequence[CloudEvent]) -> None:
        await asyncio.sleep(self.delay_s)
        await super().publish_batch(events)


async def test_outbox_records_put_to_confirmed_latency() -> None:
    bus = SlowBus(0.02)
    await bus.start()
    outbox = Outbox(bus, capacity=100, overflow="block", on_drop=_no_drops)
    fanout = EventFanout([outbox])
    fanout.start()
    evs = _events(10)
    for event in evs[:5]:
        await fanout.emit(event)
    # Stamped 30 ms before the put (a frame received earlier): counted from the stamp.
    earlier = time.monotonic() - 0.03
    for event in evs[5:]:
        await outbox.put(event, earlier)
    await eventually(lambda: outbox.published == 10, within=5, what="all published")
    stats = outbox.stats()
    assert stats.latency_count == 10
    assert outbox.latency.count == 10
    assert 20 <= stats.latency_p50_ms < 500, stats
    assert 50 <= stats.latency_max_ms < 1000, stats  # 30 ms before the put + at least one 20 ms batch
    assert stats.latency_p99_ms == pytest.approx(stats.latency_max_ms)
    await fanout.aclose(1)
    await bus.aclose()


async def test_retried_batches_keep_their_stamps_and_dropped_events_are_not_counted() -> None:
    bus = InMemoryBus()
    await bus.start()
    bus.available = False
    dropped: list[CloudEvent] = []
    outbox = Outbox(
        bus,
        capacity=5,
        overflow="drop_oldest",
        on_drop=lambda _, events: dropped.extend(events),
        retry_initial_s=0.01,
        retry_max_s=0.02,
    )
    outbox.start()
    for event in _events(8):
        await outbox.put(event)
    await asyncio.sleep(0.1)  # down for at least 100 ms: several retries
    assert outbox.latency.count == 0
    bus.available = True
    await eventually(lambda: outbox.published == 8 - len(dropped), within=5, what="the rest published")
    assert dropped
    assert outbox.latency.count == outbox.published
    assert outbox.latency.percentile(0) >= 0.1  # the outage is in every published event's latency
    await outbox.aclose(1)
    await bus.aclose()
