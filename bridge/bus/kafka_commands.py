"""The Kafka command source: a consumer group on ``kafka.commands_topic`` with contiguous manual commits.

Offsets are committed only over a contiguous run of settled deliveries (:mod:`bridge.commands.offsets`),
every ``kafka.commit_interval_s`` and before a partition is given up, so a crash or a rebalance
redelivers exactly the commands whose result was not yet published.

Redelivery after a crash must not apply a command twice, and the process that crashed took its
in-memory window with it. So when this replica gets a partition that already has a committed offset,
it reads the ``command_result`` events published since the first redelivered record (minus
``RECOVERY_SKEW_MS``) from ``kafka.events_topic`` and hands them to ``on_recovered`` before applying
anything: a command whose result is on the bus is answered, not applied. The remaining window is the
time between a command going out on the signaling socket and its result reaching Kafka (milliseconds;
longer for a command awaiting LiveKit's answer); a crash inside it applies that command again.

Dead letters go to ``kafka.dead_letter_topic`` with the original key, value and headers plus
``ce_bridgeerrorcode`` and ``ce_bridgeerror``; a broker outage is retried until the source closes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from bridge._proto import events_pb2
from bridge.bus.base import unavailable
from bridge.bus.bindings import is_json_content_type
from bridge.bus.command_source import Handler
from bridge.bus.kafka import REJECTED as _REJECTED
from bridge.bus.kafka import client_options
from bridge.commands.offsets import PartitionOffsets
from bridge.commands.validate import RawCommand
from bridge.config import KafkaSettings
from bridge.errors import BusError
from bridge.events import types
from bridge.tasks import OwnedTasks

__all__ = ["KafkaCommandSource"]

log = logging.getLogger("bridge.bus.kafka_commands")

RESULT_TYPE: Final = types.BRIDGE["command_result"].type.encode()
RECOVERY_SKEW_MS: Final = 5_000  # producer clocks and result publishing may trail the command's timestamp
REVOKE_DEADLINE_S: Final = 5.0  # how long a revoked partition's in-flight commands may take to settle
SCAN_DEADLINE_S: Final = 30.0  # a recovery scan never holds command consumption longer than this
RETRY_INITIAL_S: Final = 0.2
RETRY_MAX_S: Final = 5.0
ERROR_TEXT_MAX: Final = 1000  # bytes of error message put in a dead letter's header

RecoveredHandler = Callable[[str, events_pb2.CommandResult], None]
# Told the partitions of the commands topic this replica holds, and the topic's partition count, after
# every assignment and revocation (room ownership in ``ownership.mode: kafka`` follows it).
AssignmentHandler = Callable[[frozenset[int], int], Awaitable[None]]


@dataclass(slots=True)
class KafkaDelivery:
    """One command record."""

    source: KafkaCommandSource
    tp: TopicPartition
    offset: int
    generation: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    received_at: float
    # A previous owner had started this record and no result was found: it may have been applied.
    interrupted: bool = False
    via: str = "kafka"
    redelivers: bool = True

    def parse(self) -> RawCommand:
        return RawCommand.from_kafka(self.key, self.value, self.headers)

    async def dead_letter(self, code: str, message: str) -> None:
        await self.source.dead_letter(self, code, message)

    async def reply(self, payload: bytes) -> None:
        return None  # Kafka has no reply address: the result event is the answer

    @property
    def stale(self) -> bool:
        return self.source.is_stale(self)

    def settle(self) -> None:
        self.source.settle(self)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, source: KafkaCommandSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._source.revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._source.assigned(list(assigned))


class KafkaCommandSource:
    """See the module docstring."""

    name = "kafka"

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        max_in_flight: int = 1000,
        on_recovered: RecoveredHandler | None = None,
        on_assignment: AssignmentHandler | None = None,
        client_id: str = "livekit-bus-bridge",
        session_timeout_s: float = 10.0,
    ) -> None:
        self._settings = settings
        self.topic = settings.commands_topic
        self._max_in_flight = max_in_flight
        self._on_recovered = on_recovered
        self._on_assignment = on_assignment
        self._client_id = client_id
        self._session_timeout_s = session_timeout_s
        self._consumer: Any = None  # aiokafka is untyped: Any stays at this boundary
        self._producer: Any = None
        self._starting_clients: tuple[Any, ...] = ()
        self._handler: Handler | None = None
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._needs_recovery: set[TopicPartition] = set()
        # Commands-topic partition -> offsets a previous owner had started (state topic markers).
        self._started_before: dict[int, set[int]] = {}
        self._state_topic = settings.commands_state_topic
        self._generation = 0  # bumped on every assignment: settles of an older one are ignored
        self._in_flight = 0
        self._room = asyncio.Event()  # set while in_flight < max_in_flight
        self._room.set()
        self._settled = asyncio.Event()
        self._closing = False
        self._tasks = OwnedTasks(log, "kafka command source")
        self.assignment: frozenset[TopicPartition] = frozenset()
        self.dead_lettered = 0
        self.recovered = 0
        self.commits = 0

    @property
    def ready(self) -> bool:
        return bool(self.assignment)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, handler: Handler) -> None:
        """Subscribe in the background (connecting retries until it works); returns at once."""
        self._handler = handler
        self._tasks.spawn(self._run(), name="kafka-commands")

    async def _connect(self) -> None:
        s = self._settings
        options = client_options(s)
        consumer = AIOKafkaConsumer(
            group_id=s.commands_group_id,
            client_id=self._client_id,
            enable_auto_commit=False,
            auto_offset_reset=s.commands_offset_reset,
            session_timeout_ms=int(self._session_timeout_s * 1000),
            # Frequent heartbeats: survivors hear of a rebalance (a replica died) sooner.
            heartbeat_interval_ms=int(self._session_timeout_s * 1000 / 10),
            max_poll_interval_ms=300_000,
            # Sticky: after a rebalance most partitions (and so rooms) stay where they were.
            partition_assignment_strategy=(StickyPartitionAssignor,),
            fetch_max_wait_ms=int(s.commands_fetch_max_wait_s * 1000),
            **options,
        )
        producer = AIOKafkaProducer(
            client_id=self._client_id,
            acks="all",
            enable_idempotence=s.enable_idempotence,
            **options,
        )
        consumer.subscribe([self.topic], listener=_Rebalance(self))
        # Held here while starting so aclose can stop them even if it cancels this start half-way.
        self._starting_clients = (consumer, producer)
        try:
            # Joining can wait out a crashed member's session before the group settles.
            async with asyncio.timeout(self._session_timeout_s + 10.0):
                await producer.start()
                await consumer.start()
        except BaseException:
            await _quietly(consumer.stop())
            await _quietly(producer.stop())
            raise
        finally:
            self._starting_clients = ()
        self._consumer, self._producer = consumer, producer

    async def _run(self) -> None:
        delay = RETRY_INITIAL_S
        while not self._closing:
            try:
                if self._consumer is None:
                    await self._connect()
                    log.info(
                        "kafka: consuming commands from %s as group %s",
                        self.topic,
                        self._settings.commands_group_id,
                    )
                    delay = RETRY_INITIAL_S
                    self._tasks.spawn(self._commit_loop(), name="kafka-commands-commit")
                await self._fetch()
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning(
                    "kafka: command consumer unavailable (%s); retrying in %.1fs", type(exc).__name__, delay
                )
                await asyncio.sleep(delay)  # backoff between reconnect attempts, not synchronisation
                delay = min(delay * 2, RETRY_MAX_S)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not silently end command consumption for this replica
                log.exception("kafka: command fetch loop failed; restarting it in %.1fs", delay)
                await asyncio.sleep(delay)  # backoff before the fetch loop starts again
                delay = min(delay * 2, RETRY_MAX_S)

    async def _fetch(self) -> None:
        consumer = self._consumer
        while not self._closing:
            await self._room.wait()
            free = max(1, self._max_in_flight - self._in_flight)
            batch = await consumer.getmany(timeout_ms=200, max_records=min(500, free))
            if not batch:
                continue
            now = time.monotonic()
            generation = self._generation
            recovering = [records[0].timestamp for tp, records in batch.items() if tp in self._needs_recovery]
            if recovering:
                # One scan for every partition of this batch that needs it, from the oldest record.
                self._needs_recovery.difference_update(batch)
                await self._recover(min(recovering) - RECOVERY_SKEW_MS)
            await self._mark_started(batch)
            for tp, records in batch.items():
                started_before = self._started_before.get(tp.partition, set())
                for record in records:
                    offsets = self._offsets.get(tp)
                    if offsets is None or generation != self._generation:
                        break  # a rebalance while this batch was in hand: the partition is fetched anew
                    if not offsets.delivered(record.offset):
                        continue  # already handed over in this assignment
                    self._in_flight += 1
                    if self._in_flight >= self._max_in_flight:
                        self._room.clear()
                    assert self._handler is not None
                    await self._handler(
                        KafkaDelivery(
                            self,
                            tp,
                            record.offset,
                            self._generation,
                            record.key,
                            record.value,
                            tuple(record.headers or ()),
                            now,
                            interrupted=record.offset in started_before,
                        )
                    )

    async def _mark_started(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Write a "started" marker per record to the state topic, and wait for the broker, before any of
        them is applied: after a crash, a started record without a published result is reported as
        interrupted instead of being applied a second time."""
        topic = self._state_topic
        if topic is None:
            return
        delay = RETRY_INITIAL_S
        while True:
            try:
                futures = []
                for tp, records in batch.items():
                    done = self._started_before.get(tp.partition, set())
                    for record in records:
                        if record.offset in done:
                            continue  # a redelivery: its marker exists
                        key = f"{tp.topic}:{tp.partition}:{record.offset}".encode()
                        command_id = dict(record.headers or ()).get("ce_id", b"")
                        futures.append(await self._producer.send(topic, value=command_id, key=key))
                if futures:
                    await asyncio.gather(*futures)
                return
            except (KafkaError, OSError, TimeoutError) as exc:
                if self._closing:
                    raise
                why = type(exc).__name__
                log.warning("kafka: cannot write started markers to %s (%s); retrying", topic, why)
                await asyncio.sleep(delay)  # backoff: applying without the marker would risk doubles
                delay = min(delay * 2, RETRY_MAX_S)

    async def aclose(self, deadline_s: float) -> None:
        """Stop fetching, let started deliveries settle (up to ``deadline_s``), commit, disconnect."""
        self._closing = True
        self._room.set()
        end = time.monotonic() + deadline_s
        while self._in_flight and time.monotonic() < end:
            self._settled.clear()
            try:
                await asyncio.wait_for(self._settled.wait(), end - time.monotonic())
            except TimeoutError:
                break
        if self._in_flight:
            log.warning("kafka: %d commands unsettled at shutdown; they will be redelivered", self._in_flight)
        await self._commit()
        starting, self._starting_clients = self._starting_clients, ()
        await self._tasks.aclose(1.0)
        for client in starting:
            await _quietly(client.stop())
        consumer, producer, self._consumer, self._producer = self._consumer, self._producer, None, None
        if consumer is not None:
            await _quietly(consumer.stop())
        if producer is not None:
            await _quietly(producer.stop())

    # ------------------------------------------------------------------ offsets

    def is_stale(self, delivery: KafkaDelivery) -> bool:
        """Revoked (or revoked and assigned again) since it was fetched: it will be fetched anew."""
        return delivery.generation != self._generation or delivery.tp not in self.assignment

    def settle(self, delivery: KafkaDelivery) -> None:
        self._in_flight -= 1
        self._settled.set()
        if self._in_flight < self._max_in_flight:
            self._room.set()
        offsets = self._offsets.get(delivery.tp)
        if offsets is not None and delivery.generation == self._generation:
            offsets.settled(delivery.offset)

    async def _commit_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._settings.commit_interval_s)  # the commit cadence itself
            await self._commit()

    async def _commit(self, only: Iterable[TopicPartition] | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        points = {}
        for tp in only if only is not None else list(self._offsets):
            offsets = self._offsets.get(tp)
            point = offsets.commit_point() if offsets is not None else None
            if point is not None:
                points[tp] = point
        if not points:
            return
        try:
            await consumer.commit({tp: OffsetAndMetadata(p, "") for tp, p in points.items()})
        except (KafkaError, OSError, TimeoutError) as exc:
            # Not fatal: the next tick commits the same or a later point; a rebalance redelivers.
            log.debug("kafka: commit failed (%s)", type(exc).__name__)
            return
        self.commits += 1
        for tp, point in points.items():
            offsets = self._offsets.get(tp)
            if offsets is not None:
                offsets.committed(point)

    async def assigned(self, assigned: list[TopicPartition]) -> None:
        self._generation += 1
        # Called from inside consumer.start() for the first assignment, before _consumer is set.
        consumer = self._consumer or (self._starting_clients[0] if self._starting_clients else None)
        try:
            for tp in assigned:
                self._offsets[tp] = PartitionOffsets()
                try:
                    committed = await consumer.committed(tp) if consumer is not None else None
                except KafkaError:
                    committed = 0  # unknown: scan for past results rather than risk applying twice
                if committed is not None:
                    self._needs_recovery.add(tp)
        finally:
            self.assignment = frozenset(assigned)
            log.info("kafka: command partitions assigned: %s", sorted(tp.partition for tp in assigned))
            await self._tell_assignment(consumer)

    async def _tell_assignment(self, consumer: Any = None) -> None:
        consumer = consumer or self._consumer
        if self._on_assignment is None or consumer is None:
            return
        partitions = consumer.partitions_for_topic(self.topic) or set()
        await self._on_assignment(frozenset(tp.partition for tp in self.assignment), len(partitions))

    async def revoked(self, revoked: list[TopicPartition]) -> None:
        # Give the revoked partitions' commands a moment to finish, so the next owner does not redo them.
        end = time.monotonic() + REVOKE_DEADLINE_S
        while any(self._offsets[tp].pending for tp in revoked if tp in self._offsets):
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            self._settled.clear()
            try:
                await asyncio.wait_for(self._settled.wait(), remaining)
            except TimeoutError:
                break
        await self._commit(only=revoked)
        for tp in revoked:
            self._offsets.pop(tp, None)
            self._needs_recovery.discard(tp)
        self.assignment = frozenset(tp for tp in self.assignment if tp not in revoked)
        await self._tell_assignment()

    # ------------------------------------------------------------------ recovery

    async def _recover(self, since_ms: int) -> None:
        """Before applying redelivered commands: learn which results were published (events topic) and
        which records a previous owner had started (state topic), both since ``since_ms``."""
        started = time.monotonic()
        results = await self._scan(self._settings.events_topic, since_ms, self._recovered_from)
        markers = 0
        if self._state_topic is not None:
            markers = await self._scan(self._state_topic, since_ms, self._started_from)
        self.recovered += results
        log.info(
            "kafka: recovered %d command results and %d started markers in %.2fs",
            results,
            markers,
            time.monotonic() - started,
        )

    async def _scan(self, topic: str, since_ms: int, take: Callable[[Any], int]) -> int:
        partitions = await self._producer.partitions_for(topic)
        return await scan_topic(
            client_options(self._settings), topic, partitions or (), since_ms, take, client_id=self._client_id
        )

    def _started_from(self, record: Any) -> int:
        topic, _, position = (record.key or b"").decode(errors="replace").rpartition(":")
        topic, _, partition = topic.rpartition(":")
        if topic != self.topic or not partition.isdigit() or not position.isdigit():
            return 0
        self._started_before.setdefault(int(partition), set()).add(int(position))
        return 1

    def _recovered_from(self, record: Any) -> int:
        if self._on_recovered is None:
            return 0
        value: bytes | None = record.value
        attrs = {name.lower(): raw for name, raw in record.headers or ()}
        if attrs.get("ce_type") != RESULT_TYPE:
            return 0
        command_id = attrs.get("ce_lkcommandid", b"").decode(errors="replace")
        if not command_id:
            return 0
        result = events_pb2.CommandResult()
        try:
            if is_json_content_type(attrs.get("content-type", b"").decode(errors="replace")):
                json_format.Parse(value or b"{}", result, ignore_unknown_fields=True)
            else:
                result.ParseFromString(value or b"")
        except (DecodeError, json_format.ParseError, ValueError):
            return 0
        assert self._on_recovered is not None
        self._on_recovered(command_id, result)
        return 1

    # ------------------------------------------------------------------ dead letters

    async def dead_letter(self, delivery: KafkaDelivery, code: str, message: str) -> None:
        headers = [
            *delivery.headers,
            ("ce_bridgeerrorcode", code.encode()),
            ("ce_bridgeerror", message.encode()[:ERROR_TEXT_MAX]),
        ]
        topic = self._settings.dead_letter_topic
        delay = RETRY_INITIAL_S
        while True:
            producer = self._producer
            try:
                if producer is None:
                    raise unavailable(self.name, "not connected")
                await producer.send_and_wait(topic, value=delivery.value, key=delivery.key, headers=headers)
            except _REJECTED as exc:
                if delivery.value is None:
                    raise unavailable(self.name, f"{topic} refused the dead letter", exc) from exc
                # Too large for the dead-letter topic: keep the key, headers and error, say what was cut.
                headers.append(("ce_bridgevaluedropped", str(len(delivery.value)).encode()))
                delivery = dataclasses.replace(delivery, value=None)
                continue
            except (KafkaError, OSError, TimeoutError, BusError) as exc:
                if self._closing:
                    raise unavailable(self.name, f"dead letter to {topic} not stored", exc) from exc
                log.warning("kafka: dead letter to %s failed (%s); retrying", topic, type(exc).__name__)
                await asyncio.sleep(delay)  # backoff while the broker is down
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self.dead_lettered += 1
            return


async def scan_topic(
    options: dict[str, Any],
    topic: str,
    partitions: Iterable[int],
    since_ms: int,
    take: Callable[[Any], int],
    *,
    client_id: str = "livekit-bus-bridge",
) -> int:
    """Feed every record of ``topic`` written since ``since_ms`` up to about now to ``take``; returns the
    sum of what ``take`` returned. Bounded by ``SCAN_DEADLINE_S``; a broker error ends it with a warning."""
    scanner = AIOKafkaConsumer(client_id=client_id, group_id=None, enable_auto_commit=False, **options)
    found = 0
    try:
        await scanner.start()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return 0
        scanner.assign(tps)
        starts = await scanner.offsets_for_times(dict.fromkeys(tps, max(0, since_ms)))
        ends = await scanner.end_offsets(tps)
        todo = {}
        for tp in tps:
            start = starts.get(tp)
            if start is None:
                continue  # nothing written since since_ms
            scanner.seek(tp, start.offset)
            todo[tp] = max(ends[tp], start.offset)
        # Read until caught up with the end offsets AND a fetch comes back empty: some Kafka-protocol
        # brokers (tansu) under-report the end offset after a multi-record batch, and stopping at it
        # would miss exactly the newest markers, the ones that matter.
        deadline = time.monotonic() + SCAN_DEADLINE_S
        at_end: set[TopicPartition] = set()
        while todo:
            if time.monotonic() > deadline:
                log.warning(
                    "kafka: reading %s took over %.0fs; going on without the rest", topic, SCAN_DEADLINE_S
                )
                break
            batch = await scanner.getmany(*todo, timeout_ms=300, max_records=5000)
            for records in batch.values():
                for record in records:
                    found += take(record)
            for tp in list(todo):
                if await scanner.position(tp) < todo[tp]:
                    continue
                # Past the end offset read at the start: one more fetch for what it under-reported
                # (tansu), then done, however busy the topic is.
                if tp in at_end or tp not in batch:
                    todo.pop(tp)
                at_end.add(tp)
    except (KafkaError, OSError, TimeoutError) as exc:
        # Without the scan a redelivered command may be applied again: say so once, then go on.
        why = type(exc).__name__
        log.warning("kafka: could not read %s (%s); redeliveries may repeat", topic, why)
    finally:
        await _quietly(scanner.stop())
    return found


async def _quietly(coro: Any) -> None:
    try:
        await asyncio.wait_for(coro, 10.0)
    except (KafkaError, OSError, TimeoutError) as exc:
        log.debug("kafka: error while stopping a client: %s", type(exc).__name__)
