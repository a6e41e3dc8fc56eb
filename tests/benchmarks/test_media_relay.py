"""Media relay cost: CPU per received track, pass-through (encoded-frame tap) vs decoding, and how many
audio tracks one bridge process receives in real time.

Run by ``make bench`` only (pyproject's addopts keep ``tests/benchmarks`` out of ``make test``)::

    python -m pytest -p no:cacheprovider -o addopts='--strict-markers -ra' \
        tests/benchmarks/test_media_relay.py

For each configuration (kind, number of tracks, mode):

1. ``python -m bridge sim`` runs in a subprocess (loopback ICE) with a scenario in which one simulated
   participant publishes N synthetic tracks (a tone: opus 48 kHz, 50 frames/s; or a 320x240 test
   pattern: VP8 at 15 fps) once the bridge is in; the simulator encodes them, on its own core;
2. the bridge runs in this process (``media.subscribe`` takes every track of the kind); "decode" sets a
   no-op ``on_frame`` sink, so aiortc's decoder threads decode every frame, "pass-through" leaves it
   unset (the tap only counts encoded frames);
3. once every track delivers, CPU of this process (all threads) and of the simulator is measured over
   ``WINDOW_S`` with the frames received per track.

A track is "real time" when it receives at least 95 % of its nominal frame rate. The capacity line
increases N until that fails (or until the simulator, which encodes every track, is the limit: its
CPU is printed beside; on a 2-core VM it is, at about 100 tracks). Nothing is asserted but that
frames arrive; the table is the point.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from bridge.app import Bridge
from bridge.config import MediaSettings, SubscribeRule, load_settings
from bridge.demo_services import free_port
from bridge.sim.ice import use_loopback_only
from support.bench import API_KEY, API_SECRET, LAUNCHER, REPO, cpu_seconds, report, stop, tail

ROOM: Final = "relay-bench"
WINDOW_S: Final = 6.0
RATES: Final = {"audio": 50.0, "video": 15.0}


@dataclass
class Row:
    kind: str
    tracks: int
    mode: str
    bridge_cpu: float  # % of one core
    sim_cpu: float
    fps_per_track: float

    @property
    def per_track(self) -> float:
        return self.bridge_cpu / self.tracks

    @property
    def real_time(self) -> bool:
        return self.fps_per_track >= 0.95 * RATES[self.kind]


def _spawn_sim(port: int, scenario: Path, log: Path) -> Any:
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["sim", "--port", str(port), "--api-key", API_KEY, "--api-secret", API_SECRET]
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, *args, "--scenario", str(scenario)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


async def _measure(kind: str, tracks: int, mode: str, workdir: Path) -> Row:
    steps: list[dict[str, Any]] = [
        {"action": "join", "identity": "publisher"},  # creates the room
        {"action": "wait_for_client", "count": 1},
    ]
    steps += [
        {"action": "publish", "identity": "publisher", "kind": kind, "name": f"t{i}"} for i in range(tracks)
    ]
    scenario = workdir / f"{kind}-{tracks}-{mode}.yaml"
    scenario.write_text(yaml.safe_dump({"room": ROOM, "steps": steps}))
    port = free_port()
    log = workdir / f"sim-{kind}-{tracks}-{mode}.log"
    sim = _spawn_sim(port, scenario, log)
    bridge: Bridge | None = None
    try:
        environ = {
            "BRIDGE_LIVEKIT__URL": f"ws://127.0.0.1:{port}",
            "BRIDGE_LIVEKIT__API_KEY": API_KEY,
            "BRIDGE_LIVEKIT__API_SECRET": API_SECRET,
            "BRIDGE_ROOMS__STATIC": f"[{ROOM}]",
            "BRIDGE_HTTP__LISTEN": "127.0.0.1:0",
        }
        media = MediaSettings(subscribe=(SubscribeRule(kind=kind),))  # type: ignore[arg-type]
        settings = load_settings(None, environ).model_copy(update={"media": media})
        deadline = time.monotonic() + 30
        while True:  # the simulator's port opens after a second or two
            bridge = Bridge(settings)
            try:
                await bridge.start()
                break
            except Exception:
                await bridge.aclose()
                bridge = None
                assert time.monotonic() < deadline, tail(log)
                await asyncio.sleep(0.5)
        session = bridge.supervisor.sessions[ROOM]
        if mode == "decode":
            session.media._on_frame = lambda _track, _frame: None  # decode every frame, drop it
        deadline = time.monotonic() + 60
        while len([t for t in session.media.tracks() if t.frames > 0]) < tracks:
            assert sim.poll() is None, tail(log)
            assert time.monotonic() < deadline, f"only {len(session.media.tracks())} tracks arrived"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)  # settle: jitter buffers filled, decoders started
        frames0 = session.media.stats.frames_by_kind.get(kind, 0)
        cpu0, sim0, t0 = time.process_time(), cpu_seconds(sim.pid), time.monotonic()
        await asyncio.sleep(WINDOW_S)
        elapsed = time.monotonic() - t0
        cpu1, sim1 = time.process_time(), cpu_seconds(sim.pid)
        frames = session.media.stats.frames_by_kind.get(kind, 0) - frames0
        return Row(
            kind=kind,
            tracks=tracks,
            mode=mode,
            bridge_cpu=100 * (cpu1 - cpu0) / elapsed,
            sim_cpu=100 * (sim1 - sim0) / elapsed,
            fps_per_track=frames / elapsed / tracks,
        )
    finally:
        if bridge is not None:
            await bridge.aclose()
        stop(sim, deadline_s=10)


@pytest.mark.slow
async def test_media_relay_cost(pytestconfig: pytest.Config) -> None:
    use_loopback_only()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        workdir = Path(tmp)
        for kind, tracks in (("audio", 10), ("video", 2)):
            for mode in ("pass-through", "decode"):
                rows.append(await _measure(kind, tracks, mode, workdir))
                report(pytestconfig, _line(rows[-1]))
        for tracks in (25, 50, 100):
            row = await _measure("audio", tracks, "pass-through", workdir)
            rows.append(row)
            report(pytestconfig, _line(row))
            if not row.real_time:
                break
    report(pytestconfig, "\n".join(["", "media relay (bridge CPU in % of one core):", *map(_line, rows)]))
    assert all(row.fps_per_track > 0 for row in rows)


def _line(row: Row) -> str:
    return (
        f"  {row.kind:5} x{row.tracks:<3} {row.mode:12} bridge {row.bridge_cpu:5.1f}% "
        f"({row.per_track:4.2f}%/track)  sim {row.sim_cpu:5.1f}%  "
        f"{row.fps_per_track:5.1f} fps/track{'' if row.real_time else '  BEHIND'}"
        + ("  (the simulator's event loop is saturated)" if not row.real_time and row.sim_cpu > 90 else "")
    )
