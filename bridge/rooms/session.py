"""One owned room: its signaling connection, its WebRTC peer, and its lifecycle.

A :class:`RoomSession` joins as a hidden participant and stays until LiveKit ends the session, the
bridge leaves, or another replica takes the identity. Lifecycle is logged once per open, resume and
close at INFO, never per message. Every ``SignalProtocol`` event is also handed to ``on_event``, in
the order LiveKit sent the messages (the event pipeline subscribes there).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final

from google.protobuf.message import DecodeError, Message
from livekit.protocol import models, rtc

from bridge._proto import commands_pb2, events_pb2
from bridge.config import EventsSettings, LiveKitSettings, MediaSettings
from bridge.errors import MediaRefused, NegotiationFailed, RecordingRefused
from bridge.events.cloudevent import CloudEvent, EventSink, SessionContext, source_uri
from bridge.events.mapping import EventMapper, TypeFilter
from bridge.events.streams import TextStreamAssembler
from bridge.media.forward import Forwarder, sdp_for, write_sdp
from bridge.media.peer import MediaPeer, RemoteTrack
from bridge.media.playback import PlaybackTrack, open_playback
from bridge.media.publisher import PublisherPeer
from bridge.media.recorder import Recorder
from bridge.media.sources import query_refused, redact_url, url_allowed
from bridge.media.subscriptions import SubscriptionPolicy
from bridge.rooms.state import RoomState
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
from bridge.tasks import OwnedTasks

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S: Final = 5.0
SIDE_QUEUE: Final = 4096  # data packets and gap reports waiting to be emitted, per room
PUBLISH_TIMEOUT_S: Final = 10.0  # track_published, then the publisher PC's renegotiation
ABANDONED_CIDS: Final = 64  # publishes that gave up, remembered for a late track_published
URL_TRACK_NAME: Final = "stream"  # the name of a track published from a URL without ``name``
_FORWARD_CODECS: Final = {"audio/opus": "opus", "video/vp8": "vp8", "video/h264": "h264"}
_STREAM_PARTS: Final = frozenset({"stream_header", "stream_chunk", "stream_trailer"})
Cause = events_pb2.RoomSnapshot.Cause

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
        sink: EventSink | None = None,
        events: EventsSettings | None = None,
        media: MediaSettings | None = None,
    ) -> None:
        self.room = room
        self.session_id = new_session_id()
        self.settings = settings
        self._on_event = on_event
        self._sink = sink
        self.mapper = EventMapper(
            SessionContext(source=source_uri(settings.url, room), room=room, session=self.session_id),
            data_format=events.data_format if events else "protobuf",
            allow=TypeFilter(events.include, events.exclude) if events else None,
        )
        self.room_state = RoomState()
        self._snapshot_after_resume = False
        self._side: collections.deque[tuple[bytes, str] | tuple[str, list[int]]] = collections.deque()
        self._side_ready = asyncio.Event()
        self.side_dropped = 0
        self._emit_lock = asyncio.Lock()
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
            auto_subscribe=settings.auto_subscribe,
        )
        self.recorder = Recorder(
            root=media.recordings_dir if media else None,
            room=room,
            max_recordings=media.max_recordings if media else 1,
            queue_frames=media.recording_queue_frames if media else 1,
            request_keyframe=self._request_keyframe,
            count_dropped=self._count_dropped,
            on_finished=self._recording_finished,
        )
        self._media_settings = media or MediaSettings()
        self.forwarder = Forwarder(
            room=room,
            allow=self._media_settings.forward_allow,
            max_forwards=self._media_settings.max_forwards,
            queue_packets=self._media_settings.forward_queue_packets,
            request_keyframe=self._request_keyframe,
            count_dropped=self._count_dropped,
            on_finished=self._forward_finished,
        )
        self.media = MediaPeer(
            send=self._send_media,
            room=room,
            on_data=self._on_data,
            on_encoded=self._on_encoded,
            on_track_ended=self._on_track_ended,
        )
        self.published: dict[str, tuple[str, PlaybackTrack]] = {}  # track sid -> (cid, playing track)
        self._publishing: dict[str, asyncio.Future[rtc.SignalResponse]] = {}  # cid -> LiveKit's answer
        # cids whose publish gave up waiting: a track_published that still comes is taken back.
        self._abandoned: collections.deque[str] = collections.deque(maxlen=ABANDONED_CIDS)
        self.publisher = PublisherPeer(send=self._send_media, room=room)
        self.text_streams: TextStreamAssembler | None = None
        if events is not None and events.assemble_text_streams:
            self.text_streams = TextStreamAssembler(
                max_open=events.text_streams_max_open, max_bytes=events.text_stream_max_bytes
            )
        self.subscriptions = SubscriptionPolicy(media.subscribe if media else ())
        self.data_sequence = 0  # DataPacket.sequence of the reliable packets the bridge sent
        self.request_ids = itertools.count(1)  # request_id for commands that leave it 0
        self.ended: Ended | None = None
        self.resumes = 0
        self.rejoins = 0
        self._tasks = OwnedTasks(log, f"room={room} session={self.session_id}")

    @property
    def state(self) -> SessionState:
        return self.protocol.state

    @property
    def participant_sid(self) -> str:
        return self.protocol.participant_sid

    async def run(self) -> Ended | None:
        """Run until the session ends; returns how it ended."""
        if self._sink is not None:
            self._spawn(self._emit_side())
        try:
            await self.connection.run()
        finally:
            # Normally done by _ended already; here for a run that ends without it (cancelled).
            await self._end_media()
            await self._tasks.aclose(CLOSE_TIMEOUT_S)
            try:
                # aiortc's close can wait forever on transports whose tasks were cancelled under it.
                await asyncio.wait_for(self.media.aclose(), CLOSE_TIMEOUT_S)
                await asyncio.wait_for(self.publisher.aclose(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning(
                    "room=%s: WebRTC did not close within %.0fs; abandoned", self.room, CLOSE_TIMEOUT_S
                )
        return self.ended

    def leave(self) -> None:
        self.connection.leave(self.settings.leave_deadline_s)

    def send_request(self, request: rtc.SignalRequest) -> bool:
        return self.connection.send_request(request)

    async def send_data(self, msg: commands_pb2.SendData, *, timeout_s: float) -> None:
        """Publish ``msg`` as a user DataPacket on the bridge's own data channel (its publisher PC).

        Raises :class:`~bridge.errors.NegotiationFailed` when the channel could not be set up in time and
        :class:`~bridge.errors.MediaError` when it refused the message.
        """
        packet = models.DataPacket(
            kind=models.DataPacket.LOSSY if msg.lossy else models.DataPacket.RELIABLE,
            participant_identity=self.settings.identity,
            participant_sid=self.participant_sid,
            destination_identities=list(msg.destination_identities),
            user=models.UserPacket(
                payload=msg.payload,
                participant_identity=self.settings.identity,
                participant_sid=self.participant_sid,
                destination_identities=list(msg.destination_identities),
            ),
        )
        if msg.topic:
            packet.user.topic = msg.topic
        if not msg.lossy:
            self.data_sequence += 1
            packet.sequence = self.data_sequence
        await self.publisher.send_data(
            packet.SerializeToString(), reliable=not msg.lossy, timeout_s=timeout_s
        )

    async def media_command(self, name: str, message: Message) -> bytes:
        """``record_track`` / ``stop_recording``; raises :class:`~bridge.errors.RecordingRefused`."""
        if isinstance(message, commands_pb2.RecordTrack):
            kind = self._track_kind(message.track_sid)
            if kind is None:
                raise RecordingRefused("not_found", f"no track {message.track_sid} in room {self.room}")
            self.recorder.start(message.track_sid, message.path, message.duration_s, kind)
            if not self.subscribe_tracks([message.track_sid]):
                self.recorder.stop(message.track_sid, "error: not connected")
                raise RecordingRefused("unavailable", "the room's signaling session is not connected")
            return b""
        if isinstance(message, commands_pb2.StopRecording):
            self.recorder.stop(message.track_sid)
            return b""
        if isinstance(message, commands_pb2.ForwardTrack):
            return await self._forward(message)
        if isinstance(message, commands_pb2.StopForward):
            self.forwarder.stop(message.track_sid)
            return b""
        if isinstance(message, commands_pb2.PublishTrack):
            return await self._publish_file(message)
        if isinstance(message, commands_pb2.UnpublishTrack):
            entry = self.published.pop(message.track_sid, None)
            if entry is None:
                raise MediaRefused("not_found", f"the bridge does not publish a track {message.track_sid}")
            await self._unpublish(message.track_sid, *entry, reason="unpublished")
            return b""
        raise RecordingRefused("unsupported", f"no media command {name}")

    async def _forward(self, msg: commands_pb2.ForwardTrack) -> bytes:
        """``forward_track``: start the forward, subscribe, answer with the SDP (and write it if asked)."""
        info = self._track_info(msg.track_sid)
        if info is None:
            raise MediaRefused("not_found", f"no track {msg.track_sid} in room {self.room}")
        default = "opus" if info.type == models.AUDIO else "vp8"
        codec = _FORWARD_CODECS.get(info.mime_type.lower(), "" if info.mime_type else default)
        if not codec:
            raise MediaRefused("unsupported", f"{info.mime_type} cannot be forwarded (opus, VP8, H.264 can)")
        fwd = await self.forwarder.start(msg.track_sid, msg.host, msg.port, codec, msg.payload_type)
        sdp = sdp_for(
            codec=codec,
            address=fwd.address,
            port=fwd.port,
            payload_type=fwd.payload_type,
            channels=2 if info.stereo else 1,
            track_sid=msg.track_sid,
        )
        try:
            if msg.sdp_path:
                write_sdp(self._media_settings.recordings_dir, msg.sdp_path, sdp)
        except (MediaRefused, OSError) as exc:
            self.forwarder.stop(msg.track_sid, "error: not started")
            if isinstance(exc, OSError):
                raise MediaRefused("invalid_path", f"cannot write {msg.sdp_path}: {exc}") from exc
            raise
        if not self.subscribe_tracks([msg.track_sid]):
            self.forwarder.stop(msg.track_sid, "error: not connected")
            raise MediaRefused("unavailable", "the room's signaling session is not connected")
        return sdp.encode()

    async def _publish_file(self, msg: commands_pb2.PublishTrack) -> bytes:
        """``publish_track``: open the file or URL, announce the track, wait for LiveKit, add it to the
        publisher PC (negotiating the codec a pass-through track's packets are in)."""
        if bool(msg.path) == bool(msg.url):
            raise MediaRefused("invalid_path", "set exactly one of path and url")
        if msg.kind not in ("", "audio", "video"):
            raise MediaRefused("unsupported", f"kind must be audio, video or empty, not {msg.kind!r}")
        if msg.url:
            target, shown = self._publish_url(msg.url), redact_url(msg.url)
        else:
            target, shown = str(self._publish_file_path(msg.path)), msg.path
        if len(self.published) >= self._media_settings.max_published_tracks:
            raise MediaRefused("limit", f"{len(self.published)} tracks are published in this room")
        track = await open_playback(target, url=bool(msg.url), shown=shown, kind=msg.kind, loop=msg.loop)
        try:
            info = await self._publish_track(track, msg)
        except BaseException:
            await track.aclose()
            raise
        log.info(
            "room=%s publishing %s %s as track %s (%s, pass-through: %s)",
            self.room,
            track.kind,
            shown,
            info.sid,
            self.publisher.sending_codec(self.published[info.sid][0]) or track.mime_type,
            track.passthrough,
        )
        return info.SerializeToString()

    async def _publish_track(self, track: PlaybackTrack, msg: commands_pb2.PublishTrack) -> models.TrackInfo:
        cid = "BR_" + secrets.token_hex(6)
        # A URL's path may hold a secret (an RTMP stream key, a CDN token) and every participant sees
        # the track's name: a URL track is named by the command or not at all.
        name = msg.name or (URL_TRACK_NAME if msg.url else Path(msg.path).stem)
        if track.kind == "video":
            width, height = track.stream.width, track.stream.height
            request = rtc.AddTrackRequest(
                cid=cid,
                name=name,
                type=models.VIDEO,
                source=msg.source or models.CAMERA,
                width=width,
                height=height,
                # One layer, HIGH, as LiveKit's SDKs announce a track that is not simulcast: LiveKit copies
                # the layers into TrackInfo, where subscribers read the dimensions (width/height are the
                # deprecated fields).
                layers=[models.VideoLayer(quality=models.VideoQuality.HIGH, width=width, height=height)],
            )
        else:
            request = rtc.AddTrackRequest(
                cid=cid, name=name, type=models.AUDIO, source=msg.source or models.MICROPHONE
            )
        answer: asyncio.Future[rtc.SignalResponse] = asyncio.get_running_loop().create_future()
        self._publishing[cid] = answer
        try:
            if not self.send_request(rtc.SignalRequest(add_track=request)):
                raise MediaRefused("unavailable", "the room's signaling session is not connected")
            try:
                response = await asyncio.wait_for(answer, PUBLISH_TIMEOUT_S)
            except TimeoutError:
                raise MediaRefused(
                    "timeout", f"LiveKit did not publish the track within {PUBLISH_TIMEOUT_S:g}s"
                ) from None
        finally:
            self._publishing.pop(cid, None)
            if answer.cancelled() or not answer.done():
                self._abandoned.append(cid)  # timed out or cancelled: LiveKit may still answer
        if response.WhichOneof("message") == "request_response":
            refusal = response.request_response
            code = rtc.RequestResponse.Reason.Name(refusal.reason).lower()
            raise MediaRefused(code, refusal.message or "LiveKit refused the track")
        info = response.track_published.track
        track.start()
        try:
            await self.publisher.add_track(
                track, cid=cid, timeout_s=PUBLISH_TIMEOUT_S, mime_type=track.mime_type
            )
        except BaseException as exc:
            # LiveKit lists the track already: take it back, then report the first error.
            self._withdraw(info.sid, cid)
            if isinstance(exc, NegotiationFailed):
                raise MediaRefused("unavailable", str(exc)) from exc
            raise
        self.published[info.sid] = (cid, track)
        self._spawn(self._watch_playback(info.sid, track))
        return info

    async def _watch_playback(self, track_sid: str, track: PlaybackTrack) -> None:
        """Unpublish ``track`` when it ends by itself (end of file, source error), freeing its slot."""
        await track.stopped.wait()
        entry = self.published.get(track_sid)
        if not track.exhausted or entry is None or entry[1] is not track:
            return  # stopped by unpublish_track or the session's end: they report it
        del self.published[track_sid]  # no await since the check: unpublish_track now finds nothing
        reason = f"error: {track.error}" if track.error else "end_of_file"
        log.info("room=%s published track %s ended (%s): unpublishing it", self.room, track_sid, reason)
        try:
            await self._unpublish(track_sid, entry[0], track, reason=reason)
        except MediaRefused as exc:
            # The track is stopped and its slot free either way; LiveKit ends it when the PC goes.
            log.warning("room=%s could not unpublish ended track %s: %s", self.room, track_sid, exc)

    def _withdraw(self, track_sid: str, cid: str) -> None:
        """Take back a track LiveKit announced but that never started: mute it at once (subscribers see
        it muted), and turn its m-line inactive in the background if it got one. Never raises: the
        caller is reporting an error (or a cancellation) of its own."""
        self.send_request(rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid=track_sid, muted=True)))
        self._spawn(self._remove_transceiver(track_sid, cid))

    async def _remove_transceiver(self, track_sid: str, cid: str) -> None:
        try:
            # Returns at once when the PC is gone, or never got the track.
            await self.publisher.remove_track(cid, timeout_s=PUBLISH_TIMEOUT_S)
        except NegotiationFailed as exc:
            log.warning("room=%s could not withdraw track %s: %s", self.room, track_sid, exc)

    def _publish_url(self, url: str) -> str:
        allow = self._media_settings.publish_url_allow
        if not allow:
            raise MediaRefused("not_allowed", "publishing from URLs is off: set media.publish_url_allow")
        if not url_allowed(url, allow):
            raise MediaRefused(
                "not_allowed", f"{redact_url(url)} is not below a prefix in media.publish_url_allow"
            )
        problem = query_refused(url)
        if problem is not None:
            raise MediaRefused("not_allowed", f"{redact_url(url)}: {problem}")
        return url

    def _publish_file_path(self, path: str) -> Path:
        root = self._media_settings.publish_dir
        if root is None:
            raise MediaRefused("unsupported", "publishing is off: set media.publish_dir")
        base = root.resolve()
        if not path or Path(path).is_absolute():
            raise MediaRefused("invalid_path", "path must be relative to media.publish_dir")
        target = (base / path).resolve()
        if not target.is_relative_to(base) or target == base:
            raise MediaRefused("invalid_path", "path leaves media.publish_dir")
        if not target.is_file():
            raise MediaRefused("not_found", f"no file {path} in media.publish_dir")
        return target

    async def _unpublish(
        self, track_sid: str, cid: str, track: PlaybackTrack, *, reason: str, renegotiate: bool = True
    ) -> None:
        """Stop a track its caller took out of ``published`` (so exactly one caller gets here per track),
        take it out of the publisher PC, and emit PublishFinished, also when that fails."""
        try:
            await track.aclose()
            if renegotiate:
                # Subscribers see it muted at once; the inactive m-line then ends it on LiveKit's side.
                self.send_request(rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid=track_sid, muted=True)))
                try:
                    await self.publisher.remove_track(cid, timeout_s=PUBLISH_TIMEOUT_S)
                except NegotiationFailed as exc:
                    raise MediaRefused("unavailable", str(exc)) from exc
        finally:
            started = track.started_at
            finished = events_pb2.PublishFinished(
                track_sid=track_sid,
                kind=track.kind,
                source=track.shown,  # the path, or the URL redacted (redact_url)
                mime_type=track.mime_type,
                passthrough=track.passthrough,
                frames=track.sent,
                duration_s=0.0 if started is None else time.monotonic() - started,
                reason=reason,
            )
            await self._bridge_event("publish_finished", finished, subject=track_sid)

    async def _end_media(self) -> None:
        """End the recordings, forwards and published tracks; their events come before SessionEnded."""
        await self.recorder.aclose()
        await self.forwarder.aclose()
        await self._end_published("session_ended")

    async def _end_published(self, reason: str) -> None:
        """End every published track without renegotiating: the session is over, or its publisher PC
        is gone with the participant a full rejoin replaced, and LiveKit drops the tracks with them."""
        while self.published:
            track_sid, (cid, track) = self.published.popitem()
            await self._unpublish(track_sid, cid, track, reason=reason, renegotiate=False)

    def _track_info(self, track_sid: str) -> models.TrackInfo | None:
        for info in self.room_state.participants.values():
            for track in info.tracks:
                if track.sid == track_sid:
                    return track
        return None

    def _on_encoded(self, remote: RemoteTrack, codec: Any, frame: Any) -> None:
        self.recorder.on_encoded(remote, codec, frame)
        if self.forwarder.forwards:
            self.forwarder.on_encoded(remote, codec, frame)

    def _on_track_ended(self, remote: RemoteTrack) -> None:
        self.recorder.on_track_ended(remote)
        self.forwarder.on_track_ended(remote)

    def _track_kind(self, track_sid: str) -> str | None:
        for info in self.room_state.participants.values():
            for track in info.tracks:
                if track.sid == track_sid:
                    return {models.AUDIO: "audio", models.VIDEO: "video"}.get(track.type, "data")
        return None

    # The recorder is built before the MediaPeer it reads from: these resolve ``self.media`` late.
    def _request_keyframe(self, track_sid: str) -> bool:
        return self.media.request_keyframe(track_sid)

    def _count_dropped(self, remote: RemoteTrack, frames: int) -> None:
        self.media.count_dropped(remote, frames)

    async def _recording_finished(self, finished: events_pb2.RecordingFinished) -> None:
        await self._bridge_event("recording_finished", finished, subject=finished.track_sid)

    async def _forward_finished(self, finished: events_pb2.ForwardFinished) -> None:
        await self._bridge_event("forward_finished", finished, subject=finished.track_sid)

    def subscribe_tracks(self, track_sids: list[str]) -> bool:
        """Subscribe to these tracks now, whatever ``media.subscribe`` says (e.g. to record one)."""
        fresh = [sid for sid in track_sids if self.subscriptions.mark(sid)]
        if not fresh:
            return True
        return self.connection.send_request(
            rtc.SignalRequest(subscription=rtc.UpdateSubscription(track_sids=fresh, subscribe=True))
        )

    # ---------------------------------------------------------- internals

    def _publish_answered(self, cid: str, response: rtc.SignalResponse) -> None:
        waiting = self._publishing.get(cid)
        if waiting is not None and not waiting.done():
            waiting.set_result(response)
        elif cid in self._abandoned and response.WhichOneof("message") == "track_published":
            self._abandoned.remove(cid)
            sid = response.track_published.track.sid
            log.warning(
                "room=%s LiveKit published track %s after its publish_track gave up; withdrawing it",
                self.room,
                sid,
            )
            self._withdraw(sid, cid)

    def _send_media(self, request: rtc.SignalRequest) -> None:
        self.connection.send_request(request)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._tasks.spawn(coro)

    async def _handle(self, event: Event) -> None:
        if isinstance(event, Received):
            await self._received(event)
        elif isinstance(event, Joined):
            await self._joined(event)
        elif isinstance(event, Resumed):
            await self._resumed(event)
        elif isinstance(event, ConnectionLost):
            log.info(
                "signal lost, recovering room=%s session=%s: %s", self.room, self.session_id, event.reason
            )
        elif isinstance(event, Ended):
            await self._ended(event)
        if self._on_event is not None:
            self._on_event(self, event)

    async def _received(self, event: Received) -> None:
        response = event.response
        kind = response.WhichOneof("message")
        # Negotiation runs beside the reader so a slow answer never stalls the room's events.
        if kind == "offer":
            self._spawn(self.media.handle_offer(response.offer))
        elif kind == "answer":
            self.publisher.handle_answer(response.answer)
        elif kind == "track_published":
            self._publish_answered(response.track_published.cid, response)
        elif kind == "request_response" and response.request_response.WhichOneof("request") == "add_track":
            self._publish_answered(response.request_response.add_track.cid, response)
        elif kind == "trickle":
            if response.trickle.target == rtc.SignalTarget.PUBLISHER:
                self._spawn(self.publisher.handle_trickle(response.trickle))
            else:
                self._spawn(self.media.handle_trickle(response.trickle))
        frame = event.frame if isinstance(event.frame, bytes) else None
        await self._emit(lambda: self.mapper.signal(response, frame, wall=time.time()))
        changed = self.room_state.apply(response)
        if changed and kind in ("join", "update", "room_moved"):
            self._subscribe_by_policy()
            self._end_gone_tracks()
        if kind == "room_moved":
            moved_from, self.room = self.room, self.protocol.room_name
            self.connection.room = self.room
            self.mapper.ctx = self.mapper.ctx.with_room(room=self.room, room_sid=response.room_moved.room.sid)
            log.info(
                "room session moved room=%s from=%s session=%s sid=%s",
                self.room,
                moved_from,
                self.session_id,
                self.participant_sid,
            )
            await self._snapshot(Cause.CAUSE_MOVE)
        elif kind == "room_update" and changed:
            if response.room_update.room.sid and not self.mapper.ctx.room_sid:
                self.mapper.ctx = self.mapper.ctx.with_room(room_sid=response.room_update.room.sid)
            if self._snapshot_after_resume:
                # LiveKit sends reconnect, the full participant list, then room_update: the view is whole.
                self._snapshot_after_resume = False
                await self._snapshot(Cause.CAUSE_RESUME)

    async def _emit(self, make: Callable[[], CloudEvent | None]) -> None:
        """Number and hand over one event as a single step, so the buses see sequence order even when
        the reader and the side task both wait on a full (``block``) outbox."""
        if self._sink is None:
            return
        async with self._emit_lock:
            event = make()
            if event is not None:
                await self._sink.emit(event)

    async def emit_bridge_event(
        self,
        name: str,
        message: Message,
        *,
        subject: str | None = None,
        extensions: tuple[tuple[str, str], ...] = (),
        traceparent: str | None = None,
    ) -> CloudEvent | None:
        """Number and publish one of the bridge's own events in this session; returns it (None when the
        type is filtered out). Without a sink the event is still built, so a caller can reply with it."""
        made: list[CloudEvent | None] = []

        def make() -> CloudEvent | None:
            event = self.mapper.bridge(
                name,
                message,
                wall=time.time(),
                subject=subject,
                extensions=extensions,
                traceparent=traceparent,
            )
            made.append(event)
            return event

        if self._sink is None:
            return make()
        await self._emit(make)
        return made[0] if made else None

    async def _bridge_event(self, name: str, message: Message, subject: str | None = None) -> None:
        await self._emit(lambda: self.mapper.bridge(name, message, wall=time.time(), subject=subject))

    async def _snapshot(self, cause: Any) -> None:
        snapshot = events_pb2.RoomSnapshot(
            cause=cause,
            room=self.room_state.room,
            participants=list(self.room_state.participants.values()),
            bridge_participant_sid=self.participant_sid,
        )
        await self._bridge_event("room_snapshot", snapshot)

    async def _ended(self, event: Ended) -> None:
        self.ended = event
        await self._end_media()
        level = logging.WARNING if event.ownership_lost else logging.INFO
        log.log(
            level,
            "room session ended room=%s session=%s reason=%s%s",
            self.room,
            self.session_id,
            event.reason,
            " (another session owns this identity now)" if event.ownership_lost else "",
        )
        reason = event.reason if event.reason in models.DisconnectReason.keys() else "UNKNOWN_REASON"  # noqa: SIM118
        await self._bridge_event(
            "session_ended",
            events_pb2.SessionEnded(
                room=self.room,
                reason=event.reason,
                ownership_lost=event.ownership_lost,
                disconnect_reason=reason,
            ),
        )

    # Data packets (from aiortc callbacks) and gap reports (from the outboxes) arrive outside the
    # reader; one owned task emits them in arrival order, from a bounded queue.

    def _on_data(self, payload: bytes, label: str) -> None:
        self._side_put((payload, label))

    def report_gap(self, bus: str, dropped: int, first: int, last: int) -> None:
        """``bus`` dropped ``dropped`` events of this session (sequences ``first``..``last``)."""
        self._side_put((bus, [dropped, first, last]))

    def _side_put(self, item: tuple[bytes, str] | tuple[str, list[int]]) -> None:
        if len(self._side) >= SIDE_QUEUE:
            self.side_dropped += 1
            return
        self._side.append(item)
        self._side_ready.set()

    async def _emit_side(self) -> None:
        while True:
            await self._side_ready.wait()
            self._side_ready.clear()
            while self._side:
                first, second = self._side.popleft()
                if isinstance(first, bytes):
                    await self._emit_data(first, str(second))
                else:
                    assert isinstance(second, list)
                    await self._emit_gap(first, second)

    async def _emit_data(self, payload: bytes, label: str) -> None:
        # Routed by the channel's label: the packet's own (deprecated) ``kind`` is not trusted.
        if label not in ("_reliable", "_lossy"):
            return  # data-track frames and unlabeled bytes are not DataPackets
        packet = models.DataPacket()
        try:
            packet.ParseFromString(payload)
        except DecodeError:
            log.warning("undecodable DataPacket on %s room=%s", label, self.room)
            return
        if not packet.participant_identity and packet.participant_sid:
            packet.participant_identity = self._identity_of(packet.participant_sid)
        await self._emit(lambda: self.mapper.data(packet, wall=time.time()))
        if self.text_streams is not None and packet.WhichOneof("value") in _STREAM_PARTS:
            sender = packet.participant_identity
            text = self.text_streams.feed(packet, sender)
            if text is not None:
                await self._bridge_event("text_stream", text, subject=sender or None)

    def _identity_of(self, participant_sid: str) -> str:
        for info in self.room_state.participants.values():
            if info.sid == participant_sid:
                return info.identity
        return ""

    def _end_gone_tracks(self) -> None:
        """End the forwards and recordings of tracks that left the room. LiveKit only turns their m-line
        inactive, and aiortc keeps such a receiver's track open: no frame and no end would come."""
        if not (self.forwarder.forwards or self.recorder.recordings):
            return  # the usual case, on every participant update: nothing to look for
        present = {t.sid for p in self.room_state.participants.values() for t in p.tracks}
        for sid in [s for s in self.forwarder.forwards if s not in present]:
            self.forwarder.stop(sid, "track_ended")
        for sid in [s for s in self.recorder.recordings if s not in present]:
            self.recorder.stop(sid, "track_ended")

    def _subscribe_by_policy(self) -> None:
        """Subscribe to the tracks ``media.subscribe`` selects that are not subscribed yet."""
        if not self.subscriptions.rules:
            return
        participants = list(self.room_state.participants.values())
        self.subscriptions.forget_missing({t.sid for p in participants for t in p.tracks})
        wanted = [sid for p in participants for sid in self.subscriptions.select(p)]
        if wanted:
            self.connection.send_request(
                rtc.SignalRequest(subscription=rtc.UpdateSubscription(track_sids=wanted, subscribe=True))
            )

    async def _emit_gap(self, bus: str, gap: list[int]) -> None:
        dropped, first, last = gap
        message = events_pb2.Gap(
            bus=bus,
            dropped=dropped,
            first_sequence=first,
            last_sequence=last,
            reason="outbox full (drop_oldest) or not flushed at shutdown",
        )
        await self._bridge_event("gap", message)

    async def _joined(self, event: Joined) -> None:
        join = event.join
        if event.rejoin:
            self.rejoins += 1
            await self.media.reset()
            await self.publisher.reset()
            self.subscriptions.clear()  # a new participant: LiveKit forgot our subscriptions
            # Their PC is gone and LiveKit dropped them with the old participant: nothing reads them.
            await self._end_published("session_rejoined")
        self.media.set_ice_servers(join.ice_servers)
        self.publisher.set_ice_servers(join.ice_servers)
        self.mapper.ctx = self.mapper.ctx.with_room(room_sid=join.room.sid)
        log.info(
            "room session %s room=%s session=%s sid=%s server=%s",
            "rejoined" if event.rejoin else "started",
            self.room,
            self.session_id,
            join.participant.sid,
            join.server_info.version or join.server_version,
        )
        await self._bridge_event(
            "session_started",
            events_pb2.SessionStarted(
                room=self.room,
                room_sid=join.room.sid,
                participant_sid=join.participant.sid,
                identity=join.participant.identity,
                server_version=join.server_info.version or join.server_version,
                server_region=join.server_info.region or join.server_region,
                server_protocol=join.server_info.protocol,
                rejoin=event.rejoin,
            ),
            subject=join.participant.identity,
        )
        await self._snapshot(Cause.CAUSE_REJOIN if event.rejoin else Cause.CAUSE_JOIN)

    async def _resumed(self, event: Resumed) -> None:
        self.resumes += 1
        if event.reconnect is not None and event.reconnect.ice_servers:
            self.media.set_ice_servers(event.reconnect.ice_servers)
            self.publisher.set_ice_servers(event.reconnect.ice_servers)
        offer, answer = self.media.last_offer_answer()
        sync = rtc.SyncState()
        if offer is not None:
            sync.offer.CopyFrom(offer)
        if answer is not None:
            sync.answer.CopyFrom(answer)
        sync.subscription.subscribe = True  # auto_subscribe is off: we list what we subscribed
        sync.subscription.track_sids.extend(self.subscriptions.subscribed)
        self.connection.send_request(rtc.SignalRequest(sync_state=sync))
        log.info(
            "room session resumed room=%s session=%s sid=%s", self.room, self.session_id, self.participant_sid
        )
        self._snapshot_after_resume = True
        await self._bridge_event(
            "session_resumed",
            events_pb2.SessionResumed(
                room=self.room, participant_sid=self.participant_sid, resumes=self.resumes
            ),
        )
