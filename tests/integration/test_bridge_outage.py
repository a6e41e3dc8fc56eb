"""A bus outage while rooms are live: buffered events arrive afterwards, overflow becomes a gap event."""

from __future__ import annotations

import logging

import pytest
from livekit.protocol import models

from bridge._proto import events_pb2
from bridge.app import Bridge
from bridge.config import load_settings
from support.bridge import bridge_settings
from support.brokers import NatsServer, unique_name
from support.bus_consumers import JetStreamCollector
from support.simulator import running_sim
from support.waiting import eventually

ROOM = "outage"
IDENTITY = "livekit-bridge"
CAPACITY = 40
OUTAGE_EVENTS = 100


async def test_nats_outage_buffers_then_reports_the_gap(
    fresh_nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = unique_name("lk").replace("-", "_")
    async with running_sim() as (server, scenario):
        scenario.join(ROOM, "alice")
        base = bridge_settings(server, ROOM)
        settings = load_settings(
            None,
            {
                "BRIDGE_LIVEKIT__URL": base.livekit.url,
                "BRIDGE_LIVEKIT__API_KEY": base.livekit.api_key,
                "BRIDGE_LIVEKIT__API_SECRET": base.livekit.api_secret.reveal(),
                "BRIDGE_ROOMS__STATIC": f"[{ROOM}]",
                "BRIDGE_HTTP__LISTEN": "127.0.0.1:0",
                "BRIDGE_NATS__SERVERS": fresh_nats_server.url,
                "BRIDGE_NATS__SUBJECT_PREFIX": prefix,
                "BRIDGE_NATS__JETSTREAM": "true",  # the stream keeps what arrives while we reconnect
                "BRIDGE_OUTBOX__CAPACITY": str(CAPACITY),
                "BRIDGE_OUTBOX__OVERFLOW": "drop_oldest",
            },
        )
        bridge = Bridge(settings)
        await bridge.start()
        session = bridge.supervisor.sessions[ROOM]
        outbox = bridge.outboxes[0]
        try:

            def active() -> bool:
                p = server.rooms[ROOM].participants.get(IDENTITY)
                return p is not None and p.info.state == models.ParticipantInfo.ACTIVE

            await eventually(active, within=15, what="bridge ACTIVE")
            await eventually(lambda: outbox.published >= session.mapper.sequence, within=10, what="flushed")
            before = session.mapper.sequence
            with caplog.at_level(logging.WARNING):
                fresh_nats_server.stop()
                for n in range(OUTAGE_EVENTS):  # room activity while NATS is down
                    scenario.speak(ROOM, {"alice": 0.01 + (n % 50) / 100})
                await eventually(
                    lambda: session.mapper.sequence >= before + OUTAGE_EVENTS,
                    within=10,
                    what="events produced during the outage",
                )
                fresh_nats_server.start()
                await eventually(
                    lambda: outbox.size == 0 and not outbox.outage,
                    within=30,
                    what="outbox drained after the outage",
                )
            assert server.rooms[ROOM].participants[IDENTITY].info.state == models.ParticipantInfo.ACTIVE
        finally:
            await bridge.aclose()

    dropped = outbox.dropped
    assert dropped > 0
    collector = JetStreamCollector(fresh_nats_server.url, prefix)
    await collector.start()
    try:
        total = session.mapper.sequence
        await eventually(
            lambda: len(collector.received) >= total - dropped,
            within=20,
            what=f"{total - dropped} events in the stream",
        )
    finally:
        await collector.aclose()
    received = collector.received
    seqs = [int(r.attrs["sequence"]) for r in received]
    assert len(seqs) == len(set(seqs)) == total - dropped  # each once; exactly the dropped ones missing
    gaps = [
        events_pb2.Gap.FromString(r.attrs["data"])
        for r in received
        if r.attrs["type"] == "io.livekit.bridge.gap.v1"
    ]
    assert sum(g.dropped for g in gaps) == dropped
    assert all(g.bus == "nats" for g in gaps)
    missing = set(range(1, total + 1)) - set(seqs)
    assert min(missing) >= min(g.first_sequence for g in gaps)
    assert max(missing) <= max(g.last_sequence for g in gaps)
    outage_lines = [
        r for r in caplog.records if "nats" in r.getMessage().lower() and r.levelno >= logging.WARNING
    ]
    assert 1 <= len(outage_lines) <= 4  # said once at each end, not once per event
