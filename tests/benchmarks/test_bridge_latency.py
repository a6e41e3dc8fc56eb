"""Bridge-ADDED latency at 5,000 events/s (issue 4's "p99 added latency < 10 ms"), next to the e2e latency.

Run by ``make bench`` only. The same real pipeline as ``test_events_throughput`` (its ``events_sim.py``
and ``events_consumer.py``; nats-server and tansu; the bridge as ``python -m bridge run``), but only two
phases: a warm-up at 1,000 events/s for 3 s, then 5,000 events/s over 50 rooms for 20 s. Two numbers per
bus, from the same run:

- **bridge-added**: from the moment an event is put into the bus's outbox (right after its frame was
  received and mapped; receive -> put is not measured, it is the synchronous decode/map of one frame) to
  the moment the broker confirmed its batch (Kafka ack / NATS flush PONG). The bridge counts it always,
  in ``Outbox.latency``, and logs p50/p99/max per bus at shutdown; this test parses that line from the
  bridge's log. It covers the bridge's whole life: the 3 s warm-up and the join events (~3 % of the
  samples) are included;
- **e2e**: simulator send -> consumer receive of the stamped signal events of the 5k/s window (as
  ``test_events_throughput``), which adds the simulator's send, the broker, the consumer and the
  scheduling of five processes on this machine's cores.

Variants (parametrized): ``default`` (the bridge's defaults: batches to NATS start at most every
``outbox.batch_interval_s`` = 2 ms with up to ``outbox.max_in_flight`` = 4 in flight, batches to Kafka at
most every ``kafka.linger_s`` = 5 ms), ``eager`` (``batch_interval_s: 0``: NATS batches of whatever is
queued as soon as one may start), ``one_in_flight`` (``max_in_flight: 1``: the next batch waits for the
last one's confirmation) and ``kafka_linger_0`` (Kafka batches every 2 ms too: more, smaller produce
requests, which costs when the broker shares these 2 cores), to show what pacing, pipelining and linger
buy; ``no_consumer`` is the defaults with no consumer process (no e2e numbers): its ~28 % of a core and
the ~30 % more that tansu spends serving its fetches are what push this machine past saturation.

Over the 5k/s window the bridge's scheduler statistics are read too (/proc/PID/task/*/schedstat): the
share of the time it ran, and the share it was runnable but waiting for a core taken by another process.
That waiting is added latency the bridge's code cannot remove; with the consumer running it is 20-30 %.
``test_lean_relay_and_bridge_end_to_end`` is issue 4's lean limit end to end: ``events_lean.py`` (parse +
prebuilt headers + batched produce, nothing else) in the bridge's place, then the bridge, on the same
simulator (``--signal-only``: the relay has no WebRTC), brokers and a fresh topic and consumer per phase.
It reports, for each of the two, e2e latency, CPU per event, the wait for a core, and the read ->
confirmed time per bus (the relay times what the bridge's outbox times, and logs it in the bridge's
format), so what the bridge ADDS over the minimal pipeline on this machine is their difference, by two
measures: e2e (consumer included) and on the ack path (read -> broker confirmed, which leaves out the
consumer and tansu's fetches, whose p99 swings by ~100 ms on Kafka). Its ``no_consumer`` variant runs
without the consumer process: ack path only.

The numbers are printed and written as JSON to a temporary directory.
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
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from bridge.demo_services import free_port
from support.bench import (
    API_KEY,
    API_SECRET,
    LAUNCHER,
    StealTimeline,
    active_rooms,
    ask,
    bridge_metrics,
    livekit_section,
    machine_jiffies,
    machine_load,
    quit_and_stop,
    report,
    sched_seconds,
    spawn,
    stop,
    tail,
)
from support.brokers import KafkaBroker, NatsServer, start_kafka_broker, start_nats_server
from support.bus_consumers import create_topic

HERE: Final = Path(__file__).resolve().parent
ROOMS: Final = 50
PARTITIONS: Final = 6
WARMUP_RATE, WARMUP_S = 1000.0, 3.0
GOAL_RATE, GOAL_S = 5000.0, 20.0
GOAL_P99_MS: Final = 10.0
QUIET_STEAL_PERCENT: Final = 1.0  # a second of the 5k/s window is "quiet" when steal stayed under this
JOIN_DEADLINE_S: Final = 60.0

VARIANTS: Final[dict[str, dict[str, dict[str, Any]]]] = {
    "default": {},
    "no_consumer": {},  # the defaults, with no consumer process taking CPU: no e2e numbers
    "eager": {"outbox": {"batch_interval_s": 0}},
    "one_in_flight": {"outbox": {"max_in_flight": 1}},
    "kafka_linger_0": {"kafka": {"linger_s": 0}},
}

# The bridge's shutdown line per bus (bridge.app.Bridge.aclose).
ADDED: Final = re.compile(
    r"bus (\w+): (\d+) events published in (\d+) batches, (\d+) dropped; added latency \(put -> confirmed\) "
    r"p50 ([\d.]+) ms p99 ([\d.]+) ms max ([\d.]+) ms over (\d+) events"
)


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def _e2e(path: Path, t0: int, t1: int, steal_per_s: list[float] | None = None) -> dict[str, Any]:
    """Send -> receive ms of the stamped signal events sent within [t0, t1). With ``steal_per_s`` (the
    VM's steal in each second from t0; the last one runs to t1) also: the p99 of each second, and the p99
    over the quiet seconds: the hypervisor took under QUIET_STEAL_PERCENT of the CPUs in it and in the next
    (a stall also holds up what was sent just before it)."""
    triples = array.array("q")
    triples.frombytes(path.read_bytes())
    sent = [
        (triples[i], (triples[i + 1] - triples[i]) / 1e6)
        for i in range(0, len(triples), 3)
        if triples[i + 2] == 0 and t0 <= triples[i] < t1
    ]
    values = sorted(ms for _, ms in sent)
    out: dict[str, Any] = {
        "n": len(values),
        "p50": round(_pct(values, 0.5), 2),
        "p99": round(_pct(values, 0.99), 2),
        "max": round(values[-1], 2) if values else float("nan"),
    }
    if steal_per_s is not None:
        last = len(steal_per_s) - 1
        seconds: list[list[float]] = [[] for _ in steal_per_s]
        for at, ms in sent:
            seconds[min(last, (at - t0) // 1_000_000_000)].append(ms)
        calm_s = [steal < QUIET_STEAL_PERCENT for steal in steal_per_s]  # False for nan
        quiet = [k for k in range(last + 1) if calm_s[k] and (k == last or calm_s[k + 1])]
        calm = sorted(ms for k in quiet for ms in seconds[k])
        out["p99_per_second"] = [round(_pct(sorted(v), 0.99), 2) for v in seconds if v]
        out["quiet_seconds"] = len(quiet)
        out["p99_quiet"] = round(_pct(calm, 0.99), 2)
    return out


# bridge_publish_latency_seconds: the 10 ms bucket and the count, per bus (bridge.ops.metrics).
_BUCKET: Final = re.compile(r'bridge_publish_latency_seconds_bucket\{bus="(\w+)",le="0\.01"\} (\d+)')
_COUNT: Final = re.compile(r'bridge_publish_latency_seconds_count\{bus="(\w+)"\} (\d+)')


def _within_goal(metrics: str) -> dict[str, tuple[int, int]]:
    """Per bus: (events confirmed within 10 ms of their put, events confirmed), from /metrics."""
    within = {m[1]: int(m[2]) for m in _BUCKET.finditer(metrics)}
    return {m[1]: (within.get(m[1], 0), int(m[2])) for m in _COUNT.finditer(metrics)}


def _bridge_added(log: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for m in ADDED.finditer(log.read_text(errors="replace")):
        out[m[1]] = {
            "published": int(m[2]),
            "batches": int(m[3]),
            "dropped": int(m[4]),
            "p50": float(m[5]),
            "p99": float(m[6]),
            "max": float(m[7]),
            "n": int(m[8]),
        }
    return out


def _start_ready(script: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``python tests/benchmarks/<script> ARGS``, piped; returns once it printed READY."""
    proc = spawn([str(HERE / script), *args], log, piped=True)
    ask(proc, None, "READY", 30)
    return proc


def _start_sim(log: Path, port: int, *options: str) -> subprocess.Popen[bytes]:
    """``events_sim.py`` on ``port`` with the ROOMS load rooms."""
    return _start_ready(
        "events_sim.py", log, "--port", str(port), "--rooms", str(ROOMS),
        "--api-key", API_KEY, "--api-secret", API_SECRET, *options,
    )  # fmt: skip


def _start_consumer(
    log: Path, nats_url: str, prefix: str, bootstrap: str, topic: str, out: Path
) -> subprocess.Popen[bytes]:
    """``events_consumer.py`` on ``<prefix>.events.>`` and every partition of ``topic``."""
    return _start_ready(
        "events_consumer.py", log, "--nats", nats_url, "--prefix", prefix,
        "--kafka", bootstrap, "--topic", topic, "--out", str(out),
    )  # fmt: skip


def _start_bridge(
    tmp_path: Path,
    log: Path,
    port: int,
    kafka_section: dict[str, Any],
    nats_url: str,
    prefix: str,
    variant: dict[str, dict[str, Any]],
) -> subprocess.Popen[bytes]:
    """``python -m bridge run`` on the ROOMS rooms; returns once every room has it ACTIVE."""
    rooms = {f"load-{i}" for i in range(ROOMS)}
    config = tmp_path / "bridge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "livekit": livekit_section(port),
                "rooms": {"static": sorted(rooms)},
                "kafka": kafka_section,
                "nats": {"servers": [nats_url], "subject_prefix": prefix},
                "logging": {"level": "INFO"},
                "http": {"listen": "127.0.0.1:0"},
                "outbox": variant.get("outbox", {}),
            }
        )
    )
    bridge = spawn(["-c", LAUNCHER, "run", "--config", str(config)], log, piped=False)
    try:
        deadline = time.monotonic() + JOIN_DEADLINE_S
        while True:
            assert bridge.poll() is None, f"bridge exited:\n{tail(log)}"
            with contextlib.suppress(OSError, urllib.error.URLError):
                if active_rooms(port, rooms) == rooms:
                    return bridge
            assert time.monotonic() < deadline, f"rooms not all ACTIVE:\n{tail(log)}"
            time.sleep(0.5)  # poll interval
    except BaseException:
        stop(bridge, deadline_s=20)
        raise


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bridge_added_latency(variant: str, tmp_path: Path, pytestconfig: pytest.Config) -> None:
    logs = {name: tmp_path / f"{name}.log" for name in ("sim", "consumer", "bridge")}
    nats_server: NatsServer | None = None
    kafka: KafkaBroker | Any = None
    sim = consumer = bridge = None
    try:
        nats_server = start_nats_server()
        kafka = start_kafka_broker()
        tag = uuid.uuid4().hex[:8]
        topic, prefix = f"bench-latency-{tag}", f"bench{tag}"
        asyncio.run(create_topic(kafka.bootstrap, topic, partitions=PARTITIONS))
        port = free_port()
        sim = _start_sim(logs["sim"], port)
        out = tmp_path / "consumer"
        out.mkdir()
        if variant != "no_consumer":
            consumer = _start_consumer(logs["consumer"], nats_server.url, prefix, kafka.bootstrap, topic, out)
        kafka_section = {
            "bootstrap_servers": [kafka.bootstrap],
            "events_topic": topic,
            "enable_idempotence": False,
            **VARIANTS[variant].get("kafka", {}),
        }
        bridge = _start_bridge(
            tmp_path, logs["bridge"], port, kafka_section, nats_server.url, prefix, VARIANTS[variant]
        )

        ask(sim, f"run {WARMUP_RATE} {WARMUP_S}", "DONE", WARMUP_S + 30)
        time.sleep(1.0)  # deliberate: the warm-up drains before the measured window
        sched0, machine0, wall0 = sched_seconds(bridge.pid), machine_jiffies(), time.monotonic()
        before = _within_goal(bridge_metrics(logs["bridge"]))
        done = ask(sim, f"run {GOAL_RATE} {GOAL_S}", "DONE", GOAL_S + 30)
        sched1, machine1, wall = sched_seconds(bridge.pid), machine_jiffies(), time.monotonic() - wall0
        time.sleep(1.0)  # deliberate: the window's last batches are confirmed before the second scrape
        after = _within_goal(bridge_metrics(logs["bridge"]))
        window = {
            bus: {
                "events": after[bus][1] - before[bus][1],
                "within_goal_percent": round(
                    100 * (after[bus][0] - before[bus][0]) / max(1, after[bus][1] - before[bus][1]), 2
                ),
            }
            for bus in after
        }
        emitted, t0, t1 = int(done[1]), int(done[2]), int(done[3])
        time.sleep(3.0)  # deliberate: the pipeline drains before the consumer and the bridge stop

        if consumer is not None:
            assert stop(consumer, deadline_s=60) == 0, tail(logs["consumer"])
            consumer = None
            e2e = {bus: _e2e(out / f"{bus}.lat", t0, t1) for bus in ("nats", "kafka")}
        else:
            e2e = {
                bus: {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
                for bus in ("nats", "kafka")
            }
        code = stop(bridge, deadline_s=20)
        bridge = None
        assert code == 0, f"bridge exit {code}:\n{tail(logs['bridge'])}"
        added = _bridge_added(logs["bridge"])
    finally:
        _tear_down(consumer, bridge, sim, kafka, nats_server)

    rate = emitted / ((t1 - t0) / 1e9)
    busy, steal = machine_load(machine0, machine1)
    cpu = {
        "bridge_ran_percent": round(100 * (sched1[0] - sched0[0]) / wall, 1),
        "bridge_waited_percent": round(100 * (sched1[1] - sched0[1]) / wall, 1),
        "machine_busy_percent": busy,
        "steal_percent": steal,
    }
    lines = [
        "",
        f"bridge-added latency ({variant}; kafka {kafka_section}), {rate:,.0f} events/s offered, "
        f"{ROOMS} rooms, {os.cpu_count()} cores",
        # Waited: runnable, but every core was busy with another process (the simulator, the brokers, the
        # consumer): latency the bridge's code cannot remove.
        f"  5k/s window: bridge on a CPU {cpu['bridge_ran_percent']:.1f} %, waiting for one "
        f"{cpu['bridge_waited_percent']:.1f} %; machine {busy:.0f} % busy of {100 * (os.cpu_count() or 1)}, "
        f"steal {steal:.1f} %",
    ]
    for bus in ("nats", "kafka"):
        a, e = added.get(bus, {}), e2e[bus]
        lines.append(
            f"  {bus:>5}: bridge-added (put -> confirmed, whole run) p50 {a.get('p50', float('nan')):.2f} "
            f"p99 {a.get('p99', float('nan')):.2f} max {a.get('max', float('nan')):.1f} ms over "
            f"{a.get('n', 0):.0f} events in {a.get('batches', 0):.0f} batches | e2e signal (5k/s window) "
            f"p50 {e['p50']:.2f} p99 {e['p99']:.2f} max {e['max']:.1f} ms (n={e['n']})"
        )
    lines.append(
        "  5k/s window only (from /metrics): confirmed within 10 ms "
        + ", ".join(f"{bus} {w['within_goal_percent']:.2f} % of {w['events']}" for bus, w in window.items())
        + " (p99 < 10 ms means >= 99 %)"
    )
    worse = max(added.get(bus, {}).get("p99", float("inf")) for bus in ("nats", "kafka"))
    # Reported, not asserted: on this 2-core machine it depends on the CPU left to the bridge (see README).
    lines.append(
        f"  goal p99 bridge-added < {GOAL_P99_MS:.0f} ms: {'met' if worse < GOAL_P99_MS else 'NOT MET'}"
    )
    path = Path(tempfile.mkdtemp(prefix="bridge-bench-")) / f"bridge_latency_{variant}.json"
    result = {
        "variant": variant,
        "rate": rate,
        "added_ms": added,
        "window": window,
        "e2e_ms": e2e,
        "cpu": cpu,
    }
    path.write_text(json.dumps(result, indent=2) + "\n")
    report(pytestconfig, "\n".join(lines) + f"\nresults written to {path}")

    for bus in ("nats", "kafka"):
        assert bus in added, f"no shutdown latency line for {bus}:\n{tail(logs['bridge'])}"
        assert added[bus]["dropped"] == 0
        assert added[bus]["n"] >= emitted, (bus, added[bus], emitted)
        assert variant == "no_consumer" or e2e[bus]["n"] > 0


LEAN_IDENTITY: Final = "lean-relay"


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("with_consumer", [True, False], ids=["with_consumer", "no_consumer"])
def test_lean_relay_and_bridge_end_to_end(
    with_consumer: bool, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    """Issue 4's lean limit measured end to end: ``events_lean.py`` (parse + prebuilt headers + batched
    produce, nothing else) in the bridge's place, then the bridge, on the same simulator, brokers and
    consumer, one after the other. The simulator runs ``--signal-only`` (the relay has no WebRTC, so the
    user-data step is a second metadata update for both). Per process: e2e latency of the stamped
    updates at 5,000 events/s (with the consumer), read -> confirmed per bus over the process's run, CPU
    per event, and how long it waited for a core."""
    logs = {name: tmp_path / f"{name}.log" for name in ("sim", "consumer", "bridge", "lean")}
    nats_server: NatsServer | None = None
    kafka: KafkaBroker | Any = None
    sim = consumer = relay = None
    phases: dict[str, dict[str, Any]] = {}
    try:
        nats_server = start_nats_server()
        kafka = start_kafka_broker()
        port = free_port()
        sim = _start_sim(logs["sim"], port, "--signal-only")
        # Each phase has its own topic, subject prefix and consumer: tansu's fetches get slower as a
        # topic grows, which would penalise whichever ran second.
        for name in ("lean", "bridge"):
            tag = uuid.uuid4().hex[:8]
            topic, prefix = f"bench-{name}-{tag}", f"bench{tag}"
            asyncio.run(create_topic(kafka.bootstrap, topic, partitions=PARTITIONS))
            out = tmp_path / name
            out.mkdir()
            if with_consumer:
                consumer = _start_consumer(
                    logs["consumer"], nats_server.url, prefix, kafka.bootstrap, topic, out
                )
            if name == "lean":
                relay = spawn(
                    [str(HERE / "events_lean.py"), "--url", f"ws://127.0.0.1:{port}", "--rooms", str(ROOMS),
                     "--api-key", API_KEY, "--api-secret", API_SECRET, "--identity", LEAN_IDENTITY,
                     "--nats", nats_server.url, "--prefix", prefix, "--kafka", kafka.bootstrap,
                     "--topic", topic, "--latency"],
                    logs["lean"],
                    piped=True,
                )  # fmt: skip
                ask(relay, None, "READY", JOIN_DEADLINE_S)
            else:
                kafka_section: dict[str, Any] = {
                    "bootstrap_servers": [kafka.bootstrap],
                    "events_topic": topic,
                    "enable_idempotence": False,
                }
                relay = _start_bridge(
                    tmp_path, logs["bridge"], port, kafka_section, nats_server.url, prefix, {}
                )
            phases[name] = _measured_phase(sim, relay.pid)
            if consumer is not None:
                assert stop(consumer, deadline_s=60) == 0, tail(logs["consumer"])
                consumer = None
            phases[name]["e2e"] = {
                bus: _e2e(out / f"{bus}.lat", phases[name]["t0"], phases[name]["t1"], phases[name]["steal_s"])
                if with_consumer
                else {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
                for bus in ("nats", "kafka")
            }
            code = stop(relay, deadline_s=20)
            relay = None
            assert code == 0, f"{name} exit {code}:\n{tail(logs[name])}"
            phases[name]["ack"] = _bridge_added(logs[name])
    finally:
        _tear_down(consumer, relay, sim, kafka, nats_server)

    cores = os.cpu_count()
    lines = [
        "",
        f"lean relay, then the bridge: end to end, signaling only, {ROOMS} rooms, {cores} cores, "
        + ("with the consumer" if with_consumer else "no consumer (ack path only)"),
    ]
    for name, ph in phases.items():
        ph["us_per_event"] = round(ph["cpu_s"] * 1e6 / max(1, ph["emitted"]), 1)
        e, a = ph["e2e"], ph["ack"]
        lines.append(
            f"  {name:>6}: e2e nats p50/p99 {e['nats']['p50']:.2f}/{e['nats']['p99']:.2f} ms, kafka "
            f"{e['kafka']['p50']:.2f}/{e['kafka']['p99']:.2f} ms | read -> confirmed nats p50/p99 "
            f"{a['nats']['p50']:.2f}/{a['nats']['p99']:.2f} ms, kafka {a['kafka']['p50']:.2f}/"
            f"{a['kafka']['p99']:.2f} ms | CPU {ph['cpu_percent']:.1f} % "
            f"({ph['us_per_event']:.1f} us/event), waiting for a core {ph['waited_percent']:.1f} % "
            f"| machine {ph['busy']:.0f} %, steal {ph['steal']:.1f} %"
        )
        if with_consumer:
            loud = [round(x, 1) for x in ph["steal_s"] if not x < QUIET_STEAL_PERCENT]
            per_s = {bus: sorted(e[bus]["p99_per_second"]) for bus in ("nats", "kafka")}
            lines.append(
                f"          steal >= {QUIET_STEAL_PERCENT:g} % in {len(loud)} of {len(ph['steal_s'])} s "
                f"{loud}; "
                + ", ".join(
                    f"{bus} e2e p99 per second median {_pct(per_s[bus], 0.5):.2f} worst "
                    f"{per_s[bus][-1] if per_s[bus] else float('nan'):.2f} ms, over the "
                    f"{e[bus]['quiet_seconds']} quiet seconds {e[bus]['p99_quiet']:.2f} ms"
                    for bus in ("nats", "kafka")
                )
            )
    fraction = phases["lean"]["us_per_event"] / phases["bridge"]["us_per_event"]
    lines.append(f"  lean_us/bridge_us (CPU per event, end to end) = {fraction:.2f} (goal >= 0.6)")
    # What the bridge adds over the minimal pipeline on the same machine and load (a difference of the two
    # runs' percentiles: Kafka's p99 here swings by about 100 ms from run to run with tansu and the consumer).
    added = {
        measure: {
            bus: {
                q: round(phases["bridge"][measure][bus][q] - phases["lean"][measure][bus][q], 2)
                for q in (("p50", "p99", "p99_quiet") if measure == "e2e" else ("p50", "p99"))
            }
            for bus in ("nats", "kafka")
        }
        for measure in (("e2e", "ack") if with_consumer else ("ack",))
    }
    for measure, per_bus in added.items():
        lines.append(
            f"  added over the lean relay (bridge - lean), {measure}: "
            + ", ".join(
                f"{bus} p50 {a['p50']:+.2f} ms p99 {a['p99']:+.2f} ms"
                + (f" (quiet seconds {a['p99_quiet']:+.2f} ms)" if "p99_quiet" in a else "")
                for bus, a in per_bus.items()
            )
            + " (goal: p99 < 10 ms)"
        )
    verdicts = []
    for measure, per_bus in added.items():
        for bus, a in per_bus.items():
            if measure == "e2e" and bus == "kafka":  # both hundreds of ms: the difference says nothing
                lean_p99 = phases["lean"]["e2e"]["kafka"]["p99"]
                verdicts.append(f"kafka e2e not shown (the lean relay's own p99 is {lean_p99:.0f} ms)")
            else:
                verdicts.append(f"{bus} {measure} {'met' if a['p99'] < GOAL_P99_MS else 'NOT MET'}")
    lines.append(
        f"  goal: the bridge adds < {GOAL_P99_MS:.0f} ms at p99 over the lean relay: " + ", ".join(verdicts)
    )
    phases["added_over_lean_ms"] = added
    path = (
        Path(tempfile.mkdtemp(prefix="bridge-bench-"))
        / f"lean_vs_bridge_{'with' if with_consumer else 'no'}_consumer.json"
    )
    path.write_text(json.dumps(phases, indent=2) + "\n")
    report(pytestconfig, "\n".join(lines) + f"\nresults written to {path}")
    for name in ("lean", "bridge"):
        for bus in ("nats", "kafka"):
            assert not with_consumer or phases[name]["e2e"][bus]["n"] > 0, (name, bus)
            ack = phases[name]["ack"][bus]
            assert ack["dropped"] == 0, (name, bus, ack)  # every event of the run confirmed, none lost
            assert ack["n"] >= phases[name]["emitted"], (name, bus, ack)


def _tear_down(
    consumer: subprocess.Popen[bytes] | None,
    relay: subprocess.Popen[bytes] | None,
    sim: subprocess.Popen[bytes] | None,
    kafka: KafkaBroker | Any,
    nats_server: NatsServer | None,
) -> None:
    """Stop whatever a test started, in order: the consumer, the bridge (or relay), the simulator, brokers."""
    stop(consumer, deadline_s=10)
    stop(relay, deadline_s=20)
    quit_and_stop(sim)
    if kafka is not None:
        kafka.close()
    if nats_server is not None:
        nats_server.close()


def _measured_phase(sim: subprocess.Popen[bytes], pid: int) -> dict[str, Any]:
    """Warm-up, then GOAL_RATE for GOAL_S with ``pid``'s CPU and scheduler waits read around it."""
    ask(sim, f"run {WARMUP_RATE} {WARMUP_S}", "DONE", WARMUP_S + 30)
    time.sleep(1.0)  # deliberate: the warm-up drains before the measured window
    sched0, machine0, wall0 = sched_seconds(pid), machine_jiffies(), time.monotonic()
    with StealTimeline() as timeline:
        done = ask(sim, f"run {GOAL_RATE} {GOAL_S}", "DONE", GOAL_S + 30)
    sched1, machine1, wall = sched_seconds(pid), machine_jiffies(), time.monotonic() - wall0
    time.sleep(3.0)  # deliberate: the pipeline drains before the next phase
    busy, steal = machine_load(machine0, machine1)
    t0, t1 = int(done[2]), int(done[3])
    n = max(1, round((t1 - t0) / 1e9))  # whole seconds; the last takes the few ms past GOAL_S
    return {
        "emitted": int(done[1]),
        "t0": t0,
        "t1": t1,
        "steal_s": [
            timeline.steal_percent(t0 + k * 1_000_000_000, t1 if k == n - 1 else t0 + (k + 1) * 1_000_000_000)
            for k in range(n)
        ],
        "cpu_s": sched1[0] - sched0[0],
        "cpu_percent": round(100 * (sched1[0] - sched0[0]) / wall, 1),
        "waited_percent": round(100 * (sched1[1] - sched0[1]) / wall, 1),
        "busy": busy,
        "steal": steal,
    }
