"""Simulator process for ``test_events_throughput``: a SimServer and a stamped LoadGenerator, on stdin.

Run as ``python tests/benchmarks/events_sim.py --port P --rooms R --api-key K --api-secret S``. It binds
127.0.0.1 only (loopback ICE), prints ``READY <port>`` and then obeys one command per stdin line:

- ``run RATE SECONDS``: emit load events round-robin over the rooms at RATE per second for SECONDS (paced by
  the clock in 1 ms ticks, so a late tick catches up instead of drifting), then print
  ``DONE <emitted> <start_ns> <end_ns> <cpu_s>`` (wall-clock ns of the phase, this process's CPU seconds);
- ``quit`` (or end of input): stop the server and exit 0.

With ``--signal-only`` the user-data step is a second metadata update (for a client without WebRTC).
The metadata ``update`` and user-data events carry ``{"n": .., "t": <time.time_ns()>}``, the send time the
consumer turns into latency (``LoadGenerator(stamp=True)``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from bridge.media.tuning import apply_scaling_knobs
from bridge.sim.ice import use_loopback_only
from bridge.sim.load import LoadGenerator
from bridge.sim.server import SimConfig, SimServer

TICK_S = 0.001
MAX_PER_TICK_S = 0.02  # a tick that woke late emits at most 20 ms worth at once (then catches up)


async def _phase(load: LoadGenerator, n0: int, rate: float, seconds: float) -> int:
    """Emit ``rate * seconds`` events starting at global index ``n0``; returns how many were emitted."""
    total = int(rate * seconds)
    burst = max(1, int(rate * MAX_PER_TICK_S))
    rooms = load.rooms
    start = time.monotonic()
    done = 0
    while done < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        for _ in range(min(due - done, burst)):
            n = n0 + done
            load.emit(rooms[n % len(rooms)], n)
            done += 1
        await asyncio.sleep(TICK_S)
    return done


async def _main(args: argparse.Namespace) -> int:
    use_loopback_only()
    apply_scaling_knobs()
    config = SimConfig(
        keys={args.api_key: args.api_secret},
        host="127.0.0.1",
        port=args.port,
        join_timeout_s=120.0,
    )
    async with SimServer(config) as server:
        load = LoadGenerator(server, rooms=args.rooms, rate_per_s=1.0, stamp=True, data=not args.signal_only)
        print(f"READY {args.port}", flush=True)
        n = 0
        while True:
            line = (await asyncio.to_thread(sys.stdin.readline)).split()
            if not line or line[0] == "quit":
                return 0
            if line[0] == "run":
                rate, seconds = float(line[1]), float(line[2])
                t0, c0 = time.time_ns(), time.process_time()
                emitted = await _phase(load, n, rate, seconds)
                n += emitted
                print(f"DONE {emitted} {t0} {time.time_ns()} {time.process_time() - c0:.3f}", flush=True)
            else:
                print(f"ERROR unknown command {line[0]!r}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rooms", type=int, required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--api-secret", required=True)
    parser.add_argument("--signal-only", action="store_true", help="no data packets (a second update)")
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
