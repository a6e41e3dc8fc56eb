"""Consumer process for ``test_events_throughput``: reads NATS and Kafka and records receive times.

Run as ``python tests/benchmarks/events_consumer.py --nats URL --prefix P --kafka HOST:PORT --topic T
--out DIR``. Prints ``READY`` once subscribed to ``<P>.events.>`` and assigned to every partition of T;
then each ``count`` line on stdin is answered with ``COUNT <nats received> <kafka received>``.
On SIGTERM it writes, per bus (``nats``, ``kafka``), into DIR:

- ``<bus>.recv``: the ``time.time_ns()`` of every message received (int64, native order);
- ``<bus>.lat``: ``(send_ns, recv_ns, kind)`` triples (int64) for stamped events (kind 0: the
  participant ``update`` carrying ``{"n": .., "t": <ns>}`` metadata; kind 1: a user data packet);
- ``seq.json``: per bus and ``lksession``, ``[count, min sequence, max sequence]`` (gaps = drops),

then ``DONE`` on stdout, and exits 0. Work per message is kept small (a regex on the raw bytes, no full
CloudEvent decode) so the consumer takes as little CPU from the bridge as possible.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import nats
from aiokafka import AIOKafkaConsumer, TopicPartition
from nats.aio.msg import Msg

STAMP = re.compile(rb'\{"n": \d+, "t": (\d+)\}')
NATS_SEQ = re.compile(rb'"lksession":"([^"]+)".*?"sequence":"(\d+)"')
NATS_DATA = re.compile(rb'"data_base64":"([^"]*)"')
KINDS = {"update": 0, "user": 1}
KAFKA_KINDS = {b"io.livekit.signal.update.v1": 0, b"io.livekit.data.user.v1": 1}


class Recorder:
    def __init__(self) -> None:
        self.recv = {"nats": array.array("q"), "kafka": array.array("q")}
        self.lat = {"nats": array.array("q"), "kafka": array.array("q")}
        self.seq: dict[str, dict[str, list[int]]] = {"nats": {}, "kafka": {}}

    def sequence(self, bus: str, session: str, seq: int) -> None:
        entry = self.seq[bus].get(session)
        if entry is None:
            self.seq[bus][session] = [1, seq, seq]
        else:
            entry[0] += 1
            entry[1] = min(entry[1], seq)
            entry[2] = max(entry[2], seq)

    def stamp(self, bus: str, data: bytes, kind: int, recv: int) -> None:
        m = STAMP.search(data)
        if m is not None:
            self.lat[bus].extend((int(m.group(1)), recv, kind))

    def dump(self, out: Path) -> None:
        for bus in ("nats", "kafka"):
            with (out / f"{bus}.recv").open("wb") as f:
                self.recv[bus].tofile(f)
            with (out / f"{bus}.lat").open("wb") as f:
                self.lat[bus].tofile(f)
        (out / "seq.json").write_text(json.dumps(self.seq))


async def _main(args: argparse.Namespace) -> int:
    rec = Recorder()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    nc = await nats.connect(args.nats)

    async def on_nats(msg: Msg) -> None:
        now = time.time_ns()
        rec.recv["nats"].append(now)
        payload = msg.data
        m = NATS_SEQ.search(payload)
        if m is not None:
            rec.sequence("nats", m.group(1).decode(), int(m.group(2)))
        kind = KINDS.get(msg.subject.rsplit(".", 1)[-1])
        if kind is not None:
            d = NATS_DATA.search(payload)
            if d is not None:
                rec.stamp("nats", base64.b64decode(d.group(1)), kind, now)

    await nc.subscribe(
        f"{args.prefix}.events.>", cb=on_nats, pending_msgs_limit=2_000_000, pending_bytes_limit=1 << 30
    )
    await nc.flush()

    consumer: Any = AIOKafkaConsumer(
        bootstrap_servers=args.kafka,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=5,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    partitions = await consumer._client._wait_on_metadata(args.topic)
    consumer.assign([TopicPartition(args.topic, p) for p in sorted(partitions)])
    await consumer.seek_to_beginning()

    async def read_kafka() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=10_000)
            now = time.time_ns()
            recv = rec.recv["kafka"]
            for records in batches.values():
                for record in records:
                    recv.append(now)
                    session = seq = kind = None
                    for name, value in record.headers:
                        if name == "ce_lksession":
                            session = value
                        elif name == "ce_sequence":
                            seq = value
                        elif name == "ce_type":
                            kind = KAFKA_KINDS.get(value)
                    if session is not None and seq is not None:
                        rec.sequence("kafka", session.decode(), int(seq))
                    if kind is not None:
                        rec.stamp("kafka", record.value, kind, now)

    async def answer() -> None:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return
            if line.strip() == "count":
                print(f"COUNT {len(rec.recv['nats'])} {len(rec.recv['kafka'])}", flush=True)

    reader = asyncio.create_task(read_kafka())
    answering = asyncio.create_task(answer())
    print("READY", flush=True)
    await stop.wait()
    reader.cancel()
    answering.cancel()
    await asyncio.gather(reader, answering, return_exceptions=True)
    await consumer.stop()
    await nc.close()
    rec.dump(Path(args.out))
    print("DONE", flush=True)
    os._exit(0)  # the stdin reader thread may still be blocked in readline


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nats", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--kafka", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", required=True)
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
