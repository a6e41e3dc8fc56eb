"""Real consumers for the bus contract tests: what arrived on the other side, decoded independently.

Each collector subscribes BEFORE anything is published, records every message in arrival order as a
:class:`Received` (raw wire parts plus the decoded attributes), and lets a test wait for a count with a
deadline. The Kafka collector reads every partition from the beginning without a consumer group (a group
join costs ~3 s on tansu and is not what is under test).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import nats
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from nats.aio.msg import Msg

from bridge.bus.bindings import event_from_kafka, event_from_nats
from bridge.events.cloudevent import CloudEvent
from support.waiting import eventually


@dataclass
class Received:
    """One message as the consumer saw it."""

    attrs: dict[str, Any]  # decoded attributes (+ "data" bytes, + "data_json" for structured JSON)
    key: bytes | None = None  # Kafka
    partition: int | None = None  # Kafka
    subject: str | None = None  # NATS
    headers: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""

    @property
    def id(self) -> str:
        return str(self.attrs["id"])


class Collector(Protocol):
    received: list[Received]

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


async def wait_for_count(collector: Collector, count: int, within: float) -> list[Received]:
    await eventually(
        lambda: len(collector.received) >= count,
        within=within,
        what=f"{count} messages (got {len(collector.received)})",
    )
    return collector.received


class MemoryCollector:
    """Reads an InMemoryBus subscription; the 'wire' is the CloudEvent itself."""

    def __init__(self, bus: Any) -> None:
        self._bus = bus
        self.received: list[Received] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        sub = self._bus.subscribe()

        async def run() -> None:
            async for event in sub:
                assert isinstance(event, CloudEvent)
                self.received.append(Received({**event.attributes(), "data": event.data}))

        self._task = asyncio.create_task(run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def create_topic(bootstrap: str, topic: str, partitions: int = 4) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


class KafkaCollector:
    """Every partition of ``topic`` from the beginning, no group."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.received: list[Received] = []
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        partitions = await consumer._client._wait_on_metadata(self.topic)
        consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        self._consumer = consumer

        async def run() -> None:
            async for record in consumer:
                headers = list(record.headers)
                self.received.append(
                    Received(
                        event_from_kafka(record.key, record.value, headers),
                        key=record.key,
                        partition=record.partition,
                        headers={"list": headers},
                        payload=record.value,
                    )
                )

        self._task = asyncio.create_task(run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


class NatsCollector:
    """A core subscription on ``<prefix>.events.>``."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.received: list[Received] = []
        self._nc: Any = None

    def _record(self, msg: Msg) -> None:
        headers = dict(msg.headers or {})
        self.received.append(
            Received(
                event_from_nats(msg.subject, msg.data, headers),
                subject=msg.subject,
                headers=headers,
                payload=msg.data,
            )
        )

    async def start(self) -> None:
        self._nc = await nats.connect(self.url)

        async def on_msg(msg: Msg) -> None:
            self._record(msg)

        await self._nc.subscribe(f"{self.prefix}.events.>", cb=on_msg)
        await self._nc.flush()

    async def aclose(self) -> None:
        if self._nc is not None:
            await self._nc.close()


class JetStreamCollector(NatsCollector):
    """An ordered JetStream consumer over the stream: what the stream STORED (deduplicated), in order.

    Unlike a core subscription it also sees what was stored while this client was disconnected.
    """

    async def start(self) -> None:
        self._nc = await nats.connect(self.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
        js = self._nc.jetstream()

        async def on_msg(msg: Msg) -> None:
            self._record(msg)

        await js.subscribe(f"{self.prefix}.events.>", cb=on_msg, ordered_consumer=True)
