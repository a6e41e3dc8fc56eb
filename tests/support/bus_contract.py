"""ONE behavioural contract for every bus adapter (the FastStream pattern: research/aesthetics.md §2.2).

A subclass names the bus by providing the ``rig`` fixture: a :class:`Rig` holding a started publisher, a
started consumer on the real other side, and ``check_wire`` for what only that binding carries (Kafka key
and SDK parsing, NATS subject and JSON format...). Every case publishes through an
:class:`~bridge.bus.outbox.Outbox`, as the bridge does, and asserts on what the consumer received:

- every event arrives exactly once, and each room's events arrive in publish order;
- the attributes and the data bytes are exactly what was published;
- the wire form is the fixed contract (checked by ``check_wire``, per binding).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from bridge.bus.base import Publisher
from bridge.bus.outbox import Outbox
from bridge.events.cloudevent import JSON, CloudEvent
from support.bus_consumers import Collector, Received, wait_for_count
from support.events import WEIRD_ROOMS, mixed_events

DELIVERY_DEADLINE_S = 20.0


@dataclass
class Rig:
    publisher: Publisher
    collector: Collector
    check_wire: Callable[[Received, CloudEvent], None] = lambda received, event: None
    extras: dict[str, object] = field(default_factory=dict)


def assert_same_event(received: Received, event: CloudEvent) -> None:
    attrs = dict(received.attrs)
    data = attrs.pop("data")
    data_json = attrs.pop("data_json", None)
    assert attrs == event.attributes()
    if data_json is not None:  # structured JSON carries the JSON value itself
        assert event.datacontenttype == JSON
        assert data_json == json.loads(event.data)
    else:
        assert data == event.data, "data bytes must be identical"


def assert_room_order(received: list[Received]) -> None:
    per_room: dict[str, list[int]] = defaultdict(list)
    for r in received:
        per_room[str(r.attrs["lkroom"])].append(int(r.attrs["sequence"]))
    for room, seqs in per_room.items():
        assert seqs == sorted(seqs), f"room {room!r} out of order: {seqs}"


async def publish_through_outbox(publisher: Publisher, events: list[CloudEvent], *, max_batch: int) -> Outbox:
    drops: list[CloudEvent] = []
    outbox = Outbox(
        publisher,
        capacity=10_000,
        overflow="block",
        on_drop=lambda _bus, evs: drops.extend(evs),
        max_batch=max_batch,
    )
    outbox.start()
    for event in events:
        await outbox.put(event)
    await outbox.aclose(flush_deadline_s=DELIVERY_DEADLINE_S)
    assert not drops
    assert outbox.published == len(events)
    return outbox


class BusContract:
    """Subclasses provide ``rig``; pytest collects them as ``Test...``."""

    @pytest.fixture
    def rig(self) -> Rig:
        raise NotImplementedError

    async def test_every_event_arrives_once_in_room_order_with_identical_content(self, rig: Rig) -> None:
        events = mixed_events(24)  # 5 rooms x 24, every type, protobuf and JSON data
        outbox = await publish_through_outbox(rig.publisher, events, max_batch=17)
        assert outbox.batches >= len(events) // 17
        received = await wait_for_count(rig.collector, len(events), DELIVERY_DEADLINE_S)
        ids = [r.id for r in received]
        assert len(ids) == len(set(ids)), "no duplicates"
        by_id = {e.id: e for e in events}
        assert set(ids) == set(by_id)
        assert_room_order(received)
        for r in received:
            assert_same_event(r, by_id[r.id])
            rig.check_wire(r, by_id[r.id])
        assert {r.attrs["lkroom"] for r in received} == set(WEIRD_ROOMS)

    async def test_single_events_and_big_batches(self, rig: Rig) -> None:
        events = mixed_events(200, rooms=("solo", "duo.room"))
        await publish_through_outbox(rig.publisher, events[:1], max_batch=1)
        await publish_through_outbox(rig.publisher, events[1:], max_batch=500)
        received = await wait_for_count(rig.collector, len(events), DELIVERY_DEADLINE_S)
        assert [r.id for r in received if r.attrs["lkroom"] == "solo"] == [
            e.id for e in events if e.ctx.room == "solo"
        ]
        assert len({r.id for r in received}) == len(events)

    async def test_publisher_reports_connected(self, rig: Rig) -> None:
        assert rig.publisher.connected
        await rig.publisher.publish_batch([])  # an empty batch is a no-op, never an error
