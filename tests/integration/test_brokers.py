"""Smoke tests for the broker fixtures: the real nats-server and Kafka-protocol broker do what we need.

They also pin the tansu behaviour later work depends on (auto-created topics, group rebalancing, batches,
compression, headers, memory storage lost on restart), so a change in the broker shows up here first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import nats
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.codec import has_lz4, has_snappy, has_zstd
from aiokafka.errors import KafkaError
from nats.aio.client import Client as NatsClient
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from support.brokers import ExternalKafka, KafkaBroker, NatsServer, unique_name
from support.skipping import allowed_skip
from support.waiting import eventually

KafkaHandle = KafkaBroker | ExternalKafka
Headers = Sequence[tuple[str, bytes]]

# Producer settings every test uses: tansu answers InitProducerId with UnknownError, so no idempotence.
PRODUCER_CONFIG: dict[str, Any] = {"enable_idempotence": False, "acks": "all", "request_timeout_ms": 10_000}


# -- helpers ---------------------------------------------------------------------------------------


@asynccontextmanager
async def nats_client(url: str, **options: Any) -> AsyncIterator[NatsClient]:
    client = await nats.connect(url, connect_timeout=5, **options)
    try:
        yield client
    finally:
        await client.close()


@asynccontextmanager
async def kafka_producer(bootstrap: str, **options: Any) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **{**PRODUCER_CONFIG, **options})
    try:
        await producer.start()
        yield producer
    finally:
        await producer.stop()


@asynccontextmanager
async def kafka_consumer(bootstrap: str, *topics: str, **options: Any) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", **options)
    try:
        await consumer.start()
        yield consumer
    finally:
        await consumer.stop()


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
        )
        assert [error[1] for error in response.topic_errors] == [0], response
    finally:
        await admin.close()


async def consume(consumer: AIOKafkaConsumer, count: int, *, within: float = 20.0) -> list[ConsumerRecord]:
    """Fetch until ``count`` records have arrived (fail after ``within`` seconds)."""
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + within
    while len(records) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"got {len(records)} of {count} records within {within}s: {records!r}"
        batches = await consumer.getmany(timeout_ms=int(min(remaining, 0.5) * 1000))
        for batch in batches.values():
            records.extend(batch)
    return records


def headers_of(record: ConsumerRecord) -> list[tuple[str, bytes]]:
    return list(record.headers)


# -- NATS ------------------------------------------------------------------------------------------


@pytest.mark.nats
async def test_nats_publish_subscribe_round_trip_with_headers(nats_server: NatsServer) -> None:
    subject = f"smoke.{unique_name('room')}"
    async with nats_client(nats_server.url) as client:
        subscription = await client.subscribe(subject)
        await client.publish(subject, b"hello", headers={"ce-id": "1", "content-type": "text/plain"})
        message = await subscription.next_msg(timeout=5)
    assert message.data == b"hello"
    assert message.headers == {"ce-id": "1", "content-type": "text/plain"}


@pytest.mark.nats
async def test_jetstream_stream_publish_is_acked_and_stored(nats_server: NatsServer) -> None:
    stream = unique_name("EVENTS").replace("-", "_")
    async with nats_client(nats_server.url) as client:
        js = client.jetstream(timeout=5)
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        first = await js.publish(f"{stream}.room.a", b"one", headers={"Nats-Msg-Id": "m1"})
        duplicate = await js.publish(f"{stream}.room.a", b"one", headers={"Nats-Msg-Id": "m1"})
        second = await js.publish(f"{stream}.room.b", b"two")
        stored = await js.get_msg(stream, seq=2)
    assert (first.stream, first.seq) == (stream, 1)
    assert duplicate.duplicate
    assert duplicate.seq == 1
    assert second.seq == 2
    assert (stored.subject, stored.data) == (f"{stream}.room.b", b"two")


@pytest.mark.nats
async def test_jetstream_kv_put_get_and_ttls(nats_server: NatsServer) -> None:
    """KV works, and both TTL kinds expire: per-key ``create(msg_ttl=)`` (leases) and bucket ``ttl``."""
    bucket = unique_name("leases")
    async with nats_client(nats_server.url) as client:
        js = client.jetstream(timeout=5)
        kv = await js.create_key_value(bucket=bucket, history=1)
        revision = await kv.put("room.a", b"owner-1")
        entry = await kv.get("room.a")
        assert (entry.value, entry.revision) == (b"owner-1", revision)

        # A lease: create() is exclusive while the key lives, and a per-key TTL ends it (nats-server >= 2.11).
        await kv.create("lease.room.b", b"owner-1", msg_ttl=1.0)
        with pytest.raises(KeyWrongLastSequenceError):
            await kv.create("lease.room.b", b"owner-2")

        async def lease_gone() -> bool:
            try:
                await kv.get("lease.room.b")
            except KeyNotFoundError:
                return True
            return False

        await eventually(lease_gone, within=10, what="the per-key TTL to expire the lease")
        await kv.create("lease.room.b", b"owner-2", msg_ttl=1.0)
        assert (await kv.get("lease.room.b")).value == b"owner-2"

        # Bucket-wide TTL (stream max_age); expiry happens on the server's sweep, so allow a few seconds.
        short = await js.create_key_value(bucket=unique_name("short"), ttl=1.0, limit_marker_ttl=1.0)
        await short.put("k", b"v")
        assert (await short.status()).ttl == 1.0

        async def bucket_entry_gone() -> bool:
            try:
                await short.get("k")
            except KeyNotFoundError:
                return True
            return False

        await eventually(bucket_entry_gone, within=10, what="the bucket TTL to expire the entry")


@pytest.mark.nats
async def test_nats_server_stop_and_restart_on_same_port(fresh_nats_server: NatsServer) -> None:
    server = fresh_nats_server
    port, first_pid = server.port, server.pid
    disconnected, reconnected = asyncio.Event(), asyncio.Event()

    async def on_disconnect() -> None:
        disconnected.set()

    async def on_reconnect() -> None:
        reconnected.set()

    stream = unique_name("OUTAGE").replace("-", "_")
    async with nats_client(
        server.url,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    ) as client:
        js = client.jetstream(timeout=5)
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        assert (await js.publish(f"{stream}.x", b"before")).seq == 1

        assert server.stop() == 0
        assert not server.running
        await asyncio.wait_for(disconnected.wait(), timeout=10)

        server.start()
        assert (server.port, server.running) == (port, True)
        assert server.pid != first_pid
        await asyncio.wait_for(reconnected.wait(), timeout=15)

        # The JetStream store directory is kept, so the stream survived the restart.
        ack = await js.publish(f"{stream}.x", b"after")
        assert (ack.stream, ack.seq) == (stream, 2)
        assert (await js.get_msg(stream, seq=1)).data == b"before"


# -- Kafka protocol --------------------------------------------------------------------------------


@pytest.mark.kafka
async def test_kafka_produce_and_consume_in_group_with_key_and_headers(kafka_broker: KafkaHandle) -> None:
    topic = unique_name("livekit.events")
    await create_topic(kafka_broker.bootstrap, topic, partitions=3)
    headers: Headers = [("ce_id", b"s-00000000000000000001"), ("content-type", b"application/x-protobuf")]
    async with kafka_producer(kafka_broker.bootstrap) as producer:
        sent = await producer.send_and_wait(topic, b"\x0a\x03abc", key=b"room-a", headers=list(headers))
    async with kafka_consumer(
        kafka_broker.bootstrap, topic, group_id=unique_name("group"), enable_auto_commit=False
    ) as consumer:
        [record] = await consume(consumer, 1)
        await consumer.commit()
        committed = await consumer.committed(TopicPartition(topic, sent.partition))
    assert (record.key, record.value, record.partition, record.offset) == (
        b"room-a",
        b"\x0a\x03abc",
        sent.partition,
        sent.offset,
    )
    assert headers_of(record) == list(headers)
    assert committed == sent.offset + 1


@pytest.mark.kafka
async def test_kafka_send_batch_round_trip(kafka_broker: KafkaHandle) -> None:
    topic = unique_name("batch")
    await create_topic(kafka_broker.bootstrap, topic, partitions=2)
    async with kafka_producer(kafka_broker.bootstrap) as producer:
        batch = producer.create_batch()
        for i in range(200):
            assert batch.append(
                key=b"room", value=b"event-%03d" % i, timestamp=None, headers=[("n", b"%d" % i)]
            )
        metadata = await (await producer.send_batch(batch, topic, partition=1))
    assert (metadata.partition, metadata.offset) == (1, 0)
    async with kafka_consumer(kafka_broker.bootstrap, topic) as consumer:
        records = await consume(consumer, 200)
    assert [r.value for r in records] == [b"event-%03d" % i for i in range(200)]
    assert [r.offset for r in records] == list(range(200))
    assert {r.partition for r in records} == {1}
    assert headers_of(records[-1]) == [("n", b"199")]


_CODEC_AVAILABLE = {"gzip": True, "snappy": has_snappy(), "lz4": has_lz4(), "zstd": has_zstd()}


@pytest.mark.kafka
@pytest.mark.parametrize("codec", sorted(_CODEC_AVAILABLE))
async def test_kafka_compression_round_trip(kafka_broker: KafkaHandle, codec: str) -> None:
    if not _CODEC_AVAILABLE[codec]:
        allowed_skip(f"aiokafka has no {codec} codec here: it needs cramjam, which is not a dependency")
    topic = unique_name(f"compressed.{codec}")
    await create_topic(kafka_broker.bootstrap, topic, partitions=1)
    values = [b"%d:" % i + b"x" * 500 for i in range(50)]
    async with kafka_producer(kafka_broker.bootstrap, compression_type=codec, linger_ms=20) as producer:
        futures = [await producer.send(topic, value, key=b"room", headers=[("z", b"1")]) for value in values]
        await asyncio.wait_for(asyncio.gather(*futures), timeout=15)
    async with kafka_consumer(kafka_broker.bootstrap, topic) as consumer:
        records = await consume(consumer, len(values))
    assert [r.value for r in records] == values
    assert all(headers_of(r) == [("z", b"1")] for r in records)


@pytest.mark.kafka
async def test_tansu_auto_creates_topics_with_four_partitions(kafka_broker: KafkaHandle) -> None:
    """tansu creates an unknown topic on a Metadata request, with 4 partitions. Do not rely on it in the
    bridge (real Kafka is usually run with auto-creation off): create topics explicitly."""
    if kafka_broker.external:
        allowed_skip("pins tansu's own topic auto-creation")
    topic = unique_name("auto")
    async with kafka_producer(kafka_broker.bootstrap) as producer:
        metadata = await producer.send_and_wait(topic, b"v", key=b"k")
        partitions = producer.client.cluster.partitions_for_topic(topic)
    assert metadata.offset == 0
    assert partitions == {0, 1, 2, 3}


@pytest.mark.kafka
@pytest.mark.slow
async def test_kafka_consumer_group_assigns_and_rebalances(kafka_broker: KafkaHandle) -> None:
    """Three members split six partitions; when one leaves, the other two take over all six."""
    topic, group = unique_name("commands"), unique_name("bridge")
    await create_topic(kafka_broker.bootstrap, topic, partitions=6)
    members = [
        AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_broker.bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=300,
        )
        for _ in range(3)
    ]
    stop = asyncio.Event()

    async def poll(member: AIOKafkaConsumer) -> None:
        while not stop.is_set():
            await member.getmany(timeout_ms=100)

    def assignment_of(active: list[AIOKafkaConsumer]) -> list[set[int]]:
        return [{tp.partition for tp in member.assignment()} for member in active]

    def split_between(active: list[AIOKafkaConsumer]) -> bool:
        parts = assignment_of(active)
        return all(parts) and sum(map(len, parts)) == 6 and set().union(*parts) == set(range(6))

    pollers: list[asyncio.Task[None]] = []
    try:
        await asyncio.gather(*(member.start() for member in members))
        pollers = [asyncio.create_task(poll(member)) for member in members]
        await eventually(lambda: split_between(members), within=30, what="6 partitions split over 3 members")
        assert sorted(len(p) for p in assignment_of(members)) == [2, 2, 2]

        leaving = members.pop()
        pollers.pop().cancel()
        await leaving.stop()
        await eventually(
            lambda: split_between(members), within=30, what="2 members to take over 6 partitions"
        )
        assert sorted(len(p) for p in assignment_of(members)) == [3, 3]
    finally:
        stop.set()
        await asyncio.gather(*pollers, return_exceptions=True)
        for member in members:
            await member.stop()


@pytest.mark.kafka
@pytest.mark.parametrize("outage", ["stop", "kill"])
async def test_kafka_broker_restart_on_same_port(fresh_kafka_broker: KafkaBroker, outage: str) -> None:
    """A producer outlives a broker outage. tansu keeps everything in memory: after a restart the topic is
    gone and must be created again (a produce to the vanished topic is acked but never readable)."""
    broker = fresh_kafka_broker
    port, topic = broker.port, unique_name("outage")
    await create_topic(broker.bootstrap, topic, partitions=1)
    async with kafka_producer(broker.bootstrap, retry_backoff_ms=50) as producer:
        assert (await producer.send_and_wait(topic, b"before", partition=0)).offset == 0

        # stop() is SIGTERM: tansu drains open connections for ~5 s before it exits. kill() is a crash.
        exit_code = broker.stop() if outage == "stop" else broker.kill()
        assert exit_code == (0 if outage == "stop" else -9)
        assert not broker.running

        broker.start()
        assert (broker.port, broker.running) == (port, True)
        await create_topic(broker.bootstrap, topic, partitions=1)
        after = await asyncio.wait_for(producer.send_and_wait(topic, b"after", partition=0), timeout=20)
    assert after.offset == 0  # memory storage: a new, empty log
    async with kafka_consumer(broker.bootstrap, topic) as consumer:
        [record] = await consume(consumer, 1)
    assert record.value == b"after"


@pytest.mark.kafka
async def test_idempotent_producer(kafka_broker: KafkaHandle, request: pytest.FixtureRequest) -> None:
    """Real Kafka supports the idempotent producer; tansu answers InitProducerId with UnknownError. If
    tansu learns it, the strict xfail becomes a failure: then drop ``enable_idempotence=False`` here."""
    if not kafka_broker.external:
        request.applymarker(
            pytest.mark.xfail(raises=KafkaError, strict=True, reason="tansu rejects InitProducerId")
        )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, enable_idempotence=True)
    try:
        await asyncio.wait_for(producer.start(), timeout=15)
        await asyncio.wait_for(producer.send_and_wait(unique_name("idem"), b"v"), timeout=15)
    finally:
        await producer.stop()
