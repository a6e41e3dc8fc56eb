"""Bridge settings pointed at a running simulator."""

from __future__ import annotations

from typing import Any

from bridge.config import Settings, load_settings
from bridge.sim.server import SimServer
from support.signal_client import API_KEY, API_SECRET


def bridge_environ(sim: SimServer, *rooms: str) -> dict[str, str]:
    """The ``BRIDGE_*`` variables for a bridge on ``sim`` with ``rooms`` static; add more before loading."""
    return {
        "BRIDGE_LIVEKIT__URL": sim.url,
        "BRIDGE_LIVEKIT__API_KEY": API_KEY,
        "BRIDGE_LIVEKIT__API_SECRET": API_SECRET,
        "BRIDGE_LIVEKIT__RECONNECT_BACKOFF_INITIAL_S": "0.05",
        "BRIDGE_LIVEKIT__RECONNECT_BACKOFF_MAX_S": "0.5",
        "BRIDGE_ROOMS__STATIC": "[" + ", ".join(rooms) + "]",
        "BRIDGE_HTTP__LISTEN": "127.0.0.1:0",  # health/metrics on any free loopback port
    }


def bridge_settings(sim: SimServer, *rooms: str, **livekit: Any) -> Settings:
    environ = bridge_environ(sim, *rooms)
    for key, value in livekit.items():
        environ[f"BRIDGE_LIVEKIT__{key.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    return load_settings(None, environ)
