"""The bus contract against the in-memory bus, plus the Outbox's own behaviour (no broker needed)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from bridge.bus.memory import InMemoryBus
from bridge.bus.outbox import EventFanout, Outbox, OutboxClosed
from bridge.errors import BusUnavailable, PublishFailed
from bridge.events.cloudevent import CloudEvent
from support.bus_consumers import MemoryCollector, Received
from support.bus_contract import BusContract, Rig, assert_room_order
from support.events import context, make_event, mixed_events
from support.waiting import eventually


class TestMemoryBus(BusContract):
    @pytest.fixture
    async def rig(self) -> AsyncIterator[Rig]:
        bus = InMemoryBus()
        await bus.start()
        collector = MemoryCollector(bus)
        await collector.start()
        yield Rig(bus, collector)
        await collector.aclose()
        await bus.aclose()


# -- Outbox behaviour ----------------------------------------------------------------------------------


class Drops:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[CloudEvent]]] = []

    def __call__(self, bus: str, events: list[CloudEvent]) -> None:
        self.calls.append((bus, events))

    @property
    def count(self) -> int:
        return sum(len(e) for _, e in self.calls)


def events(n: int) -> list[CloudEvent]:
    ctx = context("room")
    return [make_event(ctx, i) for i in range(1, n + 1)]


async def test_retriable_failure_keeps_events_and_logs_the_outage_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = InMemoryBus()
    bus.available = False
    drops = Drops()
    outbox = Outbox(
        bus, capacity=100, overflow="block", on_drop=drops, retry_initial_s=0.01, retry_max_s=0.02
    )
    outbox.start()
    caplog.set_level(logging.INFO, logger="bridge.bus.outbox")
    for event in events(30):
        await outbox.put(event)
    await eventually(lambda: outbox.retries >= 5, within=5, what="several retries")
    assert outbox.outage
    assert outbox.size == 30
    assert bus.published == 0
    bus.available = True
    got = await bus.wait_for(30, timeout=5)
    assert [e.sequence for e in got] == list(range(1, 31))
    await outbox.aclose(1)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in messages) == 1, messages
    assert sum("available again" in m for m in messages) == 1, messages
    assert "30 events delayed, 0 dropped" in " ".join(messages)
    assert drops.count == 0
    stats = outbox.stats()
    assert stats.published == 30
    assert stats.retries >= 5
    assert stats.last_error
    assert not stats.outage


async def test_drop_oldest_evicts_and_reports_exactly() -> None:
    bus = InMemoryBus()
    bus.available = False
    drops = Drops()
    outbox = Outbox(
        bus, capacity=10, overflow="drop_oldest", on_drop=drops, max_batch=4, retry_initial_s=0.01
    )
    outbox.start()
    evs = events(25)
    for event in evs:
        await asyncio.wait_for(outbox.put(event), 0.5)  # never waits
    assert drops.count == 15
    assert outbox.dropped == 15
    assert outbox.size == 10
    assert all(bus_name == "memory" for bus_name, _ in drops.calls)
    dropped = [e.sequence for _, batch in drops.calls for e in batch]
    bus.available = True
    got = await bus.wait_for(10, timeout=5)
    assert sorted(dropped + [e.sequence for e in got]) == list(range(1, 26))
    assert [e.sequence for e in got] == sorted(e.sequence for e in got)
    await outbox.aclose(1)


async def test_block_waits_for_room() -> None:
    bus = InMemoryBus()
    bus.available = False
    outbox = Outbox(
        bus, capacity=5, overflow="block", on_drop=Drops(), retry_initial_s=0.01, retry_max_s=0.02
    )
    outbox.start()
    evs = events(8)
    for event in evs[:5]:
        await outbox.put(event)
    blocked = asyncio.create_task(outbox.put(evs[5]))
    await asyncio.sleep(0.05)  # a deliberate window in which the put must stay blocked
    assert not blocked.done()
    bus.available = True
    await asyncio.wait_for(blocked, 5)
    for event in evs[6:]:
        await outbox.put(event)
    got = await bus.wait_for(8, timeout=5)
    assert [e.sequence for e in got] == list(range(1, 9))
    await outbox.aclose(1)
    with pytest.raises(OutboxClosed):
        await outbox.put(evs[0])


async def test_non_retriable_batch_is_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    bus = InMemoryBus()
    bus.reject = lambda e: e.sequence == 3
    drops = Drops()
    outbox = Outbox(bus, capacity=100, overflow="block", on_drop=drops, max_batch=2)
    outbox.start()
    for event in events(6):
        await outbox.put(event)
    await outbox.aclose(2)
    assert [e.sequence for e in bus.events] == [1, 2, 5, 6]
    assert drops.count == 2
    assert outbox.failed_batches == 1
    assert outbox.retries == 0
    err = PublishFailed("x")
    assert err.retriable
    assert not outbox.outage


async def test_fanout_dead_drop_oldest_bus_never_stalls_the_others() -> None:
    dead = InMemoryBus("nats")
    dead.available = False
    alive = InMemoryBus("kafka")
    drops = Drops()
    fan = EventFanout(
        [
            Outbox(dead, capacity=5, overflow="drop_oldest", on_drop=drops, retry_initial_s=0.01),
            Outbox(alive, capacity=5, overflow="block", on_drop=drops),
        ]
    )
    fan.start()
    evs = mixed_events(20)
    async with asyncio.timeout(10):
        for event in evs:
            await fan.emit(event)
    got = await alive.wait_for(len(evs), timeout=5)
    assert_room_order([_as_received(e) for e in got])
    assert drops.count == len(evs) - 5
    assert {b for b, _ in drops.calls} == {"nats"}
    await fan.aclose(0.2)
    assert drops.count == len(evs)  # the dead bus's last 5 are dropped at the shutdown deadline


async def test_aclose_flushes_within_the_deadline() -> None:
    bus = InMemoryBus()
    outbox = Outbox(bus, capacity=1000, overflow="block", on_drop=Drops(), max_batch=50)
    outbox.start()
    for event in events(500):
        outbox.put_nowait(event)
    await outbox.aclose(5)
    assert bus.published == 500
    assert outbox.batches == 10


async def test_memory_bus_raises_bus_errors() -> None:
    bus = InMemoryBus()
    bus.available = False
    with pytest.raises(BusUnavailable):
        await bus.start()
    with pytest.raises(BusUnavailable):
        await bus.publish_batch(events(1))


def _as_received(event: CloudEvent) -> Received:
    return Received({**event.attributes(), "data": event.data})
