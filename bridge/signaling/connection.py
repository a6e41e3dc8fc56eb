"""Asyncio glue around :class:`~bridge.signaling.protocol.SignalProtocol`: one WebSocket, one task.

:meth:`SignalConnection.run` owns the socket. It feeds the protocol frames, closes and the clock,
performs the protocol's actions (open/close a socket), writes its frames, and hands every event to
``on_event`` in order. All decisions (resume or rejoin, back off, give up) live in the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import urlencode

import websockets
from livekit.protocol import rtc
from websockets.asyncio.client import ClientConnection

from bridge import __version__
from bridge.errors import FrameError
from bridge.signaling.protocol import (
    CloseSocket,
    Ended,
    Event,
    OpenSocket,
    SessionState,
    SignalProtocol,
)

log = logging.getLogger(__name__)

PROTOCOL_VERSION: Final = 16
# Refusals that retrying cannot fix, and the setting that can.
_PERMANENT: Final[dict[int, str]] = {
    400: "livekit.identity and rooms.static (LiveKit rejected the join parameters)",
    401: "livekit.api_key and livekit.api_secret",
    403: "livekit.api_key and livekit.api_secret (the key lacks permission)",
    404: "rooms.static (the room does not exist and LiveKit will not create it), or livekit.url",
}

EventHandler = Callable[[Event], Awaitable[None] | None]


class SignalConnection:
    """Runs one room's signaling session until it ends (see module docstring)."""

    def __init__(
        self,
        *,
        url: str,
        room: str,
        protocol: SignalProtocol,
        on_event: EventHandler,
        mint_token: Callable[[], str],
        open_timeout_s: float = 10.0,
        auto_subscribe: bool = False,
        clock: Callable[[], float] = time.monotonic,  # the event loop's clock on Linux
    ) -> None:
        self.url = url.rstrip("/")
        self.room = room
        self.protocol = protocol
        self._on_event = on_event
        self._mint_token = mint_token
        self._open_timeout_s = open_timeout_s
        self._auto_subscribe = "1" if auto_subscribe else "0"
        self._clock = clock
        self._ws: ClientConnection | None = None
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._armed: float | None = None  # the deadline the timer loop sleeps towards
        self._last_failure: str | None = None
        self.frames_received = 0
        self.bad_frames = 0

    # ---------------------------------------------------------------- API

    def send_request(self, request: rtc.SignalRequest) -> bool:
        """Queue a SignalRequest (see ``SignalProtocol.send_request``) and wake the writer."""
        accepted = self.protocol.send_request(request)
        self._wake.set()
        return accepted

    def leave(self, deadline_s: float = 2.0) -> None:
        """Leave with CLIENT_INITIATED; :meth:`run` returns once LiveKit confirms or the deadline passes."""
        self.protocol.leave(self._clock(), deadline_s=deadline_s)
        self._wake.set()

    def drop(self) -> None:
        """Abort the socket as if the network failed (tests, and a dead connection)."""
        if self._ws is not None:
            self._ws.transport.abort()

    async def run(self) -> None:
        p = self.protocol
        loop = asyncio.get_running_loop()
        if p.state is SessionState.IDLE:
            p.start(self._clock())
        try:
            await self._flush()
            while p.state is not SessionState.CLOSED:
                # Sleep until the protocol's next deadline or a wake-up, without a task per wait.
                self._wake.clear()
                deadline = self._armed = p.next_deadline()
                timer = None
                if deadline is not None:
                    timer = loop.call_later(max(0.0, deadline - self._clock()), self._wake.set)
                await self._wake.wait()
                if timer is not None:
                    timer.cancel()
                deadline = p.next_deadline()
                if deadline is not None and self._clock() >= deadline:
                    p.handle_timeout(self._clock())
                await self._flush()
        finally:
            await self._close_socket()

    # ---------------------------------------------------------- internals

    async def _read(self, ws: ClientConnection) -> None:
        """The one reader of ``ws``: every frame straight into the protocol, in order."""
        p = self.protocol
        reason = "socket closed"
        try:
            async for frame in ws:
                self.frames_received += 1
                try:
                    p.receive_data(frame, self._clock())
                except FrameError as exc:
                    self.bad_frames += 1
                    log.warning("dropped a bad frame from LiveKit room=%s: %s", self.room, exc)
                    continue
                await self._flush()
                # Wake the timer loop when this frame ended the session or moved a deadline earlier.
                deadline = p.next_deadline()
                if p.state is SessionState.CLOSED or (
                    deadline is not None and (self._armed is None or deadline < self._armed)
                ):
                    self._wake.set()
        except websockets.ConnectionClosed as exc:
            reason = f"socket closed ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
        if self._ws is ws:  # not a socket we closed ourselves
            self._ws = None
            p.socket_closed(self._clock(), reason=reason)
            self._wake.set()

    async def _flush(self) -> None:
        """Do what the protocol asked, in order, until it asks for nothing more."""
        async with self._flushing:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        p = self.protocol
        while True:
            actions = p.actions()
            frames = p.data_to_send()
            events = p.events_received()
            if not (actions or frames or events):
                return
            ws = self._ws
            for frame in frames:
                if ws is None:
                    break
                try:
                    await ws.send(frame)
                except websockets.ConnectionClosed:
                    break  # the reader reports the close
            for event in events:
                result = self._on_event(event)
                if inspect.isawaitable(result):
                    await result
                if isinstance(event, Ended):
                    self._report_end(event)
            for action in actions:
                if isinstance(action, CloseSocket):
                    await self._close_socket()
                elif isinstance(action, OpenSocket):
                    await self._open(action)

    async def _open(self, action: OpenSocket) -> None:
        await self._close_socket()
        token = action.token if action.resume else self._mint_token()
        if not action.resume:
            self.protocol.token = token
        query = {
            "sdk": "python",
            "version": __version__,
            "protocol": str(PROTOCOL_VERSION),
            "auto_subscribe": self._auto_subscribe,
            "adaptive_stream": "0",
        }
        if action.resume:
            query.update(
                reconnect="1", sid=action.participant_sid, reconnect_reason=str(action.reconnect_reason)
            )
        # The token goes in a header, never the URL: URLs end up in proxy and server logs.
        headers = {"Authorization": f"Bearer {token}"}
        target = f"{self.url}/rtc"
        try:
            self._ws = await websockets.connect(
                f"{target}?{urlencode(query)}",
                additional_headers=headers,
                open_timeout=self._open_timeout_s,
                max_size=self.protocol.max_frame_bytes,
                ping_interval=None,  # liveness is the protocol's ping_req/any-message rule
                # Signal frames are small protobufs: per-message deflate costs CPU on both ends per frame
                # and saves a few bytes. Not offered, so LiveKit sends them as they are.
                compression=None,
                close_timeout=2,
                proxy=None,
            )
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            body = (exc.response.body or b"").decode(errors="replace").strip()[:200]
            setting = _PERMANENT.get(status)
            if setting is not None:
                reason = f"LiveKit refused room {self.room!r} at {target}: {status} {body}; check {setting}"
            else:
                reason = f"LiveKit answered {status} {body} at {target}"
            self.protocol.connect_failed(self._clock(), reason=reason, permanent=setting is not None)
            self._note_failure(reason)
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            reason = f"LiveKit unreachable at {target}: {exc}; check livekit.url"
            self.protocol.connect_failed(
                self._clock(), reason=reason, permanent=isinstance(exc, websockets.InvalidURI)
            )
            self._note_failure(reason)
        else:
            self._last_failure = None
            self.protocol.socket_opened(self._clock())
            self._reader = asyncio.create_task(self._read(self._ws), name=f"signal-reader:{self.room}")

    def _note_failure(self, reason: str) -> None:
        # Say it once per distinct problem, not once per retry.
        if reason != self._last_failure:
            log.warning("room=%s: %s (retrying with backoff)", self.room, reason)
            self._last_failure = reason

    def _report_end(self, event: Ended) -> None:
        if not event.retriable and self._last_failure is not None and event.reason == self._last_failure:
            log.error("room=%s: giving up: %s", self.room, event.reason)

    async def _close_socket(self) -> None:
        ws, self._ws = self._ws, None
        reader, self._reader = self._reader, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
