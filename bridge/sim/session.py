"""One connected client of the simulator: its signaling, timers and WebRTC side.

A :class:`ClientSession` lives as long as the participant, not as long as a socket: a resume
(``reconnect=1&sid=``) attaches a new WebSocket to the same session, as LiveKit swaps the signal sink.
Requests are dispatched by a table covering every ``SignalRequest`` variant.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from aiohttp import WSMsgType, web
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from bridge.errors import FrameError, NotFound
from bridge.signaling import codec
from bridge.sim.media import MediaMode, ParticipantMedia
from bridge.sim.room import SimParticipant, SimRoom, new_sid, now_ms
from bridge.tasks import OwnedTasks

if TYPE_CHECKING:
    from bridge.sim.server import SimServer

log = logging.getLogger(__name__)

PROTOCOL_VERSION: Final = 17
OUTGOING_QUEUE: Final = 4096  # frames queued for one client before it counts as a dead consumer
DATA_LABELS: Final = frozenset({"_reliable", "_lossy"})
UNSUPPORTED_CODECS: Final = frozenset({"video/vp9", "video/av1"})

Reason: TypeAlias = models.DisconnectReason
Action: TypeAlias = rtc.LeaveRequest.Action


@dataclass(frozen=True, slots=True)
class JoinParams:
    """What the client asked for in its query string or ``join_request``."""

    mode: MediaMode
    protocol: int
    auto_subscribe: bool
    client_info: models.ClientInfo
    reconnect: bool = False
    participant_sid: str = ""
    reconnect_reason: int = 0
    metadata: str = ""
    attributes: dict[str, str] | None = None
    publisher_offer: rtc.SessionDescription | None = None
    add_track_requests: tuple[rtc.AddTrackRequest, ...] = ()


class ClientSession:
    """Server side of one client participant (see module docstring)."""

    def __init__(
        self, server: SimServer, room: SimRoom, participant: SimParticipant, params: JoinParams, token: str
    ) -> None:
        self.server = server
        self.room = room
        self.participant = participant
        self.params = params
        self.token = token
        self.json_mode = False
        self.silent = False  # fault injection: swallow everything we would send
        self.requests: list[rtc.SignalRequest] = []  # every request received, for tests
        self.sent: list[str] = []  # the kind of every response written, in order, for tests
        self._queue: asyncio.Queue[rtc.SignalResponse | None] | None = None
        self._transport: asyncio.Transport | None = None
        self._ws: web.WebSocketResponse | None = None
        self._tasks = OwnedTasks(log, f"simulator room={room.name} identity={participant.identity}")
        self._socket_done: asyncio.Event | None = None
        self._ever_connected = False
        self._grace_task: asyncio.Task[None] | None = None
        self._pending_tracks: dict[str, models.TrackInfo] = {}  # cid -> announced track
        subscriber_primary = params.mode is MediaMode.DUAL_PC and participant.info.permission.can_subscribe
        self.subscriber_primary = subscriber_primary
        self.media = ParticipantMedia(
            mode=params.mode,
            subscriber_primary=subscriber_primary,
            send=self._send_sdp,
            on_data=self._on_data,
            on_track=self._on_track,
            on_connected=self._on_connected,
        )
        participant.connection = self

    # -------------------------------------------------------------- Connection

    @property
    def auto_subscribe(self) -> bool:
        return self.params.auto_subscribe and self.participant.info.permission.can_subscribe

    def send(self, response: rtc.SignalResponse) -> None:
        if self.silent or self._queue is None:
            return
        try:
            self._queue.put_nowait(response)
        except asyncio.QueueFull:
            log.warning(
                "client too slow, dropping its socket room=%s identity=%s",
                self.room.name,
                self.participant.identity,
            )
            self.drop_socket()

    def send_data(self, payload: bytes, label: str) -> bool:
        return False if self.silent else self.media.send_data(payload, label)

    def subscribe(self, publisher: SimParticipant, track: models.TrackInfo) -> None:
        self._spawn(self._subscribe(publisher, track))

    def unsubscribe(self, track_sid: str) -> None:
        self._spawn(self.media.remove_subscribed_track(track_sid))

    def close_with_leave(self, reason: Reason, action: Action) -> None:
        """Send ``leave`` and close the socket; DISCONNECT and RECONNECT also end the participant."""
        self.send(leave(reason, action))
        if action != rtc.LeaveRequest.RESUME:
            self.room.remove(self.participant, reason)
            self._spawn(self.aclose())
        self._close_socket_after_flush()

    # ------------------------------------------------------------ socket life

    async def serve(self, request: web.Request, ws: web.WebSocketResponse, *, resumed: bool) -> None:
        """Own ``ws`` until it closes: write our queue, read and dispatch the client's frames."""
        if self._grace_task is not None:
            self._grace_task.cancel()
            self._grace_task = None
        if self._ws is not None and not self._ws.closed:
            await self._ws.close(code=1000, message=b"replaced by a resumed connection")
        self._ws = ws
        self._transport = request.transport if isinstance(request.transport, asyncio.Transport) else None
        self._queue = asyncio.Queue(maxsize=OUTGOING_QUEUE)
        self._socket_done = asyncio.Event()
        self.silent = False
        writer = asyncio.create_task(self._write(ws, self._queue), name=f"sim-writer-{self.participant.sid}")
        try:
            if resumed:
                await self._resumed()
            else:
                await self._joined()
            await self._read(ws)
        finally:
            if self._queue is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    self._queue.put_nowait(None)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(writer, 2.0)
            writer.cancel()
            if self._ws is ws:
                self._ws = None
                self._queue = None
                self._socket_closed()

    async def _write(
        self, ws: web.WebSocketResponse, queue: asyncio.Queue[rtc.SignalResponse | None]
    ) -> None:
        while (response := await queue.get()) is not None:
            frame = codec.encode(response, json_mode=self.json_mode)
            try:
                if isinstance(frame, str):
                    await ws.send_str(frame)
                else:
                    await ws.send_bytes(frame)
            except (ConnectionError, RuntimeError):
                return
            kind = response.WhichOneof("message") or ""
            self.sent.append(kind)
            if kind == "leave" and self._socket_done is not None:
                self._socket_done.set()
        await ws.close()

    async def _read(self, ws: web.WebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                frame: codec.Frame = msg.data
                self.json_mode = False
            elif msg.type is WSMsgType.TEXT:
                frame = msg.data
                self.json_mode = True
            else:
                break
            try:
                request = codec.decode_request(frame, max_bytes=self.server.config.max_frame_bytes)
            except FrameError as exc:
                problem: str | None = str(exc)
            else:
                kind = request.WhichOneof("message")
                problem = None if kind else "frame carries no SignalRequest message"
            if problem is not None or kind is None:
                log.warning(
                    "malformed frame, closing this client room=%s identity=%s: %s",
                    self.room.name,
                    self.participant.identity,
                    problem,
                )
                self.server.stats["malformed_frames"] += 1
                await ws.close(code=1007, message=b"malformed signal frame")
                break
            self.requests.append(request)
            try:
                await _HANDLERS[kind](self, getattr(request, kind))
            except NotFound as exc:
                log.info("request %s refused: %s", kind, exc)

    def _close_socket_after_flush(self) -> None:
        if self._queue is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)

    def drop_socket(self) -> None:
        """Abort the TCP connection with no close frame (fault injection, or a dead consumer)."""
        if self._transport is not None:
            self._transport.abort()

    def _socket_closed(self) -> None:
        if self.participant.closed:
            return
        if not self._ever_connected:
            # LiveKit closes a participant at once when its socket goes before ICE connected.
            self.room.remove(self.participant, models.SIGNAL_CLOSE)
            self._spawn(self.aclose())
            return
        self._grace_task = asyncio.create_task(self._expire_after_grace())

    async def _expire_after_grace(self) -> None:
        await asyncio.sleep(self.server.config.resume_grace_s)
        if not self.participant.closed and self._ws is None:
            self.room.remove(self.participant, models.CONNECTION_TIMEOUT)
            await self.aclose()

    async def aclose(self) -> None:
        self.participant.connection = None if self.participant.closed else self.participant.connection
        current = asyncio.current_task()
        self._tasks.cancel()
        if self._grace_task is not None and self._grace_task is not current:
            self._grace_task.cancel()
        await self.media.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._tasks.spawn(coro)

    # ------------------------------------------------------------ join/resume

    async def _joined(self) -> None:
        self.send(rtc.SignalResponse(join=self.server.join_response(self)))
        self.send(rtc.SignalResponse(refresh_token=self.refresh_token()))
        self._spawn(self._refresh_periodically())
        self._spawn(self._join_deadline())
        for add in self.params.add_track_requests:
            await self._add_track(add)
        if self.subscriber_primary:
            await self.media.start()
        if self.params.publisher_offer is not None:
            await self.media.handle_offer(self.params.publisher_offer)
        if self.auto_subscribe:
            for publisher in self.room:
                if publisher is not self.participant:
                    for track in publisher.info.tracks:
                        if track.sid in publisher.media_sources:
                            self.subscribe(publisher, track)

    async def _resumed(self) -> None:
        cfg = self.server
        self.send(
            rtc.SignalResponse(
                reconnect=rtc.ReconnectResponse(
                    ice_servers=cfg.ice_servers(),
                    client_configuration=models.ClientConfiguration(),
                    server_info=cfg.server_info(),
                    last_message_seq=0,
                )
            )
        )
        everyone = [p.info for p in self.room if not p.hidden or p is self.participant]
        self.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=everyone)))
        self.send(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=self.room.info)))
        if self.subscriber_primary:
            await self.media.renegotiate()

    async def _join_deadline(self) -> None:
        await asyncio.sleep(self.server.config.join_timeout_s)
        if not self._ever_connected and not self.participant.closed:
            log.info(
                "join timeout: PeerConnection never connected room=%s identity=%s",
                self.room.name,
                self.participant.identity,
            )
            self.close_with_leave(models.JOIN_FAILURE, rtc.LeaveRequest.DISCONNECT)

    def refresh_token(self) -> str:
        return self.server.mint(self)

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.server.config.refresh_interval_s)
            self.send(rtc.SignalResponse(refresh_token=self.refresh_token()))

    # ------------------------------------------------------------------ media

    def _send_sdp(self, response: rtc.SignalResponse) -> None:
        """Forward the media layer's offer/answer, then trickle our candidates like LiveKit does."""
        self.send(response)
        kind = response.WhichOneof("message")
        if kind not in ("offer", "answer"):
            return
        sd: rtc.SessionDescription = getattr(response, kind)
        target = (
            rtc.SUBSCRIBER if kind == "offer" and self.params.mode is MediaMode.DUAL_PC else rtc.PUBLISHER
        )
        for trickle in trickles_from_sdp(sd.sdp, target):
            self.send(rtc.SignalResponse(trickle=trickle))

    def _on_connected(self) -> None:
        self._ever_connected = True
        info = self.participant.info
        if info.state != models.ParticipantInfo.ACTIVE:
            info.state = models.ParticipantInfo.ACTIVE
            self.room.bump(self.participant)

    def _on_track(self, track_id: str, track: Any) -> None:
        announced = self._pending_tracks.get(track_id)
        if announced is None:
            # Fall back to the only announced track of that kind: some SDKs use a stream id instead.
            kind = models.AUDIO if getattr(track, "kind", "") == "audio" else models.VIDEO
            candidates = [t for t in self._pending_tracks.values() if t.type == kind]
            announced = candidates[0] if len(candidates) == 1 else None
        if announced is None:
            log.warning("unannounced track %s from identity=%s", track_id, self.participant.identity)
            return
        self._pending_tracks = {c: t for c, t in self._pending_tracks.items() if t is not announced}
        self.room.attach_source(self.participant, announced.sid, track)

    async def _subscribe(self, publisher: SimParticipant, track: models.TrackInfo) -> None:
        source = publisher.media_sources.get(track.sid)
        if source is None:
            # Announced, media not here yet (a single-PC client's track arrives after track_published).
            publisher.awaiting_media.setdefault(track.sid, set()).add(self.participant.identity)
            return
        if track.mime_type.lower() in UNSUPPORTED_CODECS and not self.server.config.offer_unsupported_codecs:
            self.send(
                rtc.SignalResponse(
                    subscription_response=rtc.SubscriptionResponse(
                        track_sid=track.sid, err=models.SE_CODEC_UNSUPPORTED
                    )
                )
            )
            return
        subscribers = publisher.subscribed_by.setdefault(track.sid, set())
        if self.participant.identity in subscribers:
            return
        first = not subscribers
        subscribers.add(self.participant.identity)
        # In the publisher's codec, as LiveKit forwards it (aiortc's default for VP8 / opus).
        await self.media.add_subscribed_track(publisher.sid, track.sid, source, codec=track.mime_type)
        if first:
            publisher.deliver(rtc.SignalResponse(track_subscribed=rtc.TrackSubscribed(track_sid=track.sid)))

    def _on_data(self, payload: bytes, label: str) -> None:
        sender = self.participant
        if not sender.info.permission.can_publish_data:
            return  # LiveKit drops data from participants without canPublishData, silently
        if label not in DATA_LABELS:
            for other in self.room.connected():
                if other is not sender and other.connection is not None:
                    other.connection.send_data(payload, label)
            return
        packet = models.DataPacket()
        try:
            packet.ParseFromString(payload)
        except DecodeError:
            log.warning("undecodable DataPacket from identity=%s", sender.identity)
            return
        self.room.data_received.append((sender.identity, packet, label))
        forward_data(self.room, sender, packet, label)

    # --------------------------------------------------------------- requests

    async def _offer(self, sd: rtc.SessionDescription) -> None:
        await self.media.handle_offer(sd)

    async def _answer(self, sd: rtc.SessionDescription) -> None:
        await self.media.handle_answer(sd)

    async def _trickle(self, trickle: rtc.TrickleRequest) -> None:
        try:
            json.loads(trickle.candidateInit)
        except ValueError:
            self.send(
                request_response(rtc.RequestResponse.UNCLASSIFIED_ERROR, "invalid candidate", trickle=trickle)
            )
            return
        await self.media.handle_trickle(trickle)

    async def _add_track(self, req: rtc.AddTrackRequest) -> None:
        if not self.participant.info.permission.can_publish:
            self.send(
                request_response(
                    rtc.RequestResponse.NOT_ALLOWED, "does not have permission to publish", add_track=req
                )
            )
            return
        mime = "audio/opus" if req.type == models.AUDIO else "video/VP8"
        track = models.TrackInfo(
            sid=new_sid("TR_"),
            type=req.type,
            name=req.name,
            muted=req.muted,
            width=req.width,
            height=req.height,
            source=req.source,
            mime_type=mime,
            stream=req.stream,
            # As LiveKit: the announced layers, also on the one codec it synthesises for a video track.
            layers=list(req.layers),
            codecs=[
                models.SimulcastCodecInfo(
                    mime_type=mime, cid=req.cid, layers=list(req.layers) if req.type == models.VIDEO else []
                )
            ],
            audio_features=list(req.audio_features),
        )
        self._pending_tracks[req.cid] = track
        published = rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(cid=req.cid, track=track))
        delay = self.server.refusals.track_published_delay_s
        if delay:
            asyncio.get_running_loop().call_later(delay, self.send, published)
        else:
            self.send(published)
        self.room.add_track(self.participant, track, None)

    async def _mute(self, req: rtc.MuteTrackRequest) -> None:
        try:
            self.room.set_muted(self.participant, req.sid, req.muted)
        except NotFound:
            self.send(request_response(rtc.RequestResponse.NOT_FOUND, "track not found", mute=req))
            return
        self._ok(mute=req)

    async def _subscription(self, req: rtc.UpdateSubscription) -> None:
        sids = list(req.track_sids) + [sid for pt in req.participant_tracks for sid in pt.track_sids]
        for sid in sids:
            try:
                publisher, track = self.room.find_track(sid)
            except NotFound:
                self.send(
                    rtc.SignalResponse(
                        subscription_response=rtc.SubscriptionResponse(
                            track_sid=sid, err=models.SE_TRACK_NOTFOUND
                        )
                    )
                )
                continue
            if req.subscribe:
                self.subscribe(publisher, track)
            else:
                publisher.subscribed_by.get(sid, set()).discard(self.participant.identity)
                self.unsubscribe(sid)

    async def _track_setting(self, req: rtc.UpdateTrackSettings) -> None:
        for sid in req.track_sids:
            try:
                publisher, _ = self.room.find_track(sid)
            except NotFound:
                continue
            state = rtc.StreamState.PAUSED if req.disabled else rtc.StreamState.ACTIVE
            self.send(
                rtc.SignalResponse(
                    stream_state_update=rtc.StreamStateUpdate(
                        stream_states=[
                            rtc.StreamStateInfo(participant_sid=publisher.sid, track_sid=sid, state=state)
                        ]
                    )
                )
            )

    async def _leave(self, req: rtc.LeaveRequest) -> None:
        self.close_with_leave(models.CLIENT_INITIATED, rtc.LeaveRequest.DISCONNECT)

    async def _ignore(self, message: Any) -> None:
        return None

    async def _subscription_permission(self, req: rtc.SubscriptionPermission) -> None:
        allowed_by_track: dict[str, set[str]] = {}
        for perm in req.track_permissions:
            for sid in perm.track_sids or [t.sid for t in self.participant.info.tracks]:
                allowed_by_track.setdefault(sid, set()).add(perm.participant_identity)
        for other in self.room.connected():
            if other is self.participant:
                continue
            for track in self.participant.info.tracks:
                allowed = req.all_participants or other.identity in allowed_by_track.get(track.sid, set())
                other.deliver(
                    rtc.SignalResponse(
                        subscription_permission_update=rtc.SubscriptionPermissionUpdate(
                            participant_sid=self.participant.sid, track_sid=track.sid, allowed=allowed
                        )
                    )
                )

    async def _sync_state(self, req: rtc.SyncState) -> None:
        known = {t.sid for t in self.participant.info.tracks}
        if any(pub.track.sid not in known for pub in req.publish_tracks):
            self.close_with_leave(models.STATE_MISMATCH, rtc.LeaveRequest.RECONNECT)

    async def _simulate(self, req: rtc.SimulateScenario) -> None:
        kind = req.WhichOneof("scenario")
        if kind == "speaker_update":
            self.room.broadcast(speakers([(self.participant.sid, 0.8, True)]))
        elif kind in ("node_failure", "server_leave"):
            self.close_with_leave(models.SERVER_SHUTDOWN, rtc.LeaveRequest.RESUME)
        elif kind == "migration":
            self.close_with_leave(models.MIGRATION, rtc.LeaveRequest.RESUME)
        elif kind == "leave_request_full_reconnect":
            self.close_with_leave(models.STATE_MISMATCH, rtc.LeaveRequest.RECONNECT)
        elif kind in ("disconnect_signal_on_resume", "disconnect_signal_on_resume_no_messages"):
            self.drop_socket()

    async def _ping(self, timestamp: int) -> None:
        self.send(rtc.SignalResponse(pong=now_ms()))

    async def _update_metadata(self, req: rtc.UpdateParticipantMetadata) -> None:
        info = self.participant.info
        if not info.permission.can_update_metadata:
            self.send(
                request_response(
                    rtc.RequestResponse.NOT_ALLOWED,
                    "does not have permission to update own metadata",
                    request_id=req.request_id,
                    update_metadata=req,
                )
            )
            return
        if req.metadata:
            info.metadata = req.metadata
        if req.name:
            info.name = req.name
        for key, value in req.attributes.items():
            if value:
                info.attributes[key] = value
            else:
                info.attributes.pop(key, None)
        self.room.bump(self.participant)
        self.send(rtc.SignalResponse(refresh_token=self.refresh_token()))
        self._ok(request_id=req.request_id, update_metadata=req)

    async def _ping_req(self, ping: rtc.Ping) -> None:
        self.send(
            rtc.SignalResponse(pong_resp=rtc.Pong(last_ping_timestamp=ping.timestamp, timestamp=now_ms()))
        )

    async def _update_audio_track(self, req: rtc.UpdateLocalAudioTrack) -> None:
        try:
            track = self.participant.track(req.track_sid)
        except NotFound:
            self.send(
                request_response(rtc.RequestResponse.NOT_FOUND, "track not found", update_audio_track=req)
            )
            return
        del track.audio_features[:]
        track.audio_features.extend(req.features)
        self.room.bump(self.participant)
        self._ok(update_audio_track=req)

    async def _update_video_track(self, req: rtc.UpdateLocalVideoTrack) -> None:
        try:
            track = self.participant.track(req.track_sid)
        except NotFound:
            self.send(
                request_response(rtc.RequestResponse.NOT_FOUND, "track not found", update_video_track=req)
            )
            return
        track.width, track.height = req.width, req.height
        self.room.bump(self.participant)
        self._ok(update_video_track=req)

    async def _publish_data_track(self, req: rtc.PublishDataTrackRequest) -> None:
        tracks = self.participant.info.data_tracks
        reason, message = rtc.RequestResponse.OK, ""
        if not 0 < req.pub_handle < 0x10000:
            reason, message = rtc.RequestResponse.INVALID_HANDLE, "pub_handle must be a non-zero u16"
        elif not req.name or len(req.name) > 256:
            reason, message = rtc.RequestResponse.INVALID_NAME, "name must be 1..256 characters"
        elif any(t.pub_handle == req.pub_handle for t in tracks):
            reason, message = rtc.RequestResponse.DUPLICATE_HANDLE, "pub_handle already published"
        elif any(t.name == req.name for t in tracks):
            reason, message = rtc.RequestResponse.DUPLICATE_NAME, "name already published"
        if reason != rtc.RequestResponse.OK:
            self.send(request_response(reason, message, publish_data_track=req))
            return
        info = models.DataTrackInfo(
            pub_handle=req.pub_handle, sid=new_sid("DTR_"), name=req.name, encryption=req.encryption
        )
        if req.HasField("frame_encoding"):
            info.frame_encoding.CopyFrom(req.frame_encoding)
        if req.HasField("schema"):
            info.schema.CopyFrom(req.schema)
        tracks.append(info)
        self.send(rtc.SignalResponse(publish_data_track_response=rtc.PublishDataTrackResponse(info=info)))
        self.room.bump(self.participant)

    async def _unpublish_data_track(self, req: rtc.UnpublishDataTrackRequest) -> None:
        tracks = self.participant.info.data_tracks
        found = next((t for t in tracks if t.pub_handle == req.pub_handle), None)
        if found is None:
            self.send(
                request_response(
                    rtc.RequestResponse.NOT_FOUND, "data track not found", unpublish_data_track=req
                )
            )
            return
        info = models.DataTrackInfo()
        info.CopyFrom(found)
        tracks.remove(found)
        self.send(rtc.SignalResponse(unpublish_data_track_response=rtc.UnpublishDataTrackResponse(info=info)))
        self.room.bump(self.participant)

    async def _update_data_subscription(self, req: rtc.UpdateDataSubscription) -> None:
        handles = rtc.DataTrackSubscriberHandles()
        for n, update in enumerate(req.updates, start=1):
            if not update.subscribe:
                continue
            for publisher in self.room:
                for track in publisher.info.data_tracks:
                    if track.sid == update.track_sid:
                        handles.sub_handles[n].publisher_identity = publisher.identity
                        handles.sub_handles[n].publisher_sid = publisher.sid
                        handles.sub_handles[n].track_sid = track.sid
        self.send(rtc.SignalResponse(data_track_subscriber_handles=handles))

    async def _store_data_blob(self, req: rtc.StoreDataBlobRequest) -> None:
        key = blob_key(req.blob.key)
        if len(req.blob.contents) > 50_000:
            self.send(
                request_response(
                    rtc.RequestResponse.LIMIT_EXCEEDED, "blob larger than 50 kB", request_id=req.request_id
                )
            )
            return
        self.participant.data_blobs[key] = bytes(req.blob.contents)
        self.send(
            rtc.SignalResponse(
                store_data_blob_response=rtc.StoreDataBlobResponse(
                    request_id=req.request_id, key=req.blob.key
                )
            )
        )

    async def _get_data_blob(self, req: rtc.GetDataBlobRequest) -> None:
        try:
            owner = self.room.participant(req.participant_identity or self.participant.identity)
            contents = owner.data_blobs[blob_key(req.key)]
        except (NotFound, KeyError):
            self.send(
                request_response(rtc.RequestResponse.NOT_FOUND, "blob not found", request_id=req.request_id)
            )
            return
        blob = models.DataBlob(key=req.key, contents=contents)
        self.send(
            rtc.SignalResponse(
                get_data_blob_response=rtc.GetDataBlobResponse(request_id=req.request_id, blob=blob)
            )
        )

    def _ok(self, *, request_id: int = 0, **echo: Any) -> None:
        if self.params.protocol > 14:  # LiveKit only confirms success to protocol 15+
            self.send(request_response(rtc.RequestResponse.OK, "", request_id=request_id, **echo))


Handler = Callable[[ClientSession, Any], Coroutine[Any, Any, None]]

_HANDLERS: Final[dict[str, Handler]] = {
    "offer": ClientSession._offer,
    "answer": ClientSession._answer,
    "trickle": ClientSession._trickle,
    "add_track": ClientSession._add_track,
    "mute": ClientSession._mute,
    "subscription": ClientSession._subscription,
    "track_setting": ClientSession._track_setting,
    "leave": ClientSession._leave,
    "update_layers": ClientSession._ignore,  # deprecated in LiveKit; accepted and ignored
    "subscription_permission": ClientSession._subscription_permission,
    "sync_state": ClientSession._sync_state,
    "simulate": ClientSession._simulate,
    "ping": ClientSession._ping,
    "update_metadata": ClientSession._update_metadata,
    "ping_req": ClientSession._ping_req,
    "update_audio_track": ClientSession._update_audio_track,
    "update_video_track": ClientSession._update_video_track,
    "publish_data_track_request": ClientSession._publish_data_track,
    "unpublish_data_track_request": ClientSession._unpublish_data_track,
    "update_data_subscription": ClientSession._update_data_subscription,
    "store_data_blob_request": ClientSession._store_data_blob,
    "get_data_blob_request": ClientSession._get_data_blob,
}


# ---------------------------------------------------------------------- helpers


def leave(reason: Reason, action: Action) -> rtc.SignalResponse:
    return rtc.SignalResponse(
        leave=rtc.LeaveRequest(
            reason=reason, action=action, can_reconnect=action != rtc.LeaveRequest.DISCONNECT
        )
    )


def speakers(levels: list[tuple[str, float, bool]]) -> rtc.SignalResponse:
    return rtc.SignalResponse(
        speakers_changed=rtc.SpeakersChanged(
            speakers=[
                models.SpeakerInfo(sid=sid, level=level, active=active) for sid, level, active in levels
            ]
        )
    )


def request_response(
    reason: rtc.RequestResponse.Reason, message: str, *, request_id: int = 0, **echo: Any
) -> rtc.SignalResponse:
    return rtc.SignalResponse(
        request_response=rtc.RequestResponse(request_id=request_id, reason=reason, message=message, **echo)
    )


def blob_key(key: models.DataBlobKey) -> str:
    return key.generic or f"schema:{key.schema_id.name}"


def trickles_from_sdp(sdp: str, target: rtc.SignalTarget) -> list[rtc.TrickleRequest]:
    """Our candidates as LiveKit trickles them: JSON RTCIceCandidateInit, ``final`` on the last one."""
    mid, index, ufrag = "0", 0, None
    found: list[tuple[str, str, int]] = []
    section = -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            section += 1
        elif line.startswith("a=mid:") and section == 0:
            mid = line[6:]
        elif line.startswith("a=ice-ufrag:") and ufrag is None:
            ufrag = line[12:]
        elif line.startswith("a=candidate:") and section == 0:
            found.append((line[2:], mid, index))
    trickles = [
        rtc.TrickleRequest(
            candidateInit=json.dumps(
                {"candidate": cand, "sdpMid": mid, "sdpMLineIndex": idx, "usernameFragment": ufrag}
            ),
            target=target,
        )
        for cand, _, idx in found
    ]
    if trickles:
        trickles[-1].final = True
    return trickles


def forward_data(room: SimRoom, sender: SimParticipant | None, packet: models.DataPacket, label: str) -> int:
    """Deliver ``packet`` from ``sender`` (None: the server itself, as RoomService.SendData) as LiveKit
    does; return how many clients received it."""
    kind = packet.WhichOneof("value")
    if kind in ("rpc_ack", "rpc_response"):
        reply = packet.rpc_ack if kind == "rpc_ack" else packet.rpc_response
        handler = room.rpc_replies.get(reply.request_id)
        if handler is not None:  # the answer to a server-initiated RPC stays on the server
            handler(packet)
            return 0
    if sender is None:
        packet.participant_identity = packet.participant_sid = ""
    elif not (
        sender.info.kind == models.ParticipantInfo.AGENT and kind in ("transcription", "chat_message")
    ):  # agents send transcriptions and chat on behalf of others: their identity stays
        packet.participant_identity = "" if sender.hidden else sender.identity
        packet.participant_sid = "" if sender.hidden else sender.sid
    packet.kind = models.DataPacket.RELIABLE if label == "_reliable" else models.DataPacket.LOSSY
    destinations = set(packet.destination_identities)
    if kind == "user":
        destinations |= set(packet.user.destination_identities)
    payload = packet.SerializeToString()
    delivered = 0
    for other in room.connected():
        if other is sender or other.connection is None:
            continue
        if destinations and other.identity not in destinations:
            continue
        if other.connection.send_data(payload, label):
            delivered += 1
    return delivered
