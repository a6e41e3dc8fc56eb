"""Composition root: settings in, the running service out, and the written shutdown order.

Start: configure logging, start the room supervisor, join the configured rooms.
Stop (SIGTERM/SIGINT), in this order:
  1. stop taking commands (nothing may reach a room that is leaving);
  2. leave every room with CLIENT_INITIATED within ``livekit.leave_deadline_s``;
  3. flush what the rooms produced to the buses;
  4. close the bus clients.
Steps 1, 3 and 4 come with the command and event pipelines; their place is kept here.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from bridge.config import Settings
from bridge.media.tuning import apply_scaling_knobs
from bridge.rooms.supervisor import RoomSupervisor

log = logging.getLogger(__name__)


async def run_service(settings: Settings, *, stop: asyncio.Event | None = None) -> int:
    """Run until ``stop`` is set (SIGTERM/SIGINT when not given) or every room has ended."""
    apply_scaling_knobs()  # before the first PC/TLS socket exists; idempotent
    stop = stop or _signal_event()
    supervisor = RoomSupervisor(settings.livekit)
    for room in settings.rooms.static:
        supervisor.join(room)
    log.info(
        "bridge started: %d rooms, identity=%s, livekit=%s",
        len(settings.rooms.static),
        settings.livekit.identity,
        settings.livekit.url,
    )
    stopping = asyncio.create_task(stop.wait())
    rooms_done = asyncio.create_task(supervisor.wait())
    await asyncio.wait({stopping, rooms_done}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    rooms_done.cancel()
    log.info(
        "bridge stopping: leaving %d rooms", sum(1 for s in supervisor.sessions.values() if s.ended is None)
    )
    await supervisor.aclose()
    log.info("bridge stopped")
    return 1 if supervisor.crashes else 0


def _signal_event() -> asyncio.Event:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event
