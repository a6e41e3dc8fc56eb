"""``livekit-bridge demo``: the simulator plays a scripted room and we print what LiveKit sends.

Nothing to install or start: the simulator runs in-process on a free loopback port. Until the bridge's
own connector lands, the observer here is a plain signaling client, one line per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import TextIO
from urllib.parse import urlencode

import websockets
from google.protobuf import json_format
from livekit.protocol import rtc

from bridge.signaling import codec
from bridge.sim.auth import mint_token
from bridge.sim.scenario import Scenario
from bridge.sim.server import SimConfig, SimServer

DEMO_KEY = "demo-key"
DEMO_SECRET = "demo-secret-that-is-long-enough-for-hs256"  # noqa: S105 - in-process demo only
LINE_CHARS = 150


def _summary(response: rtc.SignalResponse) -> tuple[str, str]:
    kind = response.WhichOneof("message") or "?"
    body = json_format.MessageToJson(response, indent=None)
    body = body.split(":", 1)[1].rstrip("}").strip() if ":" in body else body
    if kind in ("refresh_token",):
        body = '"<token redacted>"'
    if len(body) > LINE_CHARS:
        body = body[: LINE_CHARS - 1] + "…"
    return kind, body


async def run_demo(out: TextIO, *, scenario_file: Path | None = None) -> int:
    config = SimConfig(keys={DEMO_KEY: DEMO_SECRET})
    counts: Counter[str] = Counter()
    async with SimServer(config) as server:
        scenario = Scenario(server)
        path = scenario_file or Path(str(resources.files("bridge.sim") / "scenarios" / "demo.yaml"))
        now = time.time()
        claims = {"sub": "livekit-bridge", "video": {"roomJoin": True, "room": "demo", "hidden": True}}
        token = mint_token(claims, DEMO_KEY, DEMO_SECRET, ttl_s=600, now=now)
        query = urlencode({"access_token": token, "protocol": "17", "sdk": "python", "auto_subscribe": "0"})
        print(f"simulator on {server.url}; observer joins room 'demo' as a hidden participant", file=out)
        started = time.monotonic()
        async with websockets.connect(f"{server.url}/rtc?{query}") as ws:
            script = asyncio.create_task(scenario.run_file(path))

            async def observe() -> None:
                async for frame in ws:
                    kind, body = _summary(codec.decode_response(frame))
                    counts[kind] += 1
                    print(f"  +{time.monotonic() - started:6.3f}s  {kind:<18} {body}", file=out, flush=True)

            reader = asyncio.create_task(observe())
            try:
                await script
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
    total = sum(counts.values())
    kinds = ", ".join(f"{k}={n}" for k, n in sorted(counts.items()))
    print(f"demo done: {total} signaling messages ({kinds})", file=out)
    return 0 if total else 1
