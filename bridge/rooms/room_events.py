"""Publish one of the bridge's own events for a room, numbered with that room's other events.

Through the room's :class:`~bridge.rooms.session.RoomSession` when one is running (its ``sequence``
continues), else through a per-room pseudo-session: an :class:`~bridge.events.mapping.EventMapper` with a
session id of its own, so that events about a room with no session here (not owned, left, not joined yet)
still form a gap-free sequence. The command runner publishes ``command_result`` this way, the ownership
glue ``ownership_changed``; one :class:`RoomEvents` shared by both gives a room one pseudo-session.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Final

from google.protobuf.message import Message

from bridge.events.cloudevent import CloudEvent, EventSink, SessionContext, source_uri
from bridge.events.mapping import EventMapper
from bridge.rooms.session import RoomSession, new_session_id

__all__ = ["FALLBACK_ROOMS_MAX", "RoomEvents"]

FALLBACK_ROOMS_MAX: Final = 4096  # pseudo-sessions kept (least recently created dropped first)


class RoomEvents:
    """See the module docstring. ``sink`` None: events are still built (a caller may reply with them)."""

    def __init__(
        self, *, livekit_url: str, sink: EventSink | None, max_rooms: int = FALLBACK_ROOMS_MAX
    ) -> None:
        self._url = livekit_url
        self._sink = sink
        self._max_rooms = max_rooms
        self._fallback: collections.OrderedDict[str, EventMapper] = collections.OrderedDict()
        # Numbering and handing over are one step, so a blocked sink cannot reorder a pseudo-session.
        self._lock = asyncio.Lock()

    async def emit(
        self,
        room: str,
        name: str,
        message: Message,
        *,
        session: RoomSession | None,
        extensions: tuple[tuple[str, str], ...] = (),
        traceparent: str | None = None,
    ) -> CloudEvent | None:
        """Publish bridge event ``name`` about ``room``: in ``session`` if it has not ended, else in the
        room's pseudo-session. Returns the event (None when the type is filtered out)."""
        if session is not None and session.ended is None:
            return await session.emit_bridge_event(
                name, message, extensions=extensions, traceparent=traceparent
            )
        async with self._lock:
            event = self.fallback_mapper(room).bridge(
                name, message, wall=time.time(), extensions=extensions, traceparent=traceparent
            )
            if event is not None and self._sink is not None:
                await self._sink.emit(event)
        return event

    def fallback_mapper(self, room: str) -> EventMapper:
        """The room's pseudo-session (created on first use)."""
        mapper = self._fallback.get(room)
        if mapper is None:
            if len(self._fallback) >= self._max_rooms:
                self._fallback.popitem(last=False)
            ctx = SessionContext(source=source_uri(self._url, room), room=room, session=new_session_id())
            mapper = self._fallback[room] = EventMapper(ctx)
        return mapper
