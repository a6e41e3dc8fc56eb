"""The recovery scan a replica runs before applying redelivered commands: it sees the newest records even
where the broker under-reports the end offset (tansu, after a multi-record batch), and it finishes while
the topic keeps being written to."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaProducer

from bridge.bus.kafka_commands import scan_topic
from support.brokers import KafkaBroker, unique_name
from support.bus_consumers import create_topic


async def test_scan_sees_the_last_records_of_a_batch_and_ends_on_a_busy_topic(
    kafka_broker: KafkaBroker,
) -> None:
    topic = unique_name("scan")
    await create_topic(kafka_broker.bootstrap, topic, partitions=2)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_broker.bootstrap, enable_idempotence=False, linger_ms=5
    )
    await producer.start()
    stop = asyncio.Event()
    writer: asyncio.Task[None] | None = None

    async def keep_writing() -> None:
        while not stop.is_set():
            await producer.send_and_wait(topic, b"noise", key=b"n")
            await asyncio.sleep(0.01)  # a steady trickle, like a busy events topic

    try:
        since_ms = int(time.time() * 1000) - 1000
        # One multi-record batch whose last records are the ones recovery needs most.
        futures = [await producer.send(topic, f"marker-{i}".encode(), key=b"m") for i in range(5)]
        await asyncio.gather(*futures)
        writer = asyncio.create_task(keep_writing())
        seen: list[bytes] = []

        def take(record: Any) -> int:
            seen.append(record.value)
            return 1

        began = time.monotonic()
        found = await scan_topic({"bootstrap_servers": kafka_broker.bootstrap}, topic, [0, 1], since_ms, take)
        took = time.monotonic() - began
    finally:
        stop.set()
        if writer is not None:
            await asyncio.gather(writer, return_exceptions=True)
        await producer.stop()
    assert [v for v in seen if v.startswith(b"marker-")] == [f"marker-{i}".encode() for i in range(5)]
    assert found == len(seen)
    assert took < 10, f"the scan took {took:.1f}s on a topic that keeps being written to"
