"""The bus contract against a real nats-server: core structured, core binary, and JetStream."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import pytest
from cloudevents.core.formats.json import JSONFormat

from bridge.bus.bindings import CLOUDEVENTS_JSON, nats_subject
from bridge.bus.nats import NatsPublisher, stream_name_for
from bridge.config import NatsSettings
from bridge.events.cloudevent import CloudEvent
from support.brokers import NatsServer, unique_name
from support.bus_consumers import JetStreamCollector, NatsCollector, Received, wait_for_count
from support.bus_contract import DELIVERY_DEADLINE_S, BusContract, Rig
from support.events import mixed_events

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
