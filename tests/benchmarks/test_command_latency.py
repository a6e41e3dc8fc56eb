"""Command latency, publish on the bus -> SignalRequest on the wire, at 1,000 commands/s (issue 5).

Run by ``make bench`` only. Per bus (parametrized: ``kafka``, ``nats``), everything real, on loopback and
each in its own process:

- the broker: tansu (Kafka protocol; fresh commands/events/dead-letter topics and consumer group,
  ``commands_offset_reset: earliest``, ``enable_idempotence: false``) or nats-server;
- the simulator (``commands_sim.py``): a SimServer whose ``update_metadata`` dispatch records, for each
  stamped request, ``(i, sent, received)`` on CLOCK_MONOTONIC (one clock for all processes of the host);
- the BRIDGE (``python -m bridge run --config FILE``, only the bus under test, ``logging.level: INFO``,
  ``livekit.can_update_own_metadata``), joined to ``ROOMS`` static rooms;
- the producer, in this process: ``update_metadata`` commands with metadata
  ``t=<time.monotonic_ns()>;i=<n>``, round robin over the rooms, paced by the clock in 1 ms ticks. Kafka:
  binary-mode records keyed by room from one aiokafka producer (``linger_ms`` ``LINGER_MS``, acks=1,
  ``send`` without waiting per record; the futures are gathered at the end of a phase). NATS: core
  publish of structured JSON on ``<prefix>.commands.<room>`` (no reply subject).

Phases: a warm-up at ``WARMUP_RATE`` for ``WARMUP_S`` s (lanes, fetch sessions and caches start), a
pause, then ``RATE`` commands/s for ``WINDOW_S`` s. Reported for the window: latency p50/p90/p99/max
(the simulator's receive minus the producer's stamp: producer client, broker, the bridge's consume,
validate, lane and signaling send, loopback TCP and the simulator's websocket read), the achieved
rate, commands seen by the simulator, bridge CPU % of one core and RSS, the CPU of the simulator and
the broker, and the bridge's own shutdown line (``received -> on the wire`` p50/p99 over its whole run,
the part of the latency that is the bridge's). On NATS, ``RR_COUNT`` sequential request/reply round
trips (publish -> ``command_result`` reply, which waits for the simulator's ``request_response``) are
measured after the window too.

Asserted: every command reached the simulator exactly once and the bridge applied all of them, none
rejected, failed or dead-lettered; it exited 0. The goal (p99 < 20 ms) is reported, not asserted. The
numbers are printed and written as JSON to a temporary directory.

Measured on the 2-core dev machine: NATS p50 ~1 ms, p99 ~8-9 ms (the bridge's received -> on the wire
p99 ~1.1 ms; the rest is nats-server, the clients and the scheduling of four busy processes on two
cores). Kafka on tansu p50 ~50-65 ms, p99 ~300 ms: mostly the consumer's fetch. The bridge's consumer
keeps aiokafka's default ``fetch_max_wait_ms`` (500 ms) and tansu answers a fetch late within that wait
even when records are there (a bare aiokafka producer -> consumer on the same tansu at 1,000/s: p99
~255 ms with 500 ms, ~31 ms with 50 ms, ~10 ms with 10 ms). What follows the fetch is the bridge's part,
received -> on the wire p50 ~2-11 ms, p99 ~56 ms: ``received`` is stamped once per fetched batch and a
batch is taken in (validated, queued on the lanes) before the lanes send, so it grows with the batch.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from livekit.protocol import rtc

from bridge.demo_services import free_port
from support.bench import (
    API_KEY,
    API_SECRET,
    IDENTITY,
    LAUNCHER,
    active_rooms,
    ask,
    bridge_ready,
    cpu_seconds,
    pct,
    quit_and_stop,
    report,
    rss_mb,
    spawn,
    stop,
    tail,
)
from support.brokers import ExternalKafka, KafkaBroker, NatsServer, start_kafka_broker, start_nats_server
from support.bus_consumers import create_topic
from support.commands import kafka_command, nats_command

HERE: Final = Path(__file__).resolve().parent
ROOMS: Final = 100
PARTITIONS: Final = 6
RATE, WINDOW_S = 1000.0, 15.0
WARMUP_RATE, WARMUP_S = 200.0, 3.0
PAUSE_S: Final = 1.0  # deliberate: the warm-up drains before the window
TICK_S: Final = 0.001
LINGER_MS: Final = 1
RR_COUNT: Final = 200
GOAL_P99_MS: Final = 20.0
JOIN_DEADLINE_S: Final = 90.0
DRAIN_DEADLINE_S: Final = 30.0

# The bridge's shutdown line (bridge.app.Bridge.aclose).
SHUTDOWN: Final = re.compile(
    r"commands: (\d+) received, (\d+) applied, (\d+) rejected, (\d+) failed, (\d+) dead-lettered, "
    r"(\d+) duplicates; received -> on the wire p50 ([\d.]+) ms p99 ([\d.]+) ms"
)
SHUTDOWN_FIELDS: Final = ("received", "applied", "rejected", "failed", "dead_lettered", "duplicates")

Send = Callable[[str, str], Awaitable[None]]  # (room, metadata)


def _stamp(n: int) -> str:
    return f"t={time.monotonic_ns()};i={n}"


async def _paced(send: Send, rooms: list[str], n0: int, rate: float, seconds: float) -> tuple[int, float]:
    """Send ``rate * seconds`` commands numbered from ``n0``, round robin over ``rooms``, as the clock
    makes them due (a late tick catches up); returns (sent, seconds taken)."""
    total = int(rate * seconds)
    start = time.monotonic()
    done = 0
    while done < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while done < due:
            n = n0 + done
            await send(rooms[n % len(rooms)], _stamp(n))
            done += 1
        await asyncio.sleep(TICK_S)
    return done, time.monotonic() - start


class KafkaProducer:
    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._producer: Any = None
        self._pending: list[asyncio.Future[Any]] = []

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, enable_idempotence=False, acks=1, linger_ms=LINGER_MS
        )
        await self._producer.start()

    async def send(self, room: str, metadata: str) -> None:
        key, value, headers = kafka_command(
            room, "update_metadata", rtc.UpdateParticipantMetadata(metadata=metadata)
        )
        self._pending.append(await self._producer.send(self.topic, value=value, key=key, headers=headers))

    async def settle(self) -> None:
        pending, self._pending = self._pending, []
        await asyncio.gather(*pending)

    async def aclose(self) -> None:
        if self._producer is not None:
            await self._producer.stop()


class NatsProducer:
    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self._nc: Any = None

    async def start(self) -> None:
        import nats

        self._nc = await nats.connect(self.url)

    async def send(self, room: str, metadata: str) -> None:
        subject, payload = nats_command(
            room, "update_metadata", rtc.UpdateParticipantMetadata(metadata=metadata), prefix=self.prefix
        )
        await self._nc.publish(subject, payload)

    async def settle(self) -> None:
        await self._nc.flush()

    async def round_trips(self, rooms: list[str], n0: int, count: int) -> list[float]:
        """``count`` sequential requests: publish -> ``command_result`` reply, ms, sorted."""
        import base64

        from bridge._proto import events_pb2

        out: list[float] = []
        for k in range(count):
            n = n0 + k
            subject, payload = nats_command(
                rooms[n % len(rooms)],
                "update_metadata",
                rtc.UpdateParticipantMetadata(metadata=_stamp(n)),
                prefix=self.prefix,
            )
            t0 = time.perf_counter()
            reply = await self._nc.request(subject, payload, timeout=10)
            out.append((time.perf_counter() - t0) * 1000)
            result = events_pb2.CommandResult.FromString(
                base64.b64decode(json.loads(reply.data)["data_base64"])
            )
            assert result.status == events_pb2.CommandResult.STATUS_APPLIED, result
        return sorted(out)

    async def aclose(self) -> None:
        if self._nc is not None:
            await self._nc.close()


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(pct(values, 0.50), 2),
        "p90": round(pct(values, 0.90), 2),
        "p99": round(pct(values, 0.99), 2),
        "max": round(values[-1], 2) if values else float("nan"),
    }


def _bridge_config(
    bus: str, port: int, address: str, names: dict[str, str], rooms: list[str]
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "livekit": {
            "url": f"ws://127.0.0.1:{port}",
            "api_key": API_KEY,
            "api_secret": API_SECRET,
            "identity": IDENTITY,
            "can_update_own_metadata": True,
        },
        "rooms": {"static": rooms},
        "http": {"listen": "127.0.0.1:0"},
        "logging": {"level": "INFO"},
    }
    if bus == "kafka":
        config["kafka"] = {
            "bootstrap_servers": [address],
            "events_topic": names["events"],
            "commands_topic": names["commands"],
            "dead_letter_topic": names["dlq"],
            "commands_state_topic": names["state"],
            "commands_group_id": names["group"],
            "commands_offset_reset": "earliest",
            "enable_idempotence": False,
        }
    else:
        config["nats"] = {"servers": [address], "subject_prefix": names["prefix"]}
    return config


def _ready(port: int, rooms: set[str], log: Path) -> bool:
    """The bridge's /readyz says ready (commands subscribed) and the simulator has it ACTIVE in every room."""
    with contextlib.suppress(OSError, urllib.error.URLError):
        return bridge_ready(log) and active_rooms(port, rooms) == rooms
    return False


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="measures through Linux /proc")
@pytest.mark.parametrize("bus", ["kafka", "nats"])
def test_command_latency(bus: str, tmp_path: Path, pytestconfig: pytest.Config) -> None:
    began = time.monotonic()
    logs = {name: tmp_path / f"{name}.log" for name in ("sim", "bridge")}
    broker: KafkaBroker | ExternalKafka | NatsServer | None = None
    sim: subprocess.Popen[bytes] | None = None
    bridge: subprocess.Popen[bytes] | None = None
    tag = uuid.uuid4().hex[:8]
    names = {
        "events": f"bench-cmd-events-{tag}",
        "commands": f"bench-cmd-commands-{tag}",
        "dlq": f"bench-cmd-dlq-{tag}",
        "state": f"bench-cmd-state-{tag}",
        "group": f"bench-cmd-{tag}",
        "prefix": f"bench{tag}",
    }
    rooms = [f"cmd-{i}" for i in range(ROOMS)]
    try:
        producer: KafkaProducer | NatsProducer
        if bus == "kafka":
            kafka = broker = start_kafka_broker()
            topics = (("events", PARTITIONS), ("commands", PARTITIONS), ("dlq", 1), ("state", PARTITIONS))
            for topic, partitions in topics:
                asyncio.run(create_topic(kafka.bootstrap, names[topic], partitions=partitions))
            address = kafka.bootstrap
            producer = KafkaProducer(kafka.bootstrap, names["commands"])
        else:
            nats_server = broker = start_nats_server()
            address = nats_server.url
            producer = NatsProducer(nats_server.url, names["prefix"])
        port = free_port()
        sim = spawn(
            [
                str(HERE / "commands_sim.py"),
                "--port",
                str(port),
                "--api-key",
                API_KEY,
                "--api-secret",
                API_SECRET,
            ],
            logs["sim"],
            piped=True,
        )
        ask(sim, None, "READY", 30)
        config = tmp_path / "bridge.yaml"
        config.write_text(yaml.safe_dump(_bridge_config(bus, port, address, names, rooms)))
        bridge = spawn(["-c", LAUNCHER, "run", "--config", str(config)], logs["bridge"], piped=False)
        deadline = time.monotonic() + JOIN_DEADLINE_S
        while not _ready(port, set(rooms), logs["bridge"]):
            assert bridge.poll() is None, f"bridge exited:\n{tail(logs['bridge'])}"
            assert time.monotonic() < deadline, f"bridge not ready:\n{tail(logs['bridge'])}"
            time.sleep(0.5)  # poll interval
        joined_s = time.monotonic() - began

        pids = {"bridge": bridge.pid, "simulator": sim.pid}
        if broker.pid is not None:  # an external Kafka (BRIDGE_TEST_KAFKA_BOOTSTRAP) has no pid here
            pids["broker"] = broker.pid
        window: dict[str, float] = {}
        round_trips: list[float] = []

        async def drive() -> int:
            assert sim is not None
            await producer.start()
            try:
                warm, _ = await _paced(producer.send, rooms, 0, WARMUP_RATE, WARMUP_S)
                await producer.settle()
                await asyncio.sleep(PAUSE_S)
                cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
                sent, seconds = await _paced(producer.send, rooms, warm, RATE, WINDOW_S)
                await producer.settle()
                cpu1 = {k: cpu_seconds(pid) for k, pid in pids.items()}
                window.update(
                    first=warm,
                    sent=sent,
                    seconds=seconds,
                    rss_mb=rss_mb(pids["bridge"]),
                    **{f"cpu_{k}": 100 * (cpu1[k] - cpu0[k]) / seconds for k in cpu0},
                )
                total = warm + sent
                end = time.monotonic() + DRAIN_DEADLINE_S
                while int((await asyncio.to_thread(ask, sim, "count", "COUNT", 10))[1]) < total:
                    if time.monotonic() > end:
                        break
                    await asyncio.sleep(0.2)  # poll interval
                if isinstance(producer, NatsProducer):
                    round_trips.extend(await producer.round_trips(rooms, total, RR_COUNT))
                    total += RR_COUNT
                return total
            finally:
                await producer.aclose()

        total = asyncio.run(drive())
        dump = tmp_path / "arrivals.bin"
        ask(sim, f"dump {dump}", "DUMPED", 30)
        assert bridge.poll() is None, f"bridge exited during the run:\n{tail(logs['bridge'])}"
        code = stop(bridge, deadline_s=30)
        bridge = None
        assert code == 0, f"bridge exit {code}:\n{tail(logs['bridge'])}"
    finally:
        stop(bridge, deadline_s=30)
        quit_and_stop(sim)
        if broker is not None:
            broker.close()

    triples = array.array("q")
    triples.frombytes(dump.read_bytes())
    seen: dict[int, int] = {}
    latencies: list[float] = []
    first, last = int(window["first"]), int(window["first"] + window["sent"])
    for k in range(0, len(triples), 3):
        n = triples[k]
        seen[n] = seen.get(n, 0) + 1
        if first <= n < last:
            latencies.append((triples[k + 2] - triples[k + 1]) / 1e6)
    latencies.sort()
    lat = _stats(latencies)
    rr = _stats(round_trips) if round_trips else {}
    bridge_log = logs["bridge"].read_text(errors="replace")
    m = SHUTDOWN.search(bridge_log)
    shutdown = {k: int(m[i]) for i, k in enumerate(SHUTDOWN_FIELDS, start=1)} if m else {}
    wire = {"p50": float(m[7]), "p99": float(m[8])} if m else {}
    rate = window["sent"] / window["seconds"]
    over_goal = sum(1 for v in latencies if v >= GOAL_P99_MS)
    result = {
        "bus": bus,
        "rooms": ROOMS,
        "asked_rate": RATE,
        "rate": round(rate, 1),
        "window": window,
        "latency_ms": lat,
        "over_goal": over_goal,
        "seen_by_sim": len(seen),
        "seen_twice": sum(1 for c in seen.values() if c > 1),
        "sent": total,
        "bridge_shutdown": shutdown,
        "bridge_received_to_wire_ms": wire,
        "nats_request_reply_ms": rr,
        "joined_s": round(joined_s, 1),
        "wall_s": round(time.monotonic() - began, 1),
    }
    path = Path(tempfile.mkdtemp(prefix="bridge-bench-")) / f"command_latency_{bus}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "",
        f"command latency ({bus}): publish -> SignalRequest at the simulator, {ROOMS} rooms, "
        f"{os.cpu_count()} cores",
        f"  window: {window['sent']:.0f} commands in {window['seconds']:.1f} s = {rate:,.0f}/s "
        f"(asked {RATE:,.0f}/s); latency p50 {lat['p50']:.2f} p90 {lat['p90']:.2f} p99 {lat['p99']:.2f} "
        f"max {lat['max']:.1f} ms (n={lat['n']}, {over_goal} >= {GOAL_P99_MS:.0f} ms)",
        f"  CPU % of one core: bridge {window['cpu_bridge']:.1f}, simulator {window['cpu_simulator']:.1f}"
        + (f", broker {window['cpu_broker']:.1f}" if "cpu_broker" in window else "")
        + f"; bridge RSS {window['rss_mb']:.0f} MB",
        f"  simulator saw {len(seen)} of {total} commands ({result['seen_twice']} twice)",
        f"  bridge at shutdown (whole run): {m[0] if m else 'no commands line'}",
    ]
    if rr:
        lines.append(
            f"  nats request/reply round trip ({RR_COUNT} sequential, to the command_result reply): "
            f"p50 {rr['p50']:.2f} p90 {rr['p90']:.2f} p99 {rr['p99']:.2f} max {rr['max']:.1f} ms"
        )
    # Reported, not asserted (as test_bridge_latency's goal): on this 2-core machine NATS meets it (p99
    # ~8 ms) and Kafka on tansu does not (~300 ms): the bridge's consumer waits on tansu's fetch, which
    # answers late within aiokafka's default fetch_max_wait_ms (500 ms); the module docstring has more.
    lines.append(
        f"  goal p99 < {GOAL_P99_MS:.0f} ms: {'met' if lat['p99'] < GOAL_P99_MS else 'NOT MET'} "
        f"({lat['p99']:.2f} ms); joined in {joined_s:.0f} s, wall {result['wall_s']:.0f} s"
    )
    report(pytestconfig, "\n".join(lines) + f"\nresults written to {path}")

    # Sanity only: every command reached the simulator once and was applied, nothing else happened.
    assert m is not None, f"no commands shutdown line:\n{tail(logs['bridge'])}"
    assert len(seen) == total, (len(seen), total)
    assert result["seen_twice"] == 0
    assert shutdown["received"] == shutdown["applied"] == total, shutdown
    assert shutdown["rejected"] == shutdown["failed"] == shutdown["dead_lettered"] == 0, shutdown
