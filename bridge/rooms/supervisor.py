"""Many rooms in one process: one :class:`RoomSession` per owned room, each failing alone.

Each room runs in its own task; a crash in one room is logged with its traceback and counted, and
never cancels another. :meth:`RoomSupervisor.aclose` leaves every room with CLIENT_INITIATED within a
deadline, then cancels what is left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from bridge.config import EventsSettings, LiveKitSettings, MediaSettings
from bridge.events.cloudevent import EventSink
from bridge.rooms.session import RoomSession, SessionEventHandler
from bridge.signaling.protocol import Ended

log = logging.getLogger(__name__)

SessionFactory = Callable[[str], RoomSession]


class RoomSupervisor:
    """Owns the room tasks. ``join``/``leave`` change the set while it runs."""

    def __init__(
        self,
        settings: LiveKitSettings,
        *,
        on_event: SessionEventHandler | None = None,
        sink: EventSink | None = None,
        events: EventsSettings | None = None,
        media: MediaSettings | None = None,
    ) -> None:
        self._settings = settings
        self._media = media
        self._on_event = on_event
        self._sink = sink
        self._events = events
        self.sessions: dict[str, RoomSession] = {}
        self.outcomes: dict[str, Ended | None] = {}
        self.crashes = 0
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def join(self, room: str) -> RoomSession:
        """Start a session for ``room`` (no-op if one is running)."""
        running = self._tasks.get(room)
        if running is not None and not running.done():
            return self.sessions[room]
        session = RoomSession(
            settings=self._settings,
            room=room,
            on_event=self._on_event,
            sink=self._sink,
            events=self._events,
            media=self._media,
        )
        self.sessions[room] = session
        self._tasks[room] = asyncio.create_task(self._supervise(session), name=f"room:{room}")
        return session

    def report_gap(self, session_id: str, bus: str, dropped: int, first: int, last: int) -> None:
        """A bus lost ``dropped`` events of this session: the session publishes a ``gap`` event."""
        for session in self.sessions.values():
            if session.session_id == session_id:
                session.report_gap(bus, dropped, first, last)
                return

    def leave(self, room: str) -> None:
        session = self.sessions.get(room)
        if session is not None:
            session.leave()

    async def _supervise(self, session: RoomSession) -> None:
        try:
            self.outcomes[session.room] = await session.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # one room's failure must never touch another
            self.crashes += 1
            log.exception("room session crashed room=%s session=%s", session.room, session.session_id)

    async def wait(self) -> None:
        """Until every room task has finished."""
        while tasks := [t for t in self._tasks.values() if not t.done()]:
            await asyncio.wait(tasks)

    async def wait_rooms(self, rooms: set[str], timeout_s: float) -> None:
        """Until the sessions of ``rooms`` have finished, at most ``timeout_s``."""
        tasks = [t for room, t in self._tasks.items() if room in rooms and not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)

    async def aclose(self, deadline_s: float | None = None) -> None:
        """Leave every room, waiting at most ``deadline_s`` (default: the leave deadline + 1 s)."""
        deadline = self._settings.leave_deadline_s + 1.0 if deadline_s is None else deadline_s
        for session in self.sessions.values():
            session.leave()
        tasks = [t for t in self._tasks.values() if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=deadline)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%d rooms did not leave within %.1fs; cancelled", len(pending), deadline)
                await asyncio.gather(*pending, return_exceptions=True)
