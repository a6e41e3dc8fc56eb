"""Loopback-only ICE for the simulator and the tests.

aioice builds host candidates from ``aioice.ice.get_host_addresses``, which deliberately skips
``127.0.0.1``: left alone, every aiortc peer would bind UDP on each non-loopback interface and put
those addresses in its SDP. The simulator must only ever listen on 127.0.0.1, so
:func:`use_loopback_only` replaces that lookup (it is resolved as a module global at gather time, so
patching the module attribute is enough). Server-reflexive and relay candidates need ICE servers,
which the simulator never configures.

The patch is process-wide and idempotent; :func:`restore_host_addresses` undoes it.
"""

from __future__ import annotations

from collections.abc import Callable

import aioice.ice

LOOPBACK = "127.0.0.1"

# Holds the original lookup while the patch is active.
_saved: dict[str, Callable[[bool, bool], list[str]]] = {}


def _loopback_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return [LOOPBACK] if use_ipv4 else []


def use_loopback_only() -> None:
    """Make every aiortc/aioice peer in this process gather exactly one host candidate: 127.0.0.1."""
    if aioice.ice.get_host_addresses is _loopback_addresses:
        return
    _saved["get_host_addresses"] = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = _loopback_addresses


def restore_host_addresses() -> None:
    """Undo :func:`use_loopback_only` (no-op when it is not active)."""
    original = _saved.pop("get_host_addresses", None)
    if original is not None:
        aioice.ice.get_host_addresses = original  # type: ignore[assignment]


def loopback_only_active() -> bool:
    return aioice.ice.get_host_addresses is _loopback_addresses
