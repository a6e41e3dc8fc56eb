"""Simulator process for ``test_command_latency``: a SimServer that timestamps stamped metadata commands.

Run as ``python tests/benchmarks/commands_sim.py --port P --api-key K --api-secret S``. It binds
127.0.0.1 only (loopback ICE), auto-creates the rooms the bridge joins, prints ``READY <port>`` and then
obeys one command per stdin line:

- ``count``: print ``COUNT <n>``, how many stamped ``update_metadata`` requests arrived so far;
- ``dump PATH``: write every arrival to PATH as int64 triples ``(i, sent_ns, received_ns)`` and print
  ``DUMPED <n>``;
- ``quit`` (or end of input): stop the server and exit 0.

A stamped request's metadata is ``t=<time.monotonic_ns() at publish>;i=<command number>`` (CLOCK_MONOTONIC
is one clock for every process of a Linux host). The arrival time is taken when the session dispatches
the decoded request, before the simulator handles it. The hook wraps ``update_metadata`` in the session
dispatch table of THIS process only; the simulator's behaviour is unchanged.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import sys
import time
from pathlib import Path

from livekit.protocol import rtc

from bridge.media.tuning import apply_scaling_knobs
from bridge.sim import session
from bridge.sim.ice import use_loopback_only
from bridge.sim.server import SimConfig, SimServer


class Arrivals:
    """``(i, sent_ns, received_ns)`` of every stamped ``update_metadata`` request, flat."""

    def __init__(self) -> None:
        self.triples = array.array("q")

    def install(self) -> None:
        original = session._HANDLERS["update_metadata"]

        async def observed(client: session.ClientSession, req: rtc.UpdateParticipantMetadata) -> None:
            now = time.monotonic_ns()
            if req.metadata.startswith("t="):
                sent, _, n = req.metadata[2:].partition(";i=")
                self.triples.extend((int(n), int(sent), now))
            await original(client, req)

        session._HANDLERS["update_metadata"] = observed

    def __len__(self) -> int:
        return len(self.triples) // 3


async def _main(args: argparse.Namespace) -> int:
    use_loopback_only()
    apply_scaling_knobs()
    arrivals = Arrivals()
    arrivals.install()
    config = SimConfig(
        keys={args.api_key: args.api_secret}, host="127.0.0.1", port=args.port, join_timeout_s=120.0
    )
    async with SimServer(config):
        print(f"READY {args.port}", flush=True)
        while True:
            line = (await asyncio.to_thread(sys.stdin.readline)).split()
            if not line or line[0] == "quit":
                return 0
            if line[0] == "count":
                print(f"COUNT {len(arrivals)}", flush=True)
            elif line[0] == "dump":
                await asyncio.to_thread(Path(line[1]).write_bytes, arrivals.triples.tobytes())
                print(f"DUMPED {len(arrivals)}", flush=True)
            else:
                print(f"ERROR unknown command {line[0]!r}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--api-secret", required=True)
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
