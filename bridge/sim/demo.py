"""Moved: ``livekit-bridge demo`` is :mod:`bridge.demo` now (simulator + NATS + the real bridge).

Kept so ``from bridge.sim.demo import run_demo`` goes on working.
"""

from __future__ import annotations

from bridge.demo import run_demo

__all__ = ["run_demo"]
