"""Broker outages with real brokers: stop the broker mid-stream, keep publishing, start it again.

- Within the outbox bound (``block``) every event arrives after the restart, in per-room order.
- Beyond the bound (``drop_oldest``) ``on_drop`` reports exactly how many were dropped (the oldest), and
  every other event arrives.
- The outbox logs the outage once when it starts and once when it ends.

Delivery across an outage is at-least-once: a batch whose confirmation was lost in the cut may arrive
twice (core NATS and Kafka without idempotence have no broker-side deduplication); the tests require no
loss, room order of first arrivals, and report duplicates. ``OUTAGE_S`` is the length of the cut.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import nats
import pytest
from nats.js.api import StreamConfig

from bridge.bus.base import Publisher
from bridge.bus.kafka import KafkaPublisher
from bridge.bus.nats import NatsPublisher
from bridge.bus.outbox import Outbox, Overflow
from bridge.config import KafkaSettings, NatsSettings
from bridge.errors import BusUnavailable
from bridge.events.cloudevent import CloudEvent
from support.brokers import KafkaBroker, NatsServer, unique_name
from support.bus_consumers import (
    Collector,
    JetStreamCollector,
    KafkaCollector,
    Received,
    create_topic,
    wait_for_count,
)
from support.events import mixed_events
from support.waiting import eventually

OUTAGE_S = 2.0
CAPACITY = 60
PHASE_1 = 2  # events per room before the cut (5 rooms)
DURING_BLOCK = 10  # per room during the cut: 50 <= CAPACITY
DURING_DROP = 20  # per room during the cut: 100 > CAPACITY
Bus = Literal["nats", "jetstream", "kafka"]


@dataclass
class Cut:
    """How to cut and restore one broker, and what to do after it is back."""

    stop: object
    start: object
    after_start: object = None


class Drops:
    def __init__(self) -> None:
        self.events: list[CloudEvent] = []

    def __call__(self, bus: str, events: list[CloudEvent]) -> None:
        self.events.extend(events)


@pytest.fixture
def outage_s() -> float:
    """The length of the cut; override this fixture (or OUTAGE_S) for a longer outage."""
    return OUTAGE_S


@pytest.fixture
def outbox_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="bridge.bus.outbox")
    return caplog


class Gate:
    """A publisher wrapper that reports the bus unavailable while closed.

    tansu is in-memory: it restarts EMPTY, and a producer with cached metadata gets acks for records to
    the vanished topic that are then lost. A real Kafka keeps its topics, so the test keeps the gate closed
    from the cut until the topic exists again; that is the broker a real deployment has.
    """

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner
        self.name = inner.name
        self.open = True

    @property
    def connected(self) -> bool:
        return self.open and self.inner.connected

    async def start(self) -> None:
        await self.inner.start()

    async def publish_batch(self, events: Sequence[CloudEvent]) -> None:
        if not self.open:
            raise BusUnavailable(f"{self.name}: gate closed while tansu comes back empty")
        await self.inner.publish_batch(events)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _nats_rig(server: NatsServer, jetstream: bool) -> tuple[Publisher, Collector]:
    prefix = unique_name("out")
    publisher = NatsPublisher(
        NatsSettings(servers=(server.url,), subject_prefix=prefix, jetstream=jetstream),
        publish_timeout_s=2.0,
        reconnect_time_wait_s=0.2,
    )
    if not jetstream:
        # Core NATS keeps nothing: let a stream capture the subjects server-side, so what was published
        # while the consumer itself was reconnecting is still seen.
        nc = await nats.connect(server.url)
        await nc.jetstream().add_stream(
            StreamConfig(name=f"CAPTURE_{prefix.replace('-', '_')}", subjects=[f"{prefix}.events.>"])
        )
        await nc.close()
    await publisher.start()
    collector = JetStreamCollector(server.url, prefix)
    await collector.start()
    return publisher, collector


async def _kafka_rig(broker: KafkaBroker, topic: str) -> tuple[Publisher, Collector]:
    await create_topic(broker.bootstrap, topic, 4)
    publisher = KafkaPublisher(
        KafkaSettings(bootstrap_servers=(broker.bootstrap,), events_topic=topic, enable_idempotence=False),
        publish_timeout_s=3.0,
    )
    await publisher.start()
    collector = KafkaCollector(broker.bootstrap, topic)
    await collector.start()
    return publisher, collector


def _first_arrivals(received: list[Received]) -> tuple[list[Received], int]:
    seen: set[str] = set()
    first = []
    for r in received:
        if r.id not in seen:
            seen.add(r.id)
            first.append(r)
    return first, len(received) - len(first)


@pytest.mark.slow
@pytest.mark.parametrize("overflow", ["block", "drop_oldest"])
@pytest.mark.parametrize("bus", ["nats", "jetstream", "kafka"])
async def test_outage_then_recovery(
    bus: Bus,
    overflow: Overflow,
    request: pytest.FixtureRequest,
    outbox_logs: pytest.LogCaptureFixture,
    outage_s: float,
) -> None:
    gate: Gate | None = None
    if bus == "kafka":
        broker: KafkaBroker | NatsServer = request.getfixturevalue("fresh_kafka_broker")
        topic = unique_name("outage")
        assert isinstance(broker, KafkaBroker)
        publisher, collector = await _kafka_rig(broker, topic)
        publisher = gate = Gate(publisher)
    else:
        broker = request.getfixturevalue("fresh_nats_server")
        assert isinstance(broker, NatsServer)
        publisher, collector = await _nats_rig(broker, jetstream=bus == "jetstream")
    drops = Drops()
    outbox = Outbox(
        publisher,
        capacity=CAPACITY,
        overflow=overflow,
        on_drop=drops,
        max_batch=8,
        max_in_flight=4,  # the default: core NATS keeps up to 4 batches in flight across the cut
        retry_initial_s=0.05,
        retry_max_s=0.5,
    )
    outbox.start()
    during = DURING_BLOCK if overflow == "block" else DURING_DROP
    events = mixed_events(PHASE_1 + during)
    rooms = 5
    before, cut = events[: PHASE_1 * rooms], events[PHASE_1 * rooms :]
    try:
        for event in before:
            await outbox.put(event)
        await wait_for_count(collector, len(before), 20)

        # The cut: SIGKILL for tansu (a clean stop takes ~5 s with clients connected), SIGTERM for NATS.
        if isinstance(broker, KafkaBroker):
            assert gate is not None
            gate.open = False
            broker.kill()
        else:
            broker.stop()
        loop = asyncio.get_running_loop()
        began = loop.time()
        for i, event in enumerate(cut):
            await asyncio.wait_for(outbox.put(event), 1.0)  # within the bound / drop_oldest: never stalls
            if i == 0:
                await eventually(lambda: outbox.outage, within=10, what="the outbox to notice the outage")
        remaining = outage_s - (loop.time() - began)
        if remaining > 0:
            await asyncio.sleep(remaining)  # the deliberate outage window, not a synchronisation
        assert outbox.outage
        assert outbox.size == min(len(cut), CAPACITY)

        broker.start()
        if isinstance(broker, KafkaBroker):
            await create_topic(broker.bootstrap, topic, 4)  # tansu is in-memory: the topic is gone
            assert gate is not None
            gate.open = True
        expected_drops = max(0, len(cut) - CAPACITY)
        await eventually(
            lambda: not outbox.outage and outbox.size == 0, within=30, what="the outbox to drain"
        )
        assert len(drops.events) == outbox.dropped == expected_drops
        dropped_ids = {e.id for e in drops.events}
        # The oldest were dropped: exactly the first ``expected_drops`` of the cut.
        assert dropped_ids == {e.id for e in cut[:expected_drops]}
        expected = [e for e in cut if e.id not in dropped_ids]
        expected_ids = {e.id for e in expected}
        # A fresh consumer reads what the broker now holds from the beginning (the old one's session
        # would resume on its own, but JetStream ordered consumers take ~15 s to notice a restart).
        await collector.aclose()
        collector = (
            KafkaCollector(broker.bootstrap, topic)
            if isinstance(broker, KafkaBroker)
            else JetStreamCollector(broker.url, collector.prefix)  # type: ignore[attr-defined]
        )
        await collector.start()

        def arrived() -> bool:
            return expected_ids <= {r.id for r in collector.received}

        await eventually(arrived, within=30, what=f"all {len(expected)} events published during the cut")
        first, duplicates = _first_arrivals([r for r in collector.received if r.id in expected_ids])
        for room in {e.ctx.room for e in expected}:
            got = [int(r.attrs["sequence"]) for r in first if r.attrs["lkroom"] == room]
            assert got == sorted(got), f"room {room!r} out of order"
        if bus == "jetstream":
            assert duplicates == 0, "JetStream deduplicates re-sent batches by Nats-Msg-Id"
        print(
            f"\n{bus}/{overflow}: {len(expected)} delivered, {expected_drops} dropped, "
            f"{duplicates} duplicates"
        )
    finally:
        await outbox.aclose(2)
        await collector.aclose()
        await publisher.aclose()
    messages = [r.getMessage() for r in outbox_logs.records if r.name == "bridge.bus.outbox"]
    assert sum("unavailable, holding events" in m for m in messages) == 1, messages
    assert sum("available again" in m for m in messages) == 1, messages
