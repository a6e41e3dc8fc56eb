"""The Kafka publisher: binary-mode CloudEvents on ``kafka.events_topic``, keyed by room, in batches.

``publish_batch`` assigns each event to a partition with Kafka's default partitioner (murmur2 of the key,
the room name, exactly what the Java client picks), so every room stays on one partition and its order is
kept. It fills one aiokafka ``create_batch()`` builder per partition (starting another when one is full),
hands them over with ``send_batch`` (closed, so they go out at once: ``linger_s``, the wait for more
records, is spent in the outbox before the batch is made, see :mod:`bridge.app`) and awaits every
acknowledgement; that costs about a quarter of the CPU
of per-record ``send()`` (research/bus-anchors.md §7.2). aiokafka keeps at most one request in flight per
broker and mutes a partition while it is being sent, so consecutive batches of one partition stay ordered.

Errors: records the broker refuses as invalid (too large, bad topic) raise a non-retriable PublishFailed;
everything else (no connection, timeouts, leader changes) raises BusUnavailable. The whole batch runs under
``publish_timeout_s``. With idempotence on, aiokafka retries a timed-out batch on its own while the outbox
retries it too, so delivery across an outage is at-least-once (consumers deduplicate on ``id``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from bridge.bus.base import confirmation, nothing_to_confirm, rejected, translated, unavailable
from bridge.bus.bindings import kafka_key, kafka_record
from bridge.config import KafkaSettings
from bridge.errors import BusError
from bridge.events.cloudevent import CloudEvent

__all__ = ["KafkaPublisher", "client_options", "partition_for"]

log = logging.getLogger("bridge.bus.kafka")

# The broker refused the records themselves: sending them again cannot succeed.
REJECTED: Final = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    CorruptRecordException,
    UnsupportedForMessageFormatError,
)
_PARTITION_CACHE_MAX: Final = 65_536
_partitioner: Final = DefaultPartitioner()


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """Connection and security options every Kafka client of the bridge uses (secrets revealed here only)."""
    s = settings
    ssl_context = None
    if s.security_protocol in ("SSL", "SASL_SSL"):
        ssl_context = create_ssl_context(
            cafile=str(s.ssl_cafile) if s.ssl_cafile else None,
            certfile=str(s.ssl_certfile) if s.ssl_certfile else None,
            keyfile=str(s.ssl_keyfile) if s.ssl_keyfile else None,
        )
    return {
        "bootstrap_servers": ",".join(s.bootstrap_servers),
        "security_protocol": s.security_protocol,
        "ssl_context": ssl_context,
        "sasl_mechanism": s.sasl_mechanism or "PLAIN",
        "sasl_plain_username": s.sasl_username,
        # Revealed only here, inside the client; never in a message or a log line.
        "sasl_plain_password": s.sasl_password.reveal() if s.sasl_password is not None else None,
    }


def partition_for(key: bytes, partitions: Sequence[int]) -> int:
    """The partition Kafka's default partitioner (murmur2, as in the Java client) picks for ``key``."""
    chosen: int = _partitioner(key, list(partitions), list(partitions))
    return chosen


class KafkaPublisher:
    """Publishes CloudEvents to ``settings.events_topic`` with aiokafka."""

    name = "kafka"

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        publish_timeout_s: float = 10.0,
        max_batch_bytes: int = 512 * 1024,
        max_request_bytes: int = 1024 * 1024,
        client_id: str = "livekit-bus-bridge",
    ) -> None:
        self._settings = settings
        self.topic = settings.events_topic
        self._publish_timeout_s = publish_timeout_s
        self._max_batch_bytes = max_batch_bytes
        # Off: aiokafka sends one request per broker at a time anyway, and batches queued behind it made
        # put -> ack slower at 5,000 events/s (p50 11-16 ms against 6-7 with one batch in flight).
        self.pipelining = False
        self._max_request_bytes = max_request_bytes
        self._client_id = client_id
        self._producer: Any = None  # AIOKafkaProducer is untyped: Any stays at this boundary
        self._starting = asyncio.Lock()
        self._closed = False
        # Room key -> partition, for the partition count it was computed with (murmur2 is pure Python).
        self._partitions: tuple[int, ...] = ()
        self._partition_of: dict[bytes, int] = {}

    @property
    def connected(self) -> bool:
        p = self._producer
        if p is None:
            return False
        try:
            return bool(p.client.cluster.brokers()) and not p._closed
        except AttributeError:
            return True

    # -- lifecycle -----------------------------------------------------------------------------------

    def _build(self) -> Any:
        s = self._settings
        return AIOKafkaProducer(
            client_id=self._client_id,
            acks=s.acks,
            enable_idempotence=s.enable_idempotence,
            compression_type=None if s.compression_type == "none" else s.compression_type,
            # ``linger_s`` is applied by the outbox, which gathers the batch (see bridge.app); a batch
            # handed over here is complete and goes out at once.
            linger_ms=0,
            max_batch_size=self._max_batch_bytes,
            max_request_size=self._max_request_bytes,
            request_timeout_ms=int(self._publish_timeout_s * 1000),
            **client_options(s),
        )

    async def start(self) -> None:
        """Connect to the bootstrap servers; BusUnavailable (and nothing left running) if that fails."""
        async with self._starting:
            if self._closed:
                raise unavailable(self.name, "publisher is closed")
            if self._producer is not None:
                return
            producer = self._build()
            try:
                async with asyncio.timeout(self._publish_timeout_s):
                    await producer.start()
            except (KafkaError, OSError, TimeoutError) as exc:
                await self._stop(producer)
                raise unavailable(self.name, "cannot connect to the bootstrap servers", exc) from exc
            except BaseException:
                await self._stop(producer)
                raise
            self._producer = producer

    async def _stop(self, producer: Any) -> None:
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                await producer.stop()
        except (KafkaError, OSError, TimeoutError) as exc:
            log.debug("kafka: error while stopping the producer: %s", type(exc).__name__)

    async def aclose(self) -> None:
        self._closed = True
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop(producer)

    # -- publishing ----------------------------------------------------------------------------------

    async def publish_batch(self, events: Sequence[CloudEvent]) -> None:
        await (await self.submit_batch(events))

    async def submit_batch(self, events: Sequence[CloudEvent]) -> asyncio.Future[None]:
        """Hand the batch to aiokafka's queue; the future is done when every record is acknowledged."""
        if not events:
            return nothing_to_confirm()
        if self._producer is None:
            await self.start()
        producer = self._producer
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._publish_timeout_s  # for both steps
        with translated(self._translate):
            async with asyncio.timeout_at(deadline):
                acks = await self._send(producer, events)
        return confirmation(self.name, acks, max(0.0, deadline - loop.time()), self._translate)

    def _translate(self, exc: BaseException) -> BusError | None:
        if isinstance(exc, REJECTED):
            return rejected(self.name, f"broker refused a record for topic {self.topic}", exc)
        if isinstance(exc, TopicAuthorizationFailedError):
            # Not the record's fault: keep the events until the ACL is fixed.
            return unavailable(self.name, f"not authorised to write to {self.topic}", exc)
        if isinstance(exc, (KafkaError, OSError, TimeoutError, asyncio.CancelledError)):
            return unavailable(self.name, "publish not acknowledged", exc)
        return None

    async def _send(self, producer: Any, events: Sequence[CloudEvent]) -> list[asyncio.Future[Any]]:
        partitions = await self._partitions_of(producer)
        by_partition: dict[int, list[CloudEvent]] = {}
        for event in events:
            p = self._partition(kafka_key(event), partitions)
            group = by_partition.get(p)
            if group is None:
                by_partition[p] = [event]
            else:
                group.append(event)
        futures: list[asyncio.Future[Any]] = []
        for partition, group in by_partition.items():
            batch = producer.create_batch()
            for event in group:
                key, value, headers = kafka_record(event)
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    if batch.record_count() == 0:
                        raise self._too_large(key, value, headers)
                    futures.append(await self._hand_over(producer, batch, partition))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        raise self._too_large(key, value, headers)
            if batch.record_count():
                futures.append(await self._hand_over(producer, batch, partition))
        return futures

    async def _hand_over(self, producer: Any, batch: Any, partition: int) -> asyncio.Future[Any]:
        batch.close()  # complete: the outbox gathered it
        return await producer.send_batch(batch, self.topic, partition=partition)  # type: ignore[no-any-return]

    def _too_large(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> BusError:
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        return rejected(self.name, f"an event of {size} bytes does not fit a batch ({self._max_batch_bytes})")

    async def _partitions_of(self, producer: Any) -> tuple[int, ...]:
        found = await producer.partitions_for(self.topic)
        if not found:
            raise unavailable(self.name, f"no partitions known for topic {self.topic}")
        partitions = tuple(sorted(found))
        if partitions != self._partitions:
            self._partitions = partitions
            self._partition_of.clear()
        return partitions

    def _partition(self, key: bytes, partitions: tuple[int, ...]) -> int:
        p = self._partition_of.get(key)
        if p is None:
            if len(self._partition_of) >= _PARTITION_CACHE_MAX:
                self._partition_of.clear()
            p = self._partition_of[key] = partition_for(key, partitions)
        return p
