"""The lean limit end to end: a relay process in the bridge's place (issue 4's "parse + prebuilt headers +
batched produce, nothing else"), so the bridge can be compared with it on the same machine and load.

Run as ``python tests/benchmarks/events_lean.py --url ws://127.0.0.1:P --rooms N --api-key K
--api-secret S --identity I --nats URL --prefix P --kafka HOST:PORT --topic T``. It opens one signaling
websocket per room ``load-0`` … ``load-<N-1>`` and, for every binary frame, parses the SignalResponse (its
variant names the event type), slices the variant's bytes out of the frame unchanged, and queues one Kafka
record (prebuilt headers, key = room) and one structured NATS message (prebuilt JSON envelope, base64
data; the event ``time`` is read once per batch). Every ``--batch-interval-s`` (5 ms) what is queued goes
out: Kafka as one record batch per partition (``send_batch``, acks=all, not awaited: aiokafka queues
them), NATS through nats-py's buffered ``publish`` and one ``flush``. A ping every 5 s keeps the sessions
alive.

With ``--latency`` (the end-to-end relay) it also times every event from the moment its frame was read to
the broker's confirmation (the Kafka batch's ack; the NATS flush's PONG), in the bridge's own
``LatencyHistogram``, and logs at exit the line the bridge logs for each bus ("bus nats: ... added latency
(put -> confirmed) p50 .. p99 .. max .."), so the two are read by one parser and compared like for like.

What it does not do, and the bridge does: the session state machine, room state and snapshots, JSON
mapping, per-room ordering guarantees across reconnects, bounded outboxes with retries and gap events,
redaction, the WebRTC side (no PeerConnection: run the simulator with ``--signal-only``).

Prints ``READY`` once every room has its join response; on SIGTERM prints ``DONE <frames>`` and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import signal
import sys
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import jwt
import nats
import websockets
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from livekit.protocol import rtc

from bridge.bus.outbox import LatencyHistogram
from bridge.events.mapping import oneof_payload

PING_INTERVAL_S = 5.0
CLOSE_TIMEOUT_S = 5.0


def _token(args: argparse.Namespace, room: str) -> str:
    now = int(time.time())
    claims = {
        "iss": args.api_key,
        "sub": args.identity,
        "nbf": now,
        "exp": now + 3600,
        "video": {"roomJoin": True, "room": room, "hidden": True},
    }
    return jwt.encode(claims, args.api_secret, algorithm="HS256")


class Relay:
    """The lean pipeline: :meth:`relay` one frame (queued), :meth:`flush` what is queued. Also used in
    process by ``test_events_throughput``'s LEAN reference, fed recorded frames."""

    def __init__(
        self,
        producer: Any,
        nc: Any,
        partitions: list[int],
        *,
        topic: str,
        prefix: str,
        rooms: int,
        latency: bool = False,
    ) -> None:
        self.topic = topic
        self.prefix = prefix
        self.producer = producer
        self.nc = nc
        self.session = "LS_" + uuid.uuid4().hex[:16]
        partitioner = DefaultPartitioner()
        self.frames = 0
        self.seq = 0
        self.joined = 0
        self.batches: dict[int, Any] = {}
        # Read -> confirmed per bus (``latency``): the read time of every event queued, per partition batch.
        self.latency = {"nats": LatencyHistogram(), "kafka": LatencyHistogram()} if latency else None
        self.stamps: dict[int, list[float]] = {}
        self.nats_stamps: list[float] = []
        self.published = {"nats": [0, 0, 0], "kafka": [0, 0, 0]}  # events, batches, events lost
        self.acks: list[asyncio.Future[Any]] = []
        self.room_key: dict[str, bytes] = {}
        self.partition: dict[str, int] = {}
        self.static: dict[str, list[tuple[str, bytes]]] = {}
        self.json_prefix: dict[str, str] = {}
        for i in range(rooms):
            room = f"load-{i}"
            key = room.encode()
            self.room_key[room] = key
            self.partition[room] = partitioner(key, partitions, partitions)
            self.static[room] = [
                ("ce_specversion", b"1.0"),
                ("ce_source", f"livekit://127.0.0.1/rooms/{room}".encode()),
                ("ce_lkroom", key),
                ("ce_lksession", self.session.encode()),
                ("ce_partitionkey", key),
                ("content-type", b"application/x-protobuf"),
            ]
            self.json_prefix[room] = (
                f'{{"specversion":"1.0","source":"livekit://127.0.0.1/rooms/{room}","lkroom":"{room}",'
                f'"lksession":"{self.session}","partitionkey":"{room}","datacontenttype":"application/x-protobuf"'
            )
        self.types: dict[str, tuple[bytes, str]] = {}
        self.nats_headers = {"Content-Type": "application/cloudevents+json"}
        self.stamp, self.stamp_b = "", b""
        self.tick()

    def tick(self) -> None:
        """The ``time`` of the events queued from now on: one clock read per batch, not per event."""
        now = time.time()
        self.stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        self.stamp_b = self.stamp.encode()

    async def room(self, url: str, token: str, room: str) -> None:
        query = urlencode({"protocol": "17", "sdk": "python", "auto_subscribe": "0", "access_token": token})
        async with websockets.connect(f"{url}/rtc?{query}", max_size=None) as ws:
            pinger = asyncio.create_task(self._ping(ws))
            try:
                async for frame in ws:
                    if isinstance(frame, bytes):
                        await self.relay(room, frame)
            finally:
                pinger.cancel()

    async def _ping(self, ws: Any) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            ping = rtc.SignalRequest(ping_req=rtc.Ping(timestamp=int(time.time() * 1000)))
            await ws.send(ping.SerializeToString())

    async def relay(self, room: str, frame: bytes) -> None:
        kind = rtc.SignalResponse.FromString(frame).WhichOneof("message")
        if kind is None:
            return
        if kind == "join":
            self.joined += 1
        payload = oneof_payload(frame)
        if payload is None:  # a SignalResponse is one length-delimited field: never here
            raise RuntimeError(f"lean relay: a {kind} frame is not one length-delimited field")
        t = self.types.get(kind)
        if t is None:
            t = self.types[kind] = (f"io.livekit.signal.{kind}.v1".encode(), f"io.livekit.signal.{kind}.v1")
        self.seq += 1
        self.frames += 1
        seq = f"{self.seq:020d}"
        p = self.partition[room]
        batch = self.batches.get(p)
        if batch is None:
            batch = self.batches[p] = self.producer.create_batch()
            self.stamps[p] = []
        if self.latency is not None:
            now = time.monotonic()
            self.stamps[p].append(now)
            self.nats_stamps.append(now)
        appended = batch.append(
            key=self.room_key[room],
            value=payload,
            timestamp=None,
            headers=[
                *self.static[room],
                ("ce_id", f"{self.session}-{seq}".encode()),
                ("ce_type", t[0]),
                ("ce_time", self.stamp_b),
                ("ce_sequence", seq.encode()),
            ],
        )
        if appended is None:  # 512 KiB in 5 ms: never at these rates; a lost record would skew the numbers
            raise RuntimeError("lean relay: a record batch filled up")
        body = b"".join(
            (
                (
                    f'{self.json_prefix[room]},"id":"{self.session}-{seq}","sequence":"{seq}",'
                    f'"type":"{t[1]}","time":"{self.stamp}","data_base64":"'
                ).encode(),
                base64.b64encode(payload),
                b'"}',
            )
        )
        await self.nc.publish(f"{self.prefix}.events.{room}.{kind}", body, headers=self.nats_headers)

    async def flush(self, *, close: bool = True) -> list[asyncio.Future[Any]]:
        """Send what is queued: one record batch per partition (closed: sent at once; else aiokafka may
        linger on it), and a NATS flush; returns the acks."""
        acks = await self.flush_kafka(close=close)
        await self.flush_nats()
        return acks

    async def flush_kafka(self, *, close: bool = True) -> list[asyncio.Future[Any]]:
        batches, self.batches = self.batches, {}
        stamps, self.stamps = self.stamps, {}
        acks = []
        for p, batch in batches.items():
            if close:
                batch.close()
            ack = await self.producer.send_batch(batch, self.topic, partition=p)
            if self.latency is not None:
                ack.add_done_callback(lambda f, s=stamps[p]: self._confirmed("kafka", f, s))
            acks.append(ack)
        self.tick()
        return acks

    async def flush_nats(self) -> None:
        """nats-py's flush: a PING, and its PONG. The messages published since the last one are counted
        confirmed by it (nats-py writes the PING past any it has not written yet: microseconds early)."""
        stamps, self.nats_stamps = self.nats_stamps, []
        try:
            await self.nc.flush()
        except BaseException:
            self.published["nats"][2] += len(stamps)
            raise
        if self.latency is not None and stamps:
            self.latency["nats"].record_since(time.monotonic(), stamps)
            self.published["nats"][0] += len(stamps)
            self.published["nats"][1] += 1

    def _confirmed(self, bus: str, ack: asyncio.Future[Any], stamps: list[float]) -> None:
        if self.latency is None:
            return
        if ack.cancelled() or ack.exception() is not None:
            self.published[bus][2] += len(stamps)
            return
        self.latency[bus].record_since(time.monotonic(), stamps)
        self.published[bus][0] += len(stamps)
        self.published[bus][1] += 1

    def summary(self) -> str:
        """The bridge's shutdown line per bus (bridge.app), for the read -> confirmed times."""
        lines = []
        for bus, h in (self.latency or {}).items():
            published, batches, lost = self.published[bus]
            p50, p99, top = h.percentile(50) * 1e3, h.percentile(99) * 1e3, h.max_s * 1e3
            lines.append(
                f"bus {bus}: {published} events published in {batches} batches, {lost} dropped; added "
                f"latency (put -> confirmed) p50 {p50:.3f} ms p99 {p99:.3f} ms max {top:.3f} ms "
                f"over {h.count} events"
            )
        return "\n".join(lines)

    async def flush_every(self, interval_s: float) -> None:
        """Kafka and NATS each every ``interval_s``, apart (as the bridge's outboxes): a NATS flush never
        waits behind a Kafka batch that aiokafka holds until the one before it is acknowledged."""
        await asyncio.gather(self._kafka_every(interval_s), self._nats_every(interval_s))

    async def _kafka_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.acks.extend(await self.flush_kafka())
            pending = []
            for ack in self.acks:
                if ack.done():
                    ack.result()  # a failed produce ends the relay, loudly
                else:
                    pending.append(ack)
            self.acks = pending

    async def _nats_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.flush_nats()


async def _main(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    producer: Any = AIOKafkaProducer(
        bootstrap_servers=args.kafka,
        acks="all",
        enable_idempotence=False,
        linger_ms=0,
        max_batch_size=512 * 1024,
        max_request_size=1024 * 1024,
    )
    await producer.start()
    nc = await nats.connect(args.nats)
    partitions = sorted(await producer.partitions_for(args.topic))
    relay = Relay(
        producer, nc, partitions, topic=args.topic, prefix=args.prefix, rooms=args.rooms, latency=args.latency
    )
    rooms = [f"load-{i}" for i in range(args.rooms)]
    tasks = [asyncio.create_task(relay.room(args.url, _token(args, r), r)) for r in rooms]
    flusher = asyncio.create_task(relay.flush_every(args.batch_interval_s))
    while relay.joined < len(rooms):
        if any(t.done() for t in tasks):
            for t in tasks:
                if t.done():
                    t.result()  # raises why a room's socket ended
        await asyncio.sleep(0.05)  # poll: the join count has no event of its own
    print("READY", flush=True)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([stopping, flusher], return_when=asyncio.FIRST_COMPLETED)
    failed = flusher.done() and not flusher.cancelled() and flusher.exception() is not None
    if failed:  # a produce or a flush failed: the numbers would be wrong, so say so and end non-zero
        print(f"lean relay: publishing failed: {flusher.exception()!r}", file=sys.stderr, flush=True)
    for task in (*tasks, flusher, stopping):
        task.cancel()
    await asyncio.gather(*tasks, flusher, stopping, return_exceptions=True)
    if args.latency:  # first: every measured batch was confirmed long ago
        print(relay.summary(), file=sys.stderr, flush=True)
    for name, closing in (("nats", nc.close()), ("kafka", producer.stop())):
        try:
            await asyncio.wait_for(closing, CLOSE_TIMEOUT_S)
        except TimeoutError:  # a harness hiccup, not a measurement: say so and go on
            print(f"lean relay: closing the {name} client took over {CLOSE_TIMEOUT_S:g}s", file=sys.stderr)
    print(f"DONE {relay.frames}", flush=True)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("url", "api-key", "api-secret", "identity", "nats", "prefix", "kafka", "topic"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--rooms", type=int, required=True)
    parser.add_argument("--batch-interval-s", type=float, default=0.005)
    parser.add_argument("--latency", action="store_true", help="time read -> confirmed per bus (see above)")
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
