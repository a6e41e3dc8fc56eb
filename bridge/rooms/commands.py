"""Apply commands to the rooms and answer each with exactly one ``command_result`` event.

The :class:`CommandRunner` is the handler every :class:`~bridge.bus.command_source.CommandSource` calls.
Per delivery, in this order:

1. validate (:mod:`bridge.commands.validate`): malformed input is dead-lettered with its code and never
   gets a result (it may not even have an id); a well-formed but disallowed command is ``rejected``;
2. deduplicate by command id within ``commands.dedup_window_s``: a redelivery is not applied again
   (a request is answered with the first delivery's result);
3. queue on the room's *lane*: one task per room with work, so a room's commands are applied in the
   order they arrived while rooms never wait for each other;
4. apply: a signal command is sent on the room's signaling session; when LiveKit answers such requests
   (``request_response``, ``track_published``, data-track and blob responses) the result waits for the
   answer, off the lane, up to ``commands.response_timeout_s``. Bridge-level commands go through the
   server API (or the supervisor, for ``join_room`` / ``leave_room``; ``send_data`` goes on the bridge's own
   data channel unless ``commands.send_data_via`` says ``server_api``, falling back to the server API
   when that channel cannot be set up; ``record_track`` / ``stop_recording`` go to the room's recorder);
5. publish the result in the room's session (so it is numbered with the room's other events), reply
   to a request, settle the delivery.

Rejection codes: ``not_allowed``, ``room_not_owned``. Failure codes: ``timeout``, ``unavailable`` (the
room's session is not connected), ``unsupported``, ``interrupted`` (a redelivery after a crash that the
crashed process had started: never applied twice), LiveKit's ``RequestResponse.Reason`` in lower case
(``not_found``, ``not_allowed``, ...), or the server API's error code.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from google.protobuf.message import Message
from livekit.protocol import rtc

from bridge._proto import commands_pb2, events_pb2
from bridge.bus.bindings import nats_structured
from bridge.bus.command_source import Delivery
from bridge.bus.outbox import LatencyHistogram
from bridge.commands.dedup import DedupWindow
from bridge.commands.model import Command
from bridge.commands.translate import CorrelationKey, request_key, response_key, to_signal_request
from bridge.commands.validate import CommandRejected, validate
from bridge.config import CommandsSettings, LiveKitSettings
from bridge.errors import BridgeError, BusError, InvalidCommand, MediaError
from bridge.events.cloudevent import CloudEvent, EventSink
from bridge.rooms.room_events import RoomEvents
from bridge.rooms.session import RoomSession
from bridge.rooms.supervisor import RoomSupervisor
from bridge.signaling.protocol import Ended, Event, Joined, Received, Resumed, SessionState
from bridge.tasks import OwnedTasks

log = logging.getLogger(__name__)

Status = events_pb2.CommandResult.Status
APPLIED: Final = Status.STATUS_APPLIED
REJECTED: Final = Status.STATUS_REJECTED
FAILED: Final = Status.STATUS_FAILED

ROOM_NOT_OWNED: Final = "room_not_owned"
TIMEOUT: Final = "timeout"
UNAVAILABLE: Final = "unavailable"
UNSUPPORTED: Final = "unsupported"
INTERRUPTED: Final = "interrupted"

CANDIDATE_ADDED: Final = "room added as a candidate; the replica that claims its lease joins it"
NOT_CONNECTED: Final = "the room's signaling session is not connected"
MEDIA_COMMANDS: Final = frozenset(  # applied by the room session
    {"record_track", "stop_recording", "forward_track", "stop_forward", "publish_track", "unpublish_track"}
)


class ServerApiPort(Protocol):
    """LiveKit's server API as the runner needs it (``bridge.rooms.server_api.ServerApi``)."""

    async def mute_track(self, room: str, msg: commands_pb2.MuteTrack) -> None: ...
    async def remove_participant(self, room: str, msg: commands_pb2.RemoveParticipant) -> None: ...
    async def update_participant(self, room: str, msg: commands_pb2.UpdateParticipant) -> None: ...
    async def update_room_metadata(self, room: str, msg: commands_pb2.UpdateRoomMetadata) -> None: ...
    async def send_data(self, room: str, msg: commands_pb2.SendData) -> None: ...
    async def perform_rpc(self, room: str, msg: commands_pb2.PerformRpc) -> str: ...


def _result(  # noqa: PLR0917 (a record constructor: positional order is the message's field order)
    command_id: str, command_type: str, status: int, code: str = "", message: str = "", response: bytes = b""
) -> events_pb2.CommandResult:
    return events_pb2.CommandResult(
        command_id=command_id,
        command_type=command_type,
        status=status,  # type: ignore[arg-type]
        code=code,
        message=message,
        response=response,
    )


@dataclass(slots=True)
class _Work:
    command: Command
    delivery: Delivery


@dataclass(slots=True)
class RunnerStats:
    received: int = 0
    applied: int = 0
    rejected: int = 0
    failed: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    dropped_stale: int = 0  # dropped unanswered: the partition moved, the new owner answers
    send_data_fallbacks: int = 0  # bridge.send_data sent through the server API: no data channel
    apply_latency: LatencyHistogram = field(default_factory=LatencyHistogram)  # received -> on the wire


# SignalResponse variants that confirm a request by themselves, and the correlation key they carry
# (the same key bridge.commands.translate.request_key gives the request).
def _typed_key(response: rtc.SignalResponse, kind: str) -> CorrelationKey | None:
    if kind == "track_published":
        return ("add_track", response.track_published.cid)
    if kind == "publish_data_track_response":
        return ("publish_data_track", response.publish_data_track_response.info.pub_handle)
    if kind == "unpublish_data_track_response":
        return ("unpublish_data_track", response.unpublish_data_track_response.info.pub_handle)
    if kind == "store_data_blob_response":
        return ("request_id", response.store_data_blob_response.request_id)
    if kind == "get_data_blob_response":
        return ("request_id", response.get_data_blob_response.request_id)
    return None


class CommandRunner:
    """See the module docstring. ``handle`` is the sources' handler; ``on_session_event`` must receive
    every room session event (the supervisor's ``on_event``)."""

    def __init__(
        self,
        *,
        commands: CommandsSettings,
        livekit: LiveKitSettings,
        supervisor: RoomSupervisor,
        sink: EventSink | None,
        server_api: ServerApiPort | None = None,
        owns: Callable[[str], bool] | None = None,
        consider: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        room_events: RoomEvents | None = None,
        settled: Callable[[CloudEvent], asyncio.Future[Any]] | None = None,
    ) -> None:
        self._settings = commands
        # Done once a result event is on every bus (or given up): only then is its delivery settled, so
        # a crash before that redelivers the command instead of losing its result (EventFanout.settled).
        self._settled = settled
        # command id -> done when its first delivery is settled (its result on the buses), for duplicates
        # that come meanwhile: they are settled after it, never before.
        self._settling: dict[str, asyncio.Future[Any]] = {}
        self._livekit = livekit
        self._allowed = commands.allowed_set()
        self._supervisor = supervisor
        self._server_api = server_api
        # Ownership (several replicas): checked again right before a command is applied, since the
        # assignment may have changed while it waited in its lane.
        self.owns: Callable[[str], bool] = owns or (lambda _room: True)
        # join_room makes its room an ownership candidate first (``Ownership.consider``). With
        # ``joins_follow_claims`` (nats leases) a candidate not owned yet is claimed by some replica at
        # its next lease tick, which then joins it: join_room answers ``applied`` without joining here.
        self.consider: Callable[[str], bool] | None = consider
        self.joins_follow_claims = False
        self._clock = clock
        self._dedup: DedupWindow[events_pb2.CommandResult] = DedupWindow(
            window_s=commands.dedup_window_s, max_ids=commands.dedup_max_ids
        )
        self._replies: dict[str, bytes] = {}  # command id -> reply of a finished command (bounded below)
        self._duplicates_waiting: dict[str, list[Delivery]] = {}
        self._lanes: dict[str, collections.deque[_Work]] = {}
        self._answers: dict[tuple[str, CorrelationKey], collections.deque[asyncio.Future[rtc.SignalResponse]]]
        self._answers = {}
        self._connected: dict[str, list[asyncio.Future[bool]]] = {}  # session id -> waiters
        # Results go out in the room's session, or in the room's pseudo-session when it has none
        # (shared with the ownership events when the bridge passes one in).
        self._room_events = room_events or RoomEvents(livekit_url=livekit.url, sink=sink)
        self._tasks = OwnedTasks(log, "command runner")
        self.stats = RunnerStats()
        self._closing = False
        self._pending = 0  # first deliveries not yet finished
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ intake

    async def handle(self, delivery: Delivery) -> None:
        """Validate, deduplicate and queue one delivery; never raises for bad input."""
        self.stats.received += 1
        try:
            raw = delivery.parse()
            command = validate(raw, allowed=self._allowed, max_bytes=self._settings.max_bytes)
        except CommandRejected as exc:
            if not self._first_delivery(exc.command_id, delivery):
                return
            result = _result(exc.command_id, exc.command_type, REJECTED, exc.code, exc.message)
            session = self._supervisor.sessions.get(exc.room)
            await self._finish(
                command_id=exc.command_id,
                room=exc.room,
                traceparent=None,
                result=result,
                delivery=delivery,
                session=session,
            )
            return
        except InvalidCommand as exc:
            await self._dead_letter(delivery, exc.code, exc.message)
            return
        if not self._first_delivery(command.id, delivery):
            return
        if delivery.interrupted:
            why = "the bridge stopped while applying it; it may or may not have taken effect"
            await self._finish_command(_Work(command, delivery), FAILED, INTERRUPTED, why)
            return
        lane = self._lanes.get(command.room)
        if lane is None:
            lane = self._lanes[command.room] = collections.deque()
            lane.append(_Work(command, delivery))
            self._tasks.spawn(self._run_lane(command.room, lane), name=f"commands:{command.room}")
        else:
            lane.append(_Work(command, delivery))

    def _first_delivery(self, command_id: str, delivery: Delivery) -> bool:
        """False for a duplicate, which is answered (now, or when the first delivery finishes)."""
        now = self._clock()
        seen = self._dedup.check(command_id, now)
        if seen is None:
            self._dedup.begin(command_id, now)
            self._pending += 1
            self._idle.clear()
            return True
        self.stats.duplicates += 1
        if seen.in_flight:
            self._duplicates_waiting.setdefault(command_id, []).append(delivery)
        else:
            self._tasks.spawn(self._answer_duplicate(command_id, delivery))
        return False

    async def _answer_duplicate(self, command_id: str, delivery: Delivery) -> None:
        reply = self._replies.get(command_id)
        if reply is not None:
            await delivery.reply(reply)
        settling = self._settling.get(command_id)
        if settling is not None and delivery.redelivers:
            await asyncio.shield(settling)  # its offset must not pass the original's result
        delivery.settle()

    async def _dead_letter(self, delivery: Delivery, code: str, message: str) -> None:
        try:
            await delivery.dead_letter(code, message)
        except BusError as exc:  # only when closing: the message stays unsettled and is redelivered
            log.warning("dead letter not stored (%s); the command will be redelivered", exc)
            return
        self.stats.dead_lettered += 1
        # A request gets an answer even though no command_result exists for input this broken.
        await delivery.reply(f'{{"error":{{"code":"{code}","message":{json.dumps(message)}}}}}'.encode())
        delivery.settle()

    def remember(self, command_id: str, result: events_pb2.CommandResult) -> None:
        """A result published before this process started (recovered from the bus): never apply again."""
        self._dedup.finish(command_id, result, self._clock())

    # ------------------------------------------------------------------ lanes

    async def _run_lane(self, room: str, lane: collections.deque[_Work]) -> None:
        try:
            while lane:
                work = lane[0]
                if work.delivery.stale:
                    # Its partition moved while it waited: whoever owns it now gets it again and answers.
                    self._drop(work.command.id, work.delivery)
                    lane.popleft()
                    continue
                try:
                    await self._apply(work.command, work.delivery)
                except Exception as exc:  # one command's bug must not stop its room's lane
                    log.exception("command %s failed unexpectedly room=%s", work.command.type, room)
                    await self._finish_command(work, FAILED, "internal", type(exc).__name__)
                lane.popleft()
        finally:
            if self._lanes.get(room) is lane:
                del self._lanes[room]

    def _drop(self, command_id: str, delivery: Delivery) -> None:
        """Let go of a delivery without a result: forget its id, settle it, release waiting duplicates."""
        self.stats.dropped_stale += 1
        self._dedup.forget(command_id)
        delivery.settle()
        for duplicate in self._duplicates_waiting.pop(command_id, ()):
            duplicate.settle()
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()

    async def _apply(self, cmd: Command, delivery: Delivery) -> None:
        work = _Work(cmd, delivery)
        if cmd.kind == "bridge":
            await self._apply_bridge(work)
            return
        session = await self._owned_or_reject(work)
        if session is None:
            return
        if not await self._wait_connected(session):
            await self._finish_command(
                work, FAILED, UNAVAILABLE, "the room's signaling session is not connected"
            )
            return
        request = to_signal_request(cmd, session.request_ids)
        key = request_key(request)
        answer = self._expect(session, key) if key is not None else None
        if not session.send_request(request):
            if answer is not None:
                answer.cancel()
            await self._finish_command(
                work, FAILED, UNAVAILABLE, "the room's signaling session is not connected"
            )
            return
        self.stats.apply_latency.record(self._clock() - delivery.received_at)
        if answer is None:
            await self._finish_command(work, APPLIED)
        else:
            # LiveKit's answer is awaited off the lane: the room's next command need not wait for it.
            self._tasks.spawn(self._await_answer(work, session, answer))

    async def _owned_or_reject(self, work: _Work) -> RoomSession | None:
        """The room's session, or None after answering ``rejected/room_not_owned``."""
        session = self._owned(work.command.room)
        if session is None:
            await self._finish_command(work, REJECTED, ROOM_NOT_OWNED, _not_served(work.command.room))
        return session

    def _owned(self, room: str) -> RoomSession | None:
        if not self.owns(room):
            return None
        session = self._supervisor.sessions.get(room)
        if session is None or session.ended is not None:
            return None
        return session

    async def _wait_connected(self, session: RoomSession) -> bool:
        if session.state is SessionState.JOINED:
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._connected.setdefault(session.session_id, []).append(waiter)
        try:
            return await asyncio.wait_for(waiter, self._settings.response_timeout_s)
        except TimeoutError:
            return False

    def _expect(self, session: RoomSession, key: CorrelationKey) -> asyncio.Future[rtc.SignalResponse]:
        fut: asyncio.Future[rtc.SignalResponse] = asyncio.get_running_loop().create_future()
        self._answers.setdefault((session.session_id, key), collections.deque()).append(fut)
        return fut

    async def _await_answer(
        self, work: _Work, session: RoomSession, answer: asyncio.Future[rtc.SignalResponse]
    ) -> None:
        timeout_s = self._settings.response_timeout_s
        try:
            response = await asyncio.wait_for(answer, timeout_s)
        except TimeoutError:
            await self._finish_command(
                work, FAILED, TIMEOUT, f"sent; LiveKit did not answer within {timeout_s:g}s"
            )
            return
        except asyncio.CancelledError:
            if self._closing:
                raise
            await self._finish_command(
                work, FAILED, UNAVAILABLE, "the room's session ended before LiveKit answered"
            )
            return
        finally:
            self._forget_answer(session, answer)
        kind = response.WhichOneof("message")
        if kind == "request_response":
            rr = response.request_response
            if rr.reason == rtc.RequestResponse.OK:
                await self._finish_command(work, APPLIED)
            else:
                code = rtc.RequestResponse.Reason.Name(rr.reason).lower()
                await self._finish_command(work, FAILED, code, rr.message or "LiveKit refused the request")
        else:
            inner: Message = getattr(response, kind or "")
            await self._finish_command(work, APPLIED, response=inner.SerializeToString())

    def _forget_answer(self, session: RoomSession, answer: asyncio.Future[rtc.SignalResponse]) -> None:
        for key, waiters in list(self._answers.items()):
            if key[0] == session.session_id and answer in waiters:
                waiters.remove(answer)
                if not waiters:
                    del self._answers[key]
                return

    # ------------------------------------------------------------------ bridge-level commands

    async def _apply_bridge(self, work: _Work) -> None:
        cmd = work.command
        if cmd.name == "join_room":
            await self._join(work)
            return
        session = await self._owned_or_reject(work)
        if session is None:
            return
        if cmd.name == "leave_room":
            await self._finish_command(work, APPLIED)
            self._supervisor.leave(cmd.room)
            return
        via_channel = cmd.name == "send_data" and self._settings.send_data_via == "data_channel"
        if via_channel and await self._send_data_on_channel(work, session):
            return
        if cmd.name in MEDIA_COMMANDS:
            await self._apply_media(work, session)
            return
        api = self._server_api
        if api is None:
            await self._finish_command(work, FAILED, UNSUPPORTED, "no LiveKit server API configured")
            return
        msg: Any = cmd.message
        try:
            response = b""
            if cmd.name == "mute_track":
                await api.mute_track(cmd.room, msg)
            elif cmd.name == "remove_participant":
                await api.remove_participant(cmd.room, msg)
            elif cmd.name == "update_participant":
                await api.update_participant(cmd.room, msg)
            elif cmd.name == "update_room_metadata":
                await api.update_room_metadata(cmd.room, msg)
            elif cmd.name == "send_data":
                await api.send_data(cmd.room, msg)
            elif cmd.name == "perform_rpc":
                response = (await api.perform_rpc(cmd.room, msg)).encode()
            else:
                await self._finish_command(work, FAILED, UNSUPPORTED, f"no handler for {cmd.type}")
                return
        except BridgeError as exc:
            await self._finish_command(work, FAILED, getattr(exc, "code", "error"), str(exc))
            return
        self.stats.apply_latency.record(self._clock() - work.delivery.received_at)
        await self._finish_command(work, APPLIED, response=response)

    async def _send_data_on_channel(self, work: _Work, session: RoomSession) -> bool:
        """``send_data`` on the bridge's own data channel; False: fall back to the server API."""
        msg: Any = work.command.message
        try:
            await session.send_data(msg, timeout_s=self._settings.response_timeout_s)
        except MediaError as exc:
            if self._server_api is None:
                await self._finish_command(work, FAILED, UNAVAILABLE, str(exc))
                return True
            self.stats.send_data_fallbacks += 1
            log.warning("room=%s send_data over the server API: %s", work.command.room, exc)
            return False
        self.stats.apply_latency.record(self._clock() - work.delivery.received_at)
        await self._finish_command(work, APPLIED)
        return True

    async def _apply_media(self, work: _Work, session: RoomSession) -> None:
        """Recording, forwarding and publishing commands: the room session does the work."""
        try:
            response = await session.media_command(work.command.name, work.command.message)
        except BridgeError as exc:
            await self._finish_command(work, FAILED, getattr(exc, "code", "error"), str(exc))
            return
        self.stats.apply_latency.record(self._clock() - work.delivery.received_at)
        await self._finish_command(work, APPLIED, response=response)

    async def _join(self, work: _Work) -> None:
        room = work.command.room
        if self.consider is not None:
            self.consider(room)
        if not self.owns(room) and self.joins_follow_claims and self.consider is not None:
            await self._finish_command(work, APPLIED, message=CANDIDATE_ADDED)
            return
        if not self.owns(room):
            await self._finish_command(work, REJECTED, ROOM_NOT_OWNED, _not_served(room))
            return
        session = self._owned(room) or self._supervisor.join(room)
        if await self._wait_connected(session):
            self.stats.apply_latency.record(self._clock() - work.delivery.received_at)
            await self._finish_command(work, APPLIED)
        elif session.ended is not None:
            await self._finish_command(work, FAILED, "join_failed", session.ended.reason)
        else:
            await self._finish_command(
                work, FAILED, TIMEOUT, "joining; not connected yet (the bridge keeps trying)"
            )

    # ------------------------------------------------------------------ session events

    def on_session_event(self, session: RoomSession, event: Event) -> None:
        """Wake whoever waits on this session: LiveKit's answers, (re)connection, the end."""
        if isinstance(event, Received):
            response = event.response
            kind = response.WhichOneof("message")
            key: CorrelationKey | None = None
            if kind == "request_response":
                key = response_key(response.request_response)
            elif kind is not None:
                key = _typed_key(response, kind)
            if key is not None:
                waiters = self._answers.get((session.session_id, key))
                if waiters:
                    fut = waiters.popleft()
                    if not waiters:
                        del self._answers[(session.session_id, key)]
                    if not fut.done():
                        fut.set_result(response)
        elif isinstance(event, Joined | Resumed):
            for waiter in self._connected.pop(session.session_id, ()):
                if not waiter.done():
                    waiter.set_result(True)
        elif isinstance(event, Ended):
            for waiter in self._connected.pop(session.session_id, ()):
                if not waiter.done():
                    waiter.set_result(False)
            for pending in [k for k in self._answers if k[0] == session.session_id]:
                for fut in self._answers.pop(pending):
                    fut.cancel()

    # ------------------------------------------------------------------ results

    async def _finish_command(
        self, work: _Work, status: int, code: str = "", message: str = "", response: bytes = b""
    ) -> None:
        cmd = work.command
        result = _result(cmd.id, cmd.type, status, code, message, response)
        await self._finish(
            command_id=cmd.id,
            room=cmd.room,
            traceparent=cmd.traceparent,
            result=result,
            delivery=work.delivery,
            session=self._owned(cmd.room),
        )

    async def _finish(
        self,
        *,
        command_id: str,
        room: str,
        traceparent: str | None,
        result: events_pb2.CommandResult,
        delivery: Delivery,
        session: RoomSession | None,
    ) -> None:
        status = result.status
        if status == APPLIED:
            self.stats.applied += 1
        elif status == REJECTED:
            self.stats.rejected += 1
        else:
            self.stats.failed += 1
        extensions = (("lkcommandid", command_id),)
        event = await self._room_events.emit(
            room, "command_result", result, session=session, extensions=extensions, traceparent=traceparent
        )
        # Done once the result is on the buses. Registered before the id counts as finished, so a duplicate
        # answered from here on waits for it too (see _answer_duplicate).
        settling = None
        if event is not None and self._settled is not None:
            settling = self._settling[command_id] = self._settled(event)
            settling.add_done_callback(lambda f: self._forget_settling(command_id, f))
        reply = nats_structured(event) if event is not None else b""
        self._dedup.finish(command_id, result, self._clock())
        if reply:
            self._replies[command_id] = reply
            while len(self._replies) > self._settings.dedup_max_ids:
                self._replies.pop(next(iter(self._replies)))
        await delivery.reply(reply)
        deliveries = [delivery, *self._duplicates_waiting.pop(command_id, ())]
        for duplicate in deliveries[1:]:
            await duplicate.reply(reply)
        # A delivery the broker would give out again (Kafka) is settled, and its offset may be committed,
        # only once the result is published; the others at once. The room's lane goes on meanwhile;
        # drain() waits for the settlement.
        later = [d for d in deliveries if d.redelivers] if settling is not None else []
        for d in deliveries:
            if settling is None or not d.redelivers:
                d.settle()
        if settling is None or not later:
            self._finished()
            return
        settling.add_done_callback(lambda _: self._settle_later(later))

    def _settle_later(self, deliveries: list[Delivery]) -> None:
        try:
            for delivery in deliveries:
                delivery.settle()
        finally:
            self._finished()

    def _forget_settling(self, command_id: str, settling: asyncio.Future[Any]) -> None:
        if self._settling.get(command_id) is settling:
            del self._settling[command_id]

    def _finished(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()

    # ------------------------------------------------------------------ shutdown

    @property
    def pending(self) -> int:
        """Commands accepted and not yet answered (queued, being applied, or awaiting LiveKit)."""
        return self._pending

    async def drain(self, deadline_s: float) -> bool:
        """Wait up to ``deadline_s`` until every accepted command is answered; False if time ran out."""
        try:
            await asyncio.wait_for(self._idle.wait(), deadline_s)
        except TimeoutError:
            return False
        return True

    async def aclose(self, deadline_s: float = 1.0) -> None:
        self._closing = True
        await self._tasks.aclose(deadline_s)


def _not_served(room: str) -> str:
    return f"room {room!r} is not served by this bridge"
