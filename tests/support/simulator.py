"""Start the room simulator for a test, on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from bridge.sim.scenario import Scenario
from bridge.sim.server import SimConfig, SimServer
from support.signal_client import API_KEY, API_SECRET


@asynccontextmanager
async def running_sim(**config: Any) -> AsyncIterator[tuple[SimServer, Scenario]]:
    server = SimServer(SimConfig(keys={API_KEY: API_SECRET}, **config))
    await server.start()
    try:
        yield server, Scenario(server)
    finally:
        await server.aclose()
