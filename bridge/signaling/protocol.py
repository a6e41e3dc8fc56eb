"""Sans-I/O core of one LiveKit signaling session: bytes and time in, events and requests out.

:class:`SignalProtocol` never touches a socket, a clock or a task. The I/O layer feeds it what
happened (``socket_opened``, ``receive_data``, ``socket_closed``, ``connect_failed``, ``handle_timeout``)
with the current monotonic time, then drains three outputs:

- ``events_received()``: what the session learned (:class:`Joined`, :class:`Received`, :class:`Ended`…);
- ``data_to_send()``: encoded ``SignalRequest`` frames for the socket;
- ``actions()``: what the I/O layer must do (:class:`OpenSocket`, :class:`CloseSocket`).

``next_deadline()`` says when ``handle_timeout`` is due (ping, ping timeout, backoff). All state
changes go through :data:`TRANSITIONS`; a trigger a state does not allow raises :class:`InvalidState`.

Protocol rules kept here (see LiveKit's client SDKs): liveness is reset by *any* received message,
never by sending; no message for ``ping_timeout`` means the signal is dead and we resume;
``leave`` RESUME resumes, RECONNECT rejoins, DISCONNECT ends (DUPLICATE_IDENTITY means another owner);
a refused resume falls back to a full rejoin; while resuming, requests are held back except the
transport ones; retries back off exponentially with jitter and a cap.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from livekit.protocol import models, rtc

from bridge.errors import FrameError, InvalidState
from bridge.signaling import codec

log = logging.getLogger(__name__)

# Requests that may go out while a resume is in progress (as LiveKit's SDKs do).
PASS_THROUGH: Final = frozenset({"sync_state", "trickle", "offer", "answer", "simulate", "leave"})
MAX_HELD_REQUESTS: Final = 256
RESUME_ATTEMPTS: Final = 3  # failed resumes before falling back to a full rejoin


class SessionState(enum.Enum):
    IDLE = "idle"  # created, not started
    CONNECTING = "connecting"  # socket for a full join: waiting for ``join``
    JOINED = "joined"  # in the room
    RESUMING = "resuming"  # socket for a resume: waiting for ``reconnect`` (or ``leave``)
    BACKOFF = "backoff"  # waiting before the next attempt
    LEAVING = "leaving"  # sent ``leave``, waiting for the confirmation or the socket to close
    CLOSED = "closed"  # final


class Trigger(enum.Enum):
    START = "start"
    JOIN = "join"  # ``join`` received
    RESUMED = "resumed"  # first message of a resume that is not ``leave``
    LOST = "lost"  # socket closed or ping timeout while joined
    LEAVE_RESUME = "leave_resume"
    LEAVE_RECONNECT = "leave_reconnect"
    LEAVE_DISCONNECT = "leave_disconnect"
    FAILED = "failed"  # an attempt failed and may be retried
    FATAL = "fatal"  # an attempt failed and must not be retried
    RETRY = "retry"  # backoff elapsed: full join
    RETRY_RESUME = "retry_resume"  # backoff elapsed: resume
    LEAVE = "leave"  # we leave
    SOCKET_CLOSED = "socket_closed"  # our leave is done: confirmed, socket gone, or deadline passed


S, T = SessionState, Trigger
TRANSITIONS: Final[dict[tuple[SessionState, Trigger], SessionState]] = {
    (S.IDLE, T.START): S.CONNECTING,
    (S.IDLE, T.LEAVE): S.CLOSED,
    (S.CONNECTING, T.JOIN): S.JOINED,
    (S.CONNECTING, T.FAILED): S.BACKOFF,
    (S.CONNECTING, T.FATAL): S.CLOSED,
    (S.CONNECTING, T.LEAVE_RECONNECT): S.BACKOFF,
    (S.CONNECTING, T.LEAVE_RESUME): S.BACKOFF,
    (S.CONNECTING, T.LEAVE_DISCONNECT): S.CLOSED,
    (S.CONNECTING, T.LEAVE): S.CLOSED,
    (S.JOINED, T.LOST): S.RESUMING,
    (S.JOINED, T.LEAVE_RESUME): S.RESUMING,
    (S.JOINED, T.LEAVE_RECONNECT): S.CONNECTING,
    (S.JOINED, T.LEAVE_DISCONNECT): S.CLOSED,
    (S.JOINED, T.LEAVE): S.LEAVING,
    (S.RESUMING, T.RESUMED): S.JOINED,
    (S.RESUMING, T.FAILED): S.BACKOFF,
    (S.RESUMING, T.FATAL): S.CLOSED,
    (S.RESUMING, T.LEAVE_RECONNECT): S.CONNECTING,
    (S.RESUMING, T.LEAVE_RESUME): S.BACKOFF,
    (S.RESUMING, T.LEAVE_DISCONNECT): S.CLOSED,
    (S.RESUMING, T.LEAVE): S.CLOSED,
    (S.BACKOFF, T.RETRY): S.CONNECTING,
    (S.BACKOFF, T.RETRY_RESUME): S.RESUMING,
    (S.BACKOFF, T.LEAVE): S.CLOSED,
    (S.LEAVING, T.SOCKET_CLOSED): S.CLOSED,
    (S.LEAVING, T.LEAVE): S.LEAVING,
}
del S, T


# ------------------------------------------------------------------ outputs


@dataclass(frozen=True, slots=True)
class OpenSocket:
    """Open the signaling WebSocket; ``resume`` adds ``reconnect=1&sid=…&reconnect_reason=…``."""

    token: str
    resume: bool
    participant_sid: str = ""
    reconnect_reason: int = 0


@dataclass(frozen=True, slots=True)
class CloseSocket:
    """Close the current socket (it is dead, or we are done with it)."""


Action = OpenSocket | CloseSocket


@dataclass(frozen=True, slots=True)
class Joined:
    """A full join succeeded (first join, a rejoin, or a room move)."""

    join: rtc.JoinResponse
    rejoin: bool


@dataclass(frozen=True, slots=True)
class Resumed:
    """A resume succeeded; the participant and its PeerConnections are kept."""

    reconnect: rtc.ReconnectResponse | None


@dataclass(frozen=True, slots=True)
class Received:
    """A ``SignalResponse`` from the server, in the order it arrived (every one, for the bus)."""

    response: rtc.SignalResponse
    frame: codec.Frame  # as the server sent it: the event pipeline keeps these bytes


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """The signal went away (socket error or ping timeout); a resume follows."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ended:
    """The session is over for good. ``ownership_lost``: another session took our identity."""

    reason: str
    ownership_lost: bool = False
    retriable: bool = False


Event = Joined | Resumed | Received | ConnectionLost | Ended


@dataclass
class _Timers:
    next_ping: float | None = None
    liveness_deadline: float | None = None
    retry_at: float | None = None


@dataclass
class SignalProtocol:
    """The session state machine (see module docstring). Time is always a parameter."""

    token: str
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    ping_interval_s: float | None = None  # None: use the server's JoinResponse value
    max_frame_bytes: int = codec.MAX_FRAME_BYTES
    random: Callable[[], float] = field(default=lambda: 1.0)  # jitter source in [0, 1)

    state: SessionState = SessionState.IDLE
    participant_sid: str = ""
    room_name: str = ""
    ping_timeout_s: float = 15.0
    rtt_ms: int = 0
    attempts: int = 0
    _ever_joined: bool = False
    _resume_next: bool = False
    _events: list[Event] = field(default_factory=list)
    _out: list[codec.Frame] = field(default_factory=list)
    _actions: list[Action] = field(default_factory=list)
    _held: list[rtc.SignalRequest] = field(default_factory=list)
    _timers: _Timers = field(default_factory=_Timers)
    _server_ping_interval_s: float = 5.0

    # ------------------------------------------------------------- outputs

    def events_received(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[codec.Frame]:
        out, self._out = self._out, []
        return out

    def actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def next_deadline(self) -> float | None:
        # Asked after every frame: no temporary lists.
        t = self._timers
        soonest = t.next_ping
        for d in (t.liveness_deadline, t.retry_at):
            if d is not None and (soonest is None or d < soonest):
                soonest = d
        return soonest

    # -------------------------------------------------------------- inputs

    def start(self, now: float) -> None:
        self._go(Trigger.START)
        self._open(resume=False)

    def socket_opened(self, now: float) -> None:
        """The upgrade succeeded; the first server message is due within the ping timeout."""
        self._require(SessionState.CONNECTING, SessionState.RESUMING)
        self._timers.liveness_deadline = now + self.ping_timeout_s

    def receive_data(self, frame: codec.Frame, now: float) -> None:
        self._require(
            SessionState.CONNECTING, SessionState.JOINED, SessionState.RESUMING, SessionState.LEAVING
        )
        response = codec.decode_response(frame, max_bytes=self.max_frame_bytes)
        kind = response.WhichOneof("message")
        if kind is None:
            raise FrameError("frame carries no SignalResponse message")
        # Any message proves the signal alive: reset the liveness deadline (never on sending).
        self._timers.liveness_deadline = now + self.ping_timeout_s
        self._events.append(Received(response, frame))
        if self.state is SessionState.RESUMING and kind not in ("reconnect", "leave"):
            self._resumed(None, now)  # LiveKit's SDKs accept any first message as "resumed"
        handler = _DISPATCH.get(kind)
        if handler is not None:
            handler(self, response, now)

    def socket_closed(self, now: float, *, reason: str = "socket closed") -> None:
        """The current socket closed, cleanly or not. Not for a socket closed on our CloseSocket."""
        if self.state is SessionState.LEAVING:
            self._left()
        elif self.state is SessionState.JOINED:
            self._lost(reason, now)
        elif self.state in (SessionState.CONNECTING, SessionState.RESUMING):
            self._failed(reason, now)

    def connect_failed(self, now: float, *, reason: str, permanent: bool) -> None:
        """Opening the socket failed: ``permanent`` for refusals retrying cannot fix (401, 404)."""
        self._require(SessionState.CONNECTING, SessionState.RESUMING)
        if permanent:
            self._go(Trigger.FATAL)
            self._stop_timers()
            self._events.append(Ended(reason, retriable=False))
        else:
            self._failed(reason, now)

    def handle_timeout(self, now: float) -> None:
        t = self._timers
        if t.retry_at is not None and now >= t.retry_at:
            t.retry_at = None
            self._go(Trigger.RETRY_RESUME if self._resume_next else Trigger.RETRY)
            self._open(resume=self._resume_next)
            return
        if t.liveness_deadline is not None and now >= t.liveness_deadline:
            t.liveness_deadline = None
            if self.state is SessionState.LEAVING:
                self._left()
            elif self.state is SessionState.JOINED:
                self._lost("ping timeout", now)
            elif self.state in (SessionState.CONNECTING, SessionState.RESUMING):
                self._actions.append(CloseSocket())
                self._failed("no answer from server", now)
            return
        if t.next_ping is not None and now >= t.next_ping and self.state is SessionState.JOINED:
            self._queue(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=int(now * 1000), rtt=self.rtt_ms)))
            t.next_ping = self._next_ping(now)

    def send_request(self, request: rtc.SignalRequest) -> bool:
        """Send now, or hold it until a resume completes; False when it cannot be sent at all."""
        kind = request.WhichOneof("message")
        if self.state is SessionState.JOINED or (
            self.state is SessionState.RESUMING and kind in PASS_THROUGH
        ):
            self._queue(request)
            return True
        if (
            self.state in (SessionState.RESUMING, SessionState.BACKOFF)
            and len(self._held) < MAX_HELD_REQUESTS
        ):
            self._held.append(request)
            return True
        return False

    def leave(self, now: float, *, deadline_s: float = 2.0) -> None:
        """Leave the room with CLIENT_INITIATED (from any state).

        When joined, the ``leave`` request goes out and the session stays LEAVING (still passing on
        what arrives) until the server confirms, the socket closes, or ``deadline_s`` passes.
        """
        joined = self.state is SessionState.JOINED
        if self.state in (SessionState.LEAVING, SessionState.CLOSED):
            return  # idempotent: already leaving, or over
        self._go(Trigger.LEAVE)
        if joined:
            self._queue(rtc.SignalRequest(leave=rtc.LeaveRequest(reason=models.CLIENT_INITIATED)))
            self._timers = _Timers(liveness_deadline=now + deadline_s)
        else:  # from any other state LEAVE goes straight to CLOSED
            self._actions.append(CloseSocket())
            self._stop_timers()
            self._events.append(Ended("client initiated"))

    # ---------------------------------------------------------- internals

    def _go(self, trigger: Trigger) -> None:
        target = TRANSITIONS.get((self.state, trigger))
        if target is None:
            raise InvalidState(f"{trigger.value} is not allowed in state {self.state.value}")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("= %s -(%s)-> %s", self.state.value, trigger.value, target.value)
        self.state = target

    def _require(self, *states: SessionState) -> None:
        if self.state not in states:
            raise InvalidState(f"not allowed in state {self.state.value}")

    def _queue(self, request: rtc.SignalRequest) -> None:
        self._out.append(codec.encode(request))

    def _open(self, *, resume: bool) -> None:
        if resume:
            self._actions.append(
                OpenSocket(self.token, True, self.participant_sid, models.RR_SIGNAL_DISCONNECTED)
            )
        else:
            self._actions.append(OpenSocket(self.token, False))

    def _next_ping(self, now: float) -> float:
        # On a whole-second grid: a thousand rooms then wake the loop together, not a thousand times.
        return float(math.ceil(now + (self.ping_interval_s or self._server_ping_interval_s)))

    def _stop_timers(self) -> None:
        self._timers = _Timers()

    def _alive(self, now: float) -> None:
        self.attempts = 0
        self._timers.next_ping = self._next_ping(now)
        self._timers.liveness_deadline = now + self.ping_timeout_s
        self._timers.retry_at = None

    def _lost(self, reason: str, now: float) -> None:
        self._go(Trigger.LOST)
        self._actions.append(CloseSocket())
        self._events.append(ConnectionLost(reason))
        self._timers.next_ping = None
        self._resume_next = True
        self._open(resume=True)
        self._timers.liveness_deadline = None

    def _failed(self, reason: str, now: float) -> None:
        resuming = self.state is SessionState.RESUMING
        self._go(Trigger.FAILED)
        self.attempts += 1
        self._resume_next = resuming and self._ever_joined and self.attempts < RESUME_ATTEMPTS
        delay = self._backoff()
        self._timers = _Timers(retry_at=now + delay)
        log.debug("attempt %d failed (%s); retry in %.2fs", self.attempts, reason, delay)

    def _backoff(self) -> float:
        delay: float = min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** max(0, self.attempts - 1))
        return delay * (0.5 + 0.5 * self.random())  # jitter: a LiveKit restart must not synchronise rooms

    def _resumed(self, reconnect: rtc.ReconnectResponse | None, now: float) -> None:
        self._go(Trigger.RESUMED)
        self._alive(now)
        self._events.append(Resumed(reconnect))
        held, self._held = self._held, []
        for request in held:
            self._queue(request)

    # ----------------------------------------------------- message handlers

    def _on_join(self, response: rtc.SignalResponse, now: float) -> None:
        join = response.join
        if self.state is not SessionState.CONNECTING:
            raise FrameError(f"unexpected join in state {self.state.value}")
        self._go(Trigger.JOIN)
        self.participant_sid = join.participant.sid
        self.room_name = join.room.name
        if join.ping_timeout > 0:
            self.ping_timeout_s = float(join.ping_timeout)
        if join.ping_interval > 0:
            self._server_ping_interval_s = float(join.ping_interval)
        self._alive(now)
        self._events.append(Joined(join, rejoin=self._ever_joined))
        self._ever_joined = True
        self._resume_next = False
        held, self._held = self._held, []
        for request in held:
            self._queue(request)

    def _on_reconnect(self, response: rtc.SignalResponse, now: float) -> None:
        if self.state is SessionState.RESUMING:
            self._resumed(response.reconnect, now)

    def _left(self) -> None:
        self._go(Trigger.SOCKET_CLOSED)
        self._stop_timers()
        self._actions.append(CloseSocket())
        self._events.append(Ended("CLIENT_INITIATED"))

    def _on_leave(self, response: rtc.SignalResponse, now: float) -> None:
        leave = response.leave
        reason = models.DisconnectReason.Name(leave.reason)
        if self.state is SessionState.LEAVING:  # the server confirms our own leave
            self._left()
            return
        trigger = {
            rtc.LeaveRequest.RESUME: Trigger.LEAVE_RESUME,
            rtc.LeaveRequest.RECONNECT: Trigger.LEAVE_RECONNECT,
        }.get(leave.action, Trigger.LEAVE_DISCONNECT)
        self._go(trigger)
        self._actions.append(CloseSocket())
        if self.state is SessionState.CLOSED:
            self._stop_timers()
            self._events.append(Ended(reason, ownership_lost=leave.reason == models.DUPLICATE_IDENTITY))
        elif self.state is SessionState.RESUMING:
            self._events.append(ConnectionLost(f"server asked us to resume ({reason})"))
            self._timers = _Timers()
            self._open(resume=True)
        elif self.state is SessionState.CONNECTING:
            self._events.append(ConnectionLost(f"server asked for a full reconnect ({reason})"))
            self._timers = _Timers()
            self._open(resume=False)
        else:  # BACKOFF: the attempt itself was refused
            self._resume_next = trigger is Trigger.LEAVE_RESUME and self._ever_joined
            self.attempts += 1
            self._timers = _Timers(retry_at=now + self._backoff())

    def _on_refresh_token(self, response: rtc.SignalResponse, now: float) -> None:
        self.token = response.refresh_token

    def _on_room_moved(self, response: rtc.SignalResponse, now: float) -> None:
        moved = response.room_moved
        if moved.token:
            self.token = moved.token
        self.participant_sid = moved.participant.sid or self.participant_sid
        self.room_name = moved.room.name or self.room_name

    def _on_pong_resp(self, response: rtc.SignalResponse, now: float) -> None:
        sent = response.pong_resp.last_ping_timestamp
        if sent:
            self.rtt_ms = max(0, int(now * 1000) - sent)


Handler = Callable[[SignalProtocol, rtc.SignalResponse, float], None]

# Responses the session itself acts on; every other variant is only passed on as Received.
_DISPATCH: Final[dict[str, Handler]] = {
    "join": SignalProtocol._on_join,
    "reconnect": SignalProtocol._on_reconnect,
    "leave": SignalProtocol._on_leave,
    "refresh_token": SignalProtocol._on_refresh_token,
    "room_moved": SignalProtocol._on_room_moved,
    "pong_resp": SignalProtocol._on_pong_resp,
}
