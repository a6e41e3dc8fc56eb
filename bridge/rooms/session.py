"""One owned room: its signaling connection, its WebRTC peer, and its lifecycle.

A :class:`RoomSession` joins as a hidden participant and stays until LiveKit ends the session, the
bridge leaves, or another replica takes the identity. Lifecycle is logged once per open, resume and
close at INFO, never per message. Every ``SignalProtocol`` event is also handed to ``on_event``, in
the order LiveKit sent the messages (the event pipeline subscribes there).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from livekit.protocol import rtc

from bridge.config import LiveKitSettings
from bridge.media.peer import MediaPeer
from bridge.signaling.auth import mint_join_token
from bridge.signaling.connection import SignalConnection
from bridge.signaling.protocol import (
    ConnectionLost,
    Ended,
    Event,
    Joined,
    Received,
    Resumed,
    SessionState,
    SignalProtocol,
)

log = logging.getLogger(__name__)

SessionEventHandler = Callable[["RoomSession", Event], None]


def new_session_id() -> str:
    """The bridge's own id for one session of one room (CloudEvents ``lksession``)."""
    return "BS_" + secrets.token_hex(8)


class RoomSession:
    """See module docstring. Run it with :meth:`run`; stop it with :meth:`leave`."""

    def __init__(
        self,
        *,
        settings: LiveKitSettings,
        room: str,
        on_event: SessionEventHandler | None = None,
    ) -> None:
        self.room = room
        self.session_id = new_session_id()
        self.settings = settings
        self._on_event = on_event
        self.protocol = SignalProtocol(
            token="",
            backoff_initial_s=settings.reconnect_backoff_initial_s,
            backoff_max_s=settings.reconnect_backoff_max_s,
            ping_interval_s=settings.ping_interval_s,
            max_frame_bytes=settings.max_frame_bytes,
            random=secrets.SystemRandom().random,
        )
        self.connection = SignalConnection(
            url=settings.url,
            room=room,
            protocol=self.protocol,
            on_event=self._handle,
            mint_token=lambda: mint_join_token(settings, self.room),
        )
        self.media = MediaPeer(send=self._send_media, room=room)
        self.ended: Ended | None = None
        self.resumes = 0
        self.rejoins = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def state(self) -> SessionState:
        return self.protocol.state

    @property
    def participant_sid(self) -> str:
        return self.protocol.participant_sid

    async def run(self) -> Ended | None:
        """Run until the session ends; returns how it ended."""
        try:
            await self.connection.run()
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.media.aclose()
        return self.ended

    def leave(self) -> None:
        self.connection.leave(self.settings.leave_deadline_s)

    def send_request(self, request: rtc.SignalRequest) -> bool:
        return self.connection.send_request(request)

    # ---------------------------------------------------------- internals

    def _send_media(self, request: rtc.SignalRequest) -> None:
        self.connection.send_request(request)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("room task failed room=%s session=%s", self.room, self.session_id, exc_info=exc)

    async def _handle(self, event: Event) -> None:
        if isinstance(event, Received):
            kind = event.response.WhichOneof("message")
            # Negotiation runs beside the reader so a slow answer never stalls the room's events.
            if kind == "offer":
                self._spawn(self.media.handle_offer(event.response.offer))
            elif kind == "trickle":
                self._spawn(self.media.handle_trickle(event.response.trickle))
            elif kind == "room_moved":
                moved_from, self.room = self.room, self.protocol.room_name
                self.connection.room = self.room
                log.info(
                    "room session moved room=%s from=%s session=%s sid=%s",
                    self.room,
                    moved_from,
                    self.session_id,
                    self.participant_sid,
                )
        elif isinstance(event, Joined):
            await self._joined(event)
        elif isinstance(event, Resumed):
            self._resumed(event)
        elif isinstance(event, ConnectionLost):
            log.info(
                "signal lost, recovering room=%s session=%s: %s", self.room, self.session_id, event.reason
            )
        elif isinstance(event, Ended):
            self.ended = event
            level = logging.WARNING if event.ownership_lost else logging.INFO
            log.log(
                level,
                "room session ended room=%s session=%s reason=%s%s",
                self.room,
                self.session_id,
                event.reason,
                " (another session owns this identity now)" if event.ownership_lost else "",
            )
        if self._on_event is not None:
            self._on_event(self, event)

    async def _joined(self, event: Joined) -> None:
        join = event.join
        if event.rejoin:
            self.rejoins += 1
            await self.media.reset()
        self.media.set_ice_servers(join.ice_servers)
        log.info(
            "room session %s room=%s session=%s sid=%s server=%s",
            "rejoined" if event.rejoin else "started",
            self.room,
            self.session_id,
            join.participant.sid,
            join.server_info.version or join.server_version,
        )

    def _resumed(self, event: Resumed) -> None:
        self.resumes += 1
        if event.reconnect is not None and event.reconnect.ice_servers:
            self.media.set_ice_servers(event.reconnect.ice_servers)
        offer, answer = self.media.last_offer_answer()
        sync = rtc.SyncState()
        if offer is not None:
            sync.offer.CopyFrom(offer)
        if answer is not None:
            sync.answer.CopyFrom(answer)
        sync.subscription.subscribe = True  # auto_subscribe is off: we list what we subscribed (nothing yet)
        self.connection.send_request(rtc.SignalRequest(sync_state=sync))
        log.info(
            "room session resumed room=%s session=%s sid=%s", self.room, self.session_id, self.participant_sid
        )
