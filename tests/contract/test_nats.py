"""The bus contract against a real nats-server: core structured, core binary, and JetStream."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cloudevents.core.formats.json import JSONFormat

from bridge.bus.bindings import CLOUDEVENTS_JSON, nats_subject
from bridge.bus.nats import NatsPublisher, stream_name_for
from bridge.config import NatsSettings
from bridge.errors import BusUnavailable, PublishFailed
from bridge.events.cloudevent import CloudEvent
from support.brokers import NatsServer, unique_name
from support.bus_consumers import JetStreamCollector, NatsCollector, Received, wait_for_count
from support.bus_contract import DELIVERY_DEADLINE_S, BusContract, Rig
from support.events import mixed_events
from support.waiting import eventually

_ENCODED = re.compile(r"(?:[\x21\x23\x24\x26-\x7e]|%[0-9A-F]{2})*")


def _check_structured(prefix: str) -> object:
    def check(received: Received, event: CloudEvent) -> None:
        assert received.subject == nats_subject(prefix, event)
        assert received.headers.get("Content-Type") == CLOUDEVENTS_JSON
        doc = json.loads(received.payload)
        assert {"id", "source", "specversion", "type"} <= set(doc)
        sdk = JSONFormat().read(None, received.payload)
        assert sdk.get_id() == event.id
        assert sdk.get_type() == event.type

    return check


def _check_binary(prefix: str) -> object:
    def check(received: Received, event: CloudEvent) -> None:
        assert received.subject == nats_subject(prefix, event)
        ce = {k: v for k, v in received.headers.items() if k.startswith("ce-")}
        assert {k[3:] for k in ce} == set(event.attributes())
        assert all(_ENCODED.fullmatch(v) for v in ce.values())
        assert received.payload == event.data

    return check


async def _rig(server: NatsServer, *, binary: bool = False, jetstream: bool = False) -> tuple[Rig, str]:
    prefix = unique_name("ct")
    settings = NatsSettings(
        servers=(server.url,), subject_prefix=prefix, binary_mode=binary, jetstream=jetstream
    )
    publisher = NatsPublisher(settings, publish_timeout_s=5)
    await publisher.start()
    collector = JetStreamCollector(server.url, prefix) if jetstream else NatsCollector(server.url, prefix)
    await collector.start()
    check = _check_binary(prefix) if binary else _check_structured(prefix)
    return Rig(publisher, collector, check, {"prefix": prefix}), prefix  # type: ignore[arg-type]


class TestNatsStructured(BusContract):
    @pytest.fixture
    async def rig(self, nats_server: NatsServer) -> AsyncIterator[Rig]:
        rig, _ = await _rig(nats_server)
        yield rig
        await rig.collector.aclose()
        await rig.publisher.aclose()


class TestNatsBinary(BusContract):
    @pytest.fixture
    async def rig(self, nats_server: NatsServer) -> AsyncIterator[Rig]:
        rig, _ = await _rig(nats_server, binary=True)
        yield rig
        await rig.collector.aclose()
        await rig.publisher.aclose()


class TestNatsJetStream(BusContract):
    @pytest.fixture
    async def rig(self, nats_server: NatsServer) -> AsyncIterator[Rig]:
        rig, _ = await _rig(nats_server, jetstream=True)
        yield rig
        await rig.collector.aclose()
        await rig.publisher.aclose()

    async def test_a_republished_batch_is_deduplicated(self, rig: Rig) -> None:
        publisher = rig.publisher
        assert isinstance(publisher, NatsPublisher)
        events = mixed_events(10)
        await publisher.publish_batch(events)
        await publisher.publish_batch(events)  # as after a timeout whose acks were lost
        assert publisher.duplicates == len(events)
        assert publisher.stream == stream_name_for(str(rig.extras["prefix"]))
        received = await wait_for_count(rig.collector, len(events), DELIVERY_DEADLINE_S)
        assert sorted(r.id for r in received) == sorted(e.id for e in events)


async def test_a_batch_written_as_the_server_dies_is_never_confirmed(fresh_nats_server: NatsServer) -> None:
    """The PONG that confirms a batch must come from the server: a client whose reader died with the
    connection would otherwise confirm it at once (nats-py's ``flush()`` does, with no read loop)."""
    publisher = NatsPublisher(
        NatsSettings(servers=(fresh_nats_server.url,), subject_prefix=unique_name("dies")),
        publish_timeout_s=1,
        reconnect_time_wait_s=0.2,
    )
    await publisher.start()
    try:
        fresh_nats_server.stop()
        with pytest.raises(BusUnavailable):
            await _written_then_awaited_after_the_reader_died(publisher)
    finally:
        await publisher.aclose()


async def _written_then_awaited_after_the_reader_died(publisher: NatsPublisher) -> None:
    confirmation = await publisher.submit_batch(mixed_events(2))  # the client has not noticed yet
    await eventually(lambda: not publisher.connected, within=5, what="the client to see the server die")
    await confirmation


async def test_a_pong_that_comes_after_the_timeout_leaves_the_connection_working(
    fresh_nats_server: NatsServer,
) -> None:
    """A batch that timed out is retried; its PONG, when it finally comes, must not break the client's
    reader (resolving a cancelled future would), or every later batch would time out too."""
    publisher = NatsPublisher(
        NatsSettings(servers=(fresh_nats_server.url,), subject_prefix=unique_name("late")),
        publish_timeout_s=0.5,
    )
    await publisher.start()
    pid = fresh_nats_server.pid
    assert pid is not None
    events = mixed_events(2)
    try:
        os.kill(pid, signal.SIGSTOP)  # the server answers nothing until SIGCONT
        try:
            await eventually(lambda: _stopped(pid), within=5, what="nats-server to stop")
            with pytest.raises(BusUnavailable):
                await publisher.publish_batch(events[:2])
        finally:
            os.kill(pid, signal.SIGCONT)
        await publisher.publish_batch(events[2:])  # confirmed: the late PONG was taken in stride
        await publisher.publish_batch(events[:2])
    finally:
        await publisher.aclose()


def _stopped(pid: int) -> bool:
    # /proc/<pid>/stat: "pid (comm) state ..."; T is stopped by a signal.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] == "T"


@pytest.mark.parametrize("jetstream", [False, True], ids=["core", "jetstream"])
async def test_an_event_whose_headers_push_it_past_max_payload_is_refused_not_sent(
    nats_server: NatsServer, jetstream: bool
) -> None:
    """The server counts headers and payload together against ``max_payload`` and drops the connection of
    a client that sends more (every batch in flight with it); a binary event's data alone may fit."""
    rig, _ = await _rig(nats_server, binary=True, jetstream=jetstream)
    publisher = rig.publisher
    assert isinstance(publisher, NatsPublisher)
    try:
        limit = publisher._nc.max_payload  # type: ignore[union-attr]
        event = dataclasses.replace(mixed_events(1)[0], data=b"\x00" * (limit - 100))
        with pytest.raises(PublishFailed, match="max_payload") as refused:
            await publisher.publish_batch([event])
        assert not refused.value.retriable
        assert publisher.connected
        events = mixed_events(3)
        await publisher.publish_batch(events)
        received = await wait_for_count(rig.collector, len(events), DELIVERY_DEADLINE_S)
        assert sorted(r.id for r in received) == sorted(e.id for e in events)
    finally:
        await rig.collector.aclose()
        await publisher.aclose()
