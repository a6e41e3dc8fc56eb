"""The bus contract against the Kafka-protocol broker (tansu; idempotence off, it rejects InitProducerId)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat

from bridge.bus.kafka import KafkaPublisher, partition_for
from bridge.config import KafkaSettings
from bridge.events.cloudevent import CloudEvent
from support.brokers import ExternalKafka, KafkaBroker, unique_name
from support.bus_consumers import KafkaCollector, Received, create_topic
from support.bus_contract import BusContract, Rig

PARTITIONS = 4


def check_kafka(received: Received, event: CloudEvent) -> None:
    assert received.key == event.ctx.room.encode(), "record key = room name"
    assert received.partition == partition_for(received.key, range(PARTITIONS)), "murmur2, as Java picks"
    headers = received.headers["list"]
    names = [name for name, _ in headers]
    assert len(names) == len(set(names))
    assert dict(headers)["content-type"] == event.datacontenttype.encode()
    message = ce_kafka.KafkaMessage(headers=dict(headers), key=received.key, value=received.payload)
    parsed = ce_kafka.from_binary(message, JSONFormat())
    assert parsed.get_id() == event.id
    assert parsed.get_extension("lkroom") == event.ctx.room
    assert parsed.get_extension("partitionkey") == event.ctx.room


def kafka_settings(bootstrap: str, topic: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=(bootstrap,), events_topic=topic, enable_idempotence=False)


class TestKafka(BusContract):
    @pytest.fixture
    async def rig(self, kafka_broker: KafkaBroker | ExternalKafka) -> AsyncIterator[Rig]:
        topic = unique_name("ct-events")
        await create_topic(kafka_broker.bootstrap, topic, PARTITIONS)
        publisher = KafkaPublisher(kafka_settings(kafka_broker.bootstrap, topic), publish_timeout_s=10)
        await publisher.start()
        collector = KafkaCollector(kafka_broker.bootstrap, topic)
        await collector.start()
        yield Rig(publisher, collector, check_kafka)
        await collector.aclose()
        await publisher.aclose()
