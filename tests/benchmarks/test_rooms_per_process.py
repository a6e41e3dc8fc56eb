"""Rooms per process: what N idle rooms cost one bridge process (research ``pc-scaling.md``).

Run by ``make bench`` only (pyproject's addopts keep ``tests/benchmarks`` out of ``make test``).

For each N the simulator and the bridge run as separate subprocesses on loopback:

1. ``python -m bridge sim`` on a free 127.0.0.1 port;
2. ``python -m bridge run --config FILE`` with N rooms in ``rooms.static``;
3. poll the simulator's admin API until all N bridge participants are ACTIVE (join-all time);
4. let the process settle, then measure the BRIDGE over an idle window: CPU % of one core (utime +
   stime from ``/proc/PID/stat``), RSS (``VmRSS``), open fds (``/proc/PID/fd``);
5. check every room is still ACTIVE, SIGTERM the bridge (it must exit 0 within a deadline), stop the
   simulator.

Both processes are started through a one-line launcher that runs ``python -m bridge`` after
``bridge.sim.ice.use_loopback_only()``, so every UDP socket binds 127.0.0.1 only (the research setup;
left alone, aioice binds every non-loopback interface).

The goals are asserted for N=1000 only: idle CPU < 25% of one core and RSS < 2 GB. The same N=1000 is
also measured with ``BRIDGE_SCALING_KNOBS=0`` (stock aiortc/aioice/CPython, on both sides) for
comparison. The table is printed at the end and written as JSON to a temporary directory (its path is
printed); nothing is written into the repository.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import pytest
import yaml

from bridge.demo_services import free_port
from support.bench import (
    API_KEY,
    API_SECRET,
    LAUNCHER,
    REPO,
    active_rooms,
    admin_rooms,
    cpu_seconds,
    livekit_section,
    report,
    status_value,
    stop,
    tail,
)

KNOBS_ENV: Final = "BRIDGE_SCALING_KNOBS"

CPU_GOAL_PERCENT: Final = 25.0
RSS_GOAL_MB: Final = 2048.0
SETTLE_S: Final = 5.0  # after the last join: let setup work (answers, GC) drain before measuring
JOIN_DEADLINE_S: Final = 150.0
STOP_DEADLINE_S: Final = 30.0

# `python -m bridge ...`, but with loopback-only ICE host candidates (see the module docstring).


@dataclass
class Result:
    n: int
    knobs: bool
    join_all_s: float
    window_s: float
    cpu_percent: float
    rss_mb: float
    rss_kb_per_room: float
    fds: int
    threads: int
    sim_cpu_percent: float  # the simulator over the same window, for context (not a goal)


@pytest.fixture(scope="module")
def results(pytestconfig: pytest.Config) -> Iterator[list[Result]]:
    collected: list[Result] = []
    yield collected
    if not collected:
        return
    out_dir = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    out = out_dir / "rooms_per_process.json"
    out.write_text(json.dumps([asdict(r) for r in collected], indent=2) + "\n")
    report(pytestconfig, _table(collected) + f"\nresults written to {out}")


def _table(rows: list[Result]) -> str:
    lines = [
        "",
        f"{'N':>5} {'knobs':>5} {'join-all s':>10} {'CPU %':>7} {'RSS MB':>8} "
        f"{'KB/room':>8} {'fds':>6} {'thr':>4} {'sim CPU %':>9}",
    ]
    for r in rows:
        lines.append(
            f"{r.n:>5} {'on' if r.knobs else 'off':>5} {r.join_all_s:>10.1f} {r.cpu_percent:>7.2f} "
            f"{r.rss_mb:>8.1f} {r.rss_kb_per_room:>8.1f} {r.fds:>6} {r.threads:>4} {r.sim_cpu_percent:>9.2f}"
        )
    on = sorted((r for r in rows if r.knobs), key=lambda r: r.n)
    if len(on) >= 2 and on[-1].n > on[0].n:
        marginal = (on[-1].rss_mb - on[0].rss_mb) * 1024 / (on[-1].n - on[0].n)
        lines.append(f"marginal RSS per room, N={on[0].n}->{on[-1].n} with knobs: {marginal:.0f} KB")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ processes


def _spawn(args: list[str], log: Path, *, knobs: bool) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), KNOBS_ENV: "1" if knobs else "0"}
    with log.open("wb") as sink:  # the child keeps its own copy of the fd
        return subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


# ------------------------------------------------------------------------------------------ /proc


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ------------------------------------------------------------------------------------------ simulator


def _wait_for_admin(port: int, sim: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert sim.poll() is None, f"simulator exited with {sim.returncode}:\n{tail(log)}"
        try:
            admin_rooms(port)
            return
        except (OSError, urllib.error.URLError):
            if time.monotonic() >= deadline:
                raise AssertionError(f"simulator admin API not up within 30 s:\n{tail(log)}") from None
        time.sleep(0.2)  # poll interval


def _wait_all_active(
    port: int, names: set[str], bridge: subprocess.Popen[bytes], log: Path, start: float
) -> float:
    deadline = start + JOIN_DEADLINE_S
    active: set[str] = set()
    while True:
        assert bridge.poll() is None, f"bridge exited with {bridge.returncode}:\n{tail(log)}"
        active = active_rooms(port, names)
        if active == names:
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"only {len(active)}/{len(names)} rooms ACTIVE after {JOIN_DEADLINE_S:.0f} s:\n{tail(log)}"
            )
        time.sleep(0.5)  # poll interval (each poll lists every room)


# ------------------------------------------------------------------------------------------ benchmark


def _measure(n: int, *, knobs: bool, window_s: float, work: Path) -> Result:
    port = free_port()
    rooms = [f"bench-{i:04d}" for i in range(n)]
    config = work / "bridge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "livekit": livekit_section(port),
                "rooms": {"static": rooms},
            }
        )
    )
    sim_log, bridge_log = work / "sim.log", work / "bridge.log"
    sim = _spawn(
        [
            "sim",
            "--port",
            str(port),
            "--api-key",
            API_KEY,
            "--api-secret",
            API_SECRET,
            "--join-timeout-s",
            "120",
        ],
        sim_log,
        knobs=knobs,
    )
    bridge: subprocess.Popen[bytes] | None = None
    try:
        _wait_for_admin(port, sim, sim_log)
        start = time.monotonic()
        bridge = _spawn(["run", "--config", str(config)], bridge_log, knobs=knobs)
        join_all_s = _wait_all_active(port, set(rooms), bridge, bridge_log, start)

        # Settling, then the idle window itself: deliberate waits, not synchronisation.
        time.sleep(SETTLE_S)
        pid = bridge.pid
        cpu0, sim0, t0 = cpu_seconds(pid), cpu_seconds(sim.pid), time.monotonic()
        time.sleep(window_s)
        cpu1, sim1, t1 = cpu_seconds(pid), cpu_seconds(sim.pid), time.monotonic()
        rss_kb = status_value(pid, "VmRSS")
        threads = status_value(pid, "Threads")
        fds = _fd_count(pid)

        assert bridge.poll() is None, f"bridge exited during the window:\n{tail(bridge_log)}"
        still = active_rooms(port, set(rooms))
        assert still == set(rooms), f"{n - len(still)} rooms not ACTIVE after the idle window"

        code = stop(bridge, deadline_s=STOP_DEADLINE_S)
        assert code == 0, f"bridge exit code {code} after SIGTERM (None: killed):\n{tail(bridge_log)}"
        return Result(
            n=n,
            knobs=knobs,
            join_all_s=round(join_all_s, 2),
            window_s=round(t1 - t0, 2),
            cpu_percent=round(100.0 * (cpu1 - cpu0) / (t1 - t0), 2),
            rss_mb=round(rss_kb / 1024, 1),
            rss_kb_per_room=round(rss_kb / n, 1),
            fds=fds,
            threads=threads,
            sim_cpu_percent=round(100.0 * (sim1 - sim0) / (t1 - t0), 2),
        )
    finally:
        if bridge is not None:
            stop(bridge, deadline_s=STOP_DEADLINE_S)
        stop(sim, deadline_s=15)


CASES: Final = [
    pytest.param(10, True, id="n10"),
    pytest.param(100, True, id="n100"),
    pytest.param(500, True, id="n500"),
    pytest.param(1000, True, id="n1000"),
    pytest.param(1000, False, id="n1000-no-knobs"),
]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="measures through Linux /proc")
@pytest.mark.parametrize(("n", "knobs"), CASES)
def test_rooms_per_process(
    n: int, knobs: bool, results: list[Result], tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    window_s = 30.0 if n >= 500 else 15.0
    result = _measure(n, knobs=knobs, window_s=window_s, work=tmp_path)
    results.append(result)
    report(pytestconfig, _table([result]))
    if n == 1000 and knobs:
        assert result.cpu_percent < CPU_GOAL_PERCENT, f"idle CPU {result.cpu_percent}% of one core"
        assert result.rss_mb < RSS_GOAL_MB, f"RSS {result.rss_mb} MB"
