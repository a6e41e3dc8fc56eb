"""What the benchmarks share: credentials, the loopback launcher, process control and /proc readings."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Final

import pytest

REPO: Final = Path(__file__).resolve().parents[2]
API_KEY: Final = "bench-key"
API_SECRET: Final = "bench-secret-that-is-long-enough-for-hs256"
IDENTITY: Final = "livekit-bridge"
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
# ``python -c LAUNCHER <args>`` runs ``python -m bridge <args>`` with ICE restricted to 127.0.0.1.
LAUNCHER: Final = (
    "import runpy, sys; from bridge.sim.ice import use_loopback_only; use_loopback_only(); "
    "sys.argv[0] = 'bridge'; runpy.run_module('bridge', run_name='__main__', alter_sys=True)"
)


# The bridge's "http: serving ... on URL" line (bridge.ops.server), for ``http.listen: 127.0.0.1:0``.
_HTTP_URL: Final = re.compile(r"http: serving .* on (http://\S+)")


def livekit_section(port: int) -> dict[str, str]:
    """The bridge's ``livekit`` settings for the benchmark simulator on ``port``."""
    return {
        "url": f"ws://127.0.0.1:{port}",
        "api_key": API_KEY,
        "api_secret": API_SECRET,
        "identity": IDENTITY,
    }


def report(config: pytest.Config, text: str) -> None:
    """Print past pytest's output capture (fd-level by default): the numbers are the point of the run."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(text, flush=True)


def pct(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile of already sorted values (nan when empty)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def stop(proc: subprocess.Popen[bytes] | None, *, deadline_s: float) -> int | None:
    """SIGTERM, then SIGKILL after ``deadline_s``; the SIGTERM's exit code (None: killed or never started)."""
    if proc is None:
        return None
    try:
        if proc.poll() is not None:
            return proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            return None
    finally:
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def quit_and_stop(sim: subprocess.Popen[bytes] | None, *, deadline_s: float = 15) -> None:
    """A piped simulator: ``quit`` on its command line (it closes its rooms), then :func:`stop`."""
    if sim is not None and sim.stdin is not None:
        with contextlib.suppress(OSError):
            sim.stdin.write(b"quit\n")
            sim.stdin.flush()
    stop(sim, deadline_s=deadline_s)


def spawn(args: list[str], log: Path, *, piped: bool) -> subprocess.Popen[bytes]:
    """``python ARGS`` from the repository; ``piped``: stdin/stdout are pipes (a line protocol, see
    :func:`ask`) and stderr goes to ``log``, else everything goes to ``log``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
            stdout=subprocess.PIPE if piped else sink,
            stderr=sink if piped else subprocess.STDOUT,
        )


def ask(proc: subprocess.Popen[bytes], command: str | None, prefix: str, timeout_s: float) -> list[str]:
    """Send ``command`` (if any) to a piped process and return the fields of its next stdout line that
    starts with ``prefix``."""
    assert proc.stdin is not None
    assert proc.stdout is not None
    if command is not None:
        proc.stdin.write(f"{command}\n".encode())
        proc.stdin.flush()
    found: list[list[str]] = []

    def read() -> None:
        assert proc.stdout is not None
        while raw := proc.stdout.readline():
            if (fields := raw.decode().split()) and fields[0] == prefix:
                found.append(fields)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    assert found, f"no {prefix!r} from pid {proc.pid} within {timeout_s:.0f} s"
    return found[0]


def bridge_ready(log: Path) -> bool:
    """Whether the bridge that logs to ``log`` answers 200 on ``/readyz`` (its HTTP URL from the log)."""
    with contextlib.suppress(OSError):  # urllib's URLError and HTTPError (503: not ready) included
        if m := _HTTP_URL.search(log.read_text(errors="replace")):
            with urllib.request.urlopen(f"{m[1]}/readyz", timeout=5) as response:  # loopback only
                return bool(response.status == 200)
    return False


def bridge_metrics(log: Path) -> str:
    """The Prometheus text of the bridge that logs to ``log`` (its HTTP URL from the log)."""
    m = _HTTP_URL.search(log.read_text(errors="replace"))
    assert m is not None, f"no HTTP URL in {log}"
    with urllib.request.urlopen(f"{m[1]}/metrics", timeout=10) as response:  # loopback only
        return str(response.read().decode())


def tail(log: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process (finer than /proc's clock ticks)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; utime/stime are fields 14/15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sched_seconds(pid: int) -> tuple[float, float]:
    """``(on a CPU, runnable but waiting for one)`` seconds, summed over the process's threads.

    From /proc/PID/task/*/schedstat (nanoseconds). The second number is what a saturated machine costs the
    process: every millisecond of it is latency that no code change in the process removes.
    """
    run = wait = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            ran, waited, _ = (int(v) for v in (task / "schedstat").read_text().split())
            run += ran
            wait += waited
    return run / 1e9, wait / 1e9


def machine_jiffies() -> tuple[int, int, int]:
    """``(busy, steal, total)`` clock ticks of all cores since boot, from /proc/stat's ``cpu`` line.

    Steal is time the hypervisor gave this VM's cores to someone else: a noisy neighbour, in numbers.
    """
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq, steal, sum(fields)


class StealTimeline:
    """:func:`machine_jiffies` sampled every ``interval_s`` by a thread, stamped with ``time.time_ns()`` (the
    clock of the simulator's send stamps), so a window's latencies can be set beside the steal within it.

    A p99 over 20 s at 5,000 events/s is the worst 1,000 events: one 200 ms stall of the VM decides it.
    """

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[int, tuple[int, int, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> StealTimeline:
        self.samples.append((time.time_ns(), machine_jiffies()))  # before the window opens, surely
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append((time.time_ns(), machine_jiffies()))
        self.samples.append((time.time_ns(), machine_jiffies()))

    def steal_percent(self, t0_ns: int, t1_ns: int) -> float:
        """Steal share (%) over the shortest sampled span that covers [t0_ns, t1_ns] (nan: not covered)."""
        start = [j for t, j in self.samples if t <= t0_ns]
        end = [j for t, j in self.samples if t >= t1_ns]
        if not start or not end:
            return float("nan")
        return machine_load(start[-1], end[0])[1]


def machine_load(start: tuple[int, int, int], end: tuple[int, int, int]) -> tuple[float, float]:
    """Between two :func:`machine_jiffies`: (% of ONE core busy, summed over all cores; % steal)."""
    total = max(1, end[2] - start[2])
    cores = os.cpu_count() or 1
    return round(100 * cores * (end[0] - start[0]) / total, 1), round(100 * (end[1] - start[1]) / total, 1)


def status_value(pid: int, key: str) -> int:
    """A number from /proc/PID/status (``VmRSS`` in kB, ``Threads``…)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{key} not in /proc/{pid}/status")


def rss_mb(pid: int) -> float:
    return status_value(pid, "VmRSS") / 1024


def admin_rooms(port: int) -> list[dict[str, Any]]:
    """The simulator's rooms and participants, from its admin API."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/admin/rooms", headers={"Authorization": f"Bearer {API_SECRET}"}
    )
    with urllib.request.urlopen(request, timeout=20) as response:  # loopback only
        rooms: list[dict[str, Any]] = json.load(response)["rooms"]
    return rooms


def active_rooms(port: int, names: set[str]) -> set[str]:
    """Which of ``names`` have the bridge connected and ACTIVE."""
    active: set[str] = set()
    for room in admin_rooms(port):
        name = room["room"].get("name", "")
        if name in names and any(
            p.get("identity") == IDENTITY and p.get("state") == "ACTIVE" and p.get("connected")
            for p in room["participants"]
        ):
            active.add(name)
    return active
