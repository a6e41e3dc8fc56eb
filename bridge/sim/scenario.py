"""The scenario API: make any room event happen, from Python, YAML files or the admin endpoints.

Every action is one method of :class:`Scenario`; :data:`ACTIONS` maps the action names used in YAML
and JSON (``{"action": "speak", "identity": "alice", "level": 0.8}``) onto them, so all three ways in
share one implementation. Each docstring says which ``SignalResponse`` variants the action causes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, cast

import yaml
from livekit.protocol import models, rtc

from bridge.errors import BadRequest, NotFound
from bridge.sim.room import SimParticipant, SimRoom, new_sid, now_ms
from bridge.sim.server import SimServer
from bridge.sim.session import ClientSession, forward_data, speakers

log = logging.getLogger(__name__)

_SOURCES: Final = {
    "camera": models.CAMERA,
    "microphone": models.MICROPHONE,
    "screen_share": models.SCREEN_SHARE,
    "screen_share_audio": models.SCREEN_SHARE_AUDIO,
}
_QUALITY: Final = {
    "poor": models.POOR,
    "good": models.GOOD,
    "excellent": models.EXCELLENT,
    "lost": models.LOST,
}
_ACTIONS: Final = {
    "disconnect": rtc.LeaveRequest.DISCONNECT,
    "resume": rtc.LeaveRequest.RESUME,
    "reconnect": rtc.LeaveRequest.RECONNECT,
}


def _reason(name: str) -> models.DisconnectReason:
    try:
        return cast(models.DisconnectReason, models.DisconnectReason.Value(name.upper()))
    except ValueError:
        raise BadRequest(f"unknown disconnect reason {name!r}") from None


class Scenario:
    """Scripted events against one :class:`SimServer` (see module docstring)."""

    def __init__(self, server: SimServer) -> None:
        self.server = server

    def _room(self, room: str) -> SimRoom:
        return self.server.room(room)

    def _client(self, room: str, identity: str) -> ClientSession:
        return self.server.session(room, identity)

    def _participant(self, room: str, identity: str) -> SimParticipant:
        return self._room(room).participant(identity)

    # ------------------------------------------------------------ participants

    def join(
        self,
        room: str,
        identity: str,
        *,
        name: str = "",
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
        kind: str = "standard",
    ) -> str:
        """A simulated participant joins: ``update``. Returns its sid."""
        p = self._room(room).add(
            identity,
            name=name or identity,
            metadata=metadata,
            attributes=dict(attributes or {}),
            kind=cast(models.ParticipantInfo.Kind, models.ParticipantInfo.Kind.Value(kind.upper())),
        )
        return p.sid

    def leave(self, room: str, identity: str, *, reason: str = "client_initiated") -> None:
        """A participant leaves: ``update`` with state DISCONNECTED (a client also gets ``leave``)."""
        p = self._participant(room, identity)
        if isinstance(p.connection, ClientSession):
            p.connection.close_with_leave(_reason(reason), rtc.LeaveRequest.DISCONNECT)
        else:
            self._room(room).remove(p, _reason(reason))

    def set_metadata(
        self,
        room: str,
        identity: str,
        *,
        metadata: str | None = None,
        name: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        """Metadata, name or attributes change (as UpdateParticipant would): ``update``, and a
        ``refresh_token`` when the participant is a connected client."""
        p = self._participant(room, identity)
        if metadata is not None:
            p.info.metadata = metadata
        if name is not None:
            p.info.name = name
        for key, value in (attributes or {}).items():
            if value:
                p.info.attributes[key] = value
            else:
                p.info.attributes.pop(key, None)
        self._room(room).bump(p)
        if isinstance(p.connection, ClientSession):
            p.deliver(rtc.SignalResponse(refresh_token=p.connection.refresh_token()))

    def set_permission(
        self,
        room: str,
        identity: str,
        *,
        can_publish: bool | None = None,
        can_subscribe: bool | None = None,
        can_publish_data: bool | None = None,
    ) -> None:
        """Permissions change: ``update``."""
        p = self._participant(room, identity)
        perm = p.info.permission
        for attr, value in (
            ("can_publish", can_publish),
            ("can_subscribe", can_subscribe),
            ("can_publish_data", can_publish_data),
        ):
            if value is not None:
                setattr(perm, attr, value)
        self._room(room).bump(p)

    # ----------------------------------------------------------------- tracks

    def publish(
        self,
        room: str,
        identity: str,
        *,
        kind: str = "audio",
        name: str = "",
        source: str = "",
        muted: bool = False,
        mime_type: str = "",
        synthetic: bool = True,
        encoded: bool = False,
    ) -> str:
        """A simulated participant publishes a track (a tone or a test pattern): ``update`` for
        everyone, and an ``offer`` to clients that auto-subscribe. Returns the track sid.

        ``encoded`` (audio only): the tone is opus packets encoded once per process and only
        packetized per subscriber (no encoder per track, one shared ticker), for load tests."""
        from bridge.sim.tracks import TrackSource  # aiortc media only when used

        p = self._participant(room, identity)
        is_audio = kind == "audio"
        if encoded and not is_audio:
            raise BadRequest("encoded: only audio tracks have a pre-encoded source")
        track = models.TrackInfo(
            sid=new_sid("TR_"),
            type=models.AUDIO if is_audio else models.VIDEO,
            name=name or ("microphone" if is_audio else "camera"),
            muted=muted,
            source=_SOURCES.get(source or ("microphone" if is_audio else "camera"), models.UNKNOWN),
            mime_type=mime_type or ("audio/opus" if is_audio else "video/VP8"),
            width=0 if is_audio else 320,
            height=0 if is_audio else 240,
        )
        track.codecs.add(mime_type=track.mime_type, mid="")
        factory: Callable[[str], TrackSource] = TrackSource.pattern
        if is_audio:
            factory = TrackSource.encoded_tone if encoded else TrackSource.tone
        media = factory(track.sid) if synthetic else None
        self._room(room).add_track(p, track, media)
        return track.sid

    def unpublish(self, room: str, identity: str, *, track: str) -> None:
        """A track is unpublished: ``update``; a client publisher also gets ``track_unpublished``."""
        p = self._participant(room, identity)
        self._room(room).remove_track(p, track)
        p.deliver(rtc.SignalResponse(track_unpublished=rtc.TrackUnpublishedResponse(track_sid=track)))

    def mute(self, room: str, identity: str, *, track: str, muted: bool = True) -> None:
        """A track is muted: ``update``; a client publisher also gets ``mute`` (server-side mute)."""
        p = self._participant(room, identity)
        self._room(room).set_muted(p, track, muted)
        p.deliver(rtc.SignalResponse(mute=rtc.MuteTrackRequest(sid=track, muted=muted)))

    def subscribed(self, room: str, identity: str, *, track: str) -> None:
        """Someone subscribed to a client's track for the first time: ``track_subscribed``."""
        self._participant(room, identity).deliver(
            rtc.SignalResponse(track_subscribed=rtc.TrackSubscribed(track_sid=track))
        )

    def permission_update(
        self, room: str, identity: str, *, publisher: str, track: str, allowed: bool
    ) -> None:
        """A client's permission to a remote track changed: ``subscription_permission_update``."""
        pub = self._participant(room, publisher)
        self._participant(room, identity).deliver(
            rtc.SignalResponse(
                subscription_permission_update=rtc.SubscriptionPermissionUpdate(
                    participant_sid=pub.sid, track_sid=track, allowed=allowed
                )
            )
        )

    def stream_state(
        self, room: str, identity: str, *, publisher: str, track: str, paused: bool = True
    ) -> None:
        """Congestion control paused or resumed a subscribed stream: ``stream_state_update``."""
        pub = self._participant(room, publisher)
        state = rtc.StreamState.PAUSED if paused else rtc.StreamState.ACTIVE
        self._participant(room, identity).deliver(
            rtc.SignalResponse(
                stream_state_update=rtc.StreamStateUpdate(
                    stream_states=[rtc.StreamStateInfo(participant_sid=pub.sid, track_sid=track, state=state)]
                )
            )
        )

    def subscribed_quality(
        self, room: str, identity: str, *, track: str, qualities: Sequence[str] = ("low", "medium")
    ) -> None:
        """Dynacast: which layers of a client's track are wanted: ``subscribed_quality_update``."""
        wanted = {q.upper() for q in qualities}
        layers = [rtc.SubscribedQuality(quality=q, enabled=q in wanted) for q in ("LOW", "MEDIUM", "HIGH")]
        self._participant(room, identity).deliver(
            rtc.SignalResponse(
                subscribed_quality_update=rtc.SubscribedQualityUpdate(
                    track_sid=track,
                    subscribed_qualities=layers,
                    subscribed_codecs=[rtc.SubscribedCodec(codec="vp8", qualities=layers)],
                )
            )
        )

    def subscribed_audio_codec(
        self, room: str, identity: str, *, track: str, codecs: Sequence[str] = ("opus",)
    ) -> None:
        """Subscribers want these audio codecs of a client's track: ``subscribed_audio_codec_update``."""
        self._participant(room, identity).deliver(
            rtc.SignalResponse(
                subscribed_audio_codec_update=rtc.SubscribedAudioCodecUpdate(
                    track_sid=track,
                    subscribed_audio_codecs=[
                        models.SubscribedAudioCodec(codec=c, enabled=True) for c in codecs
                    ],
                )
            )
        )

    def subscription_error(
        self, room: str, identity: str, *, track: str, error: str = "se_codec_unsupported"
    ) -> None:
        """A subscription failed: ``subscription_response``."""
        self._participant(room, identity).deliver(
            rtc.SignalResponse(
                subscription_response=rtc.SubscriptionResponse(track_sid=track, err=error.upper())
            )
        )

    def media_sections(self, room: str, identity: str, *, audios: int = 1, videos: int = 0) -> None:
        """Ask a single-PC client for more receive slots: ``media_sections_requirement``."""
        self._participant(room, identity).deliver(
            rtc.SignalResponse(
                media_sections_requirement=rtc.MediaSectionsRequirement(num_audios=audios, num_videos=videos)
            )
        )

    # ------------------------------------------------------------- data tracks

    def publish_data_track(self, room: str, identity: str, *, name: str, handle: int = 1) -> str:
        """A simulated participant publishes a data track: ``update`` (ParticipantInfo.data_tracks)."""
        p = self._participant(room, identity)
        info = models.DataTrackInfo(pub_handle=handle, sid=new_sid("DTR_"), name=name)
        p.info.data_tracks.append(info)
        self._room(room).bump(p)
        return info.sid

    def data_track_handles(self, room: str, identity: str) -> None:
        """Map every data track in the room to a handle for a client: ``data_track_subscriber_handles``."""
        handles = rtc.DataTrackSubscriberHandles()
        n = 0
        for publisher in self._room(room):
            for track in publisher.info.data_tracks:
                n += 1
                entry = handles.sub_handles[n]
                entry.publisher_identity, entry.publisher_sid, entry.track_sid = (
                    publisher.identity,
                    publisher.sid,
                    track.sid,
                )
        self._participant(room, identity).deliver(rtc.SignalResponse(data_track_subscriber_handles=handles))

    # ---------------------------------------------------------- room activity

    def speak(self, room: str, levels: Mapping[str, float]) -> None:
        """Active speakers change: ``speakers_changed`` with the deltas only (level 0 = stopped)."""
        r = self._room(room)
        changed: list[tuple[str, float, bool]] = []
        for identity, level in levels.items():
            p = r.participant(identity)
            if abs(p.speaker_level - level) > 1e-6:
                p.speaker_level = level
                changed.append((p.sid, level, level > 0))
        if changed:
            r.broadcast(speakers(changed))

    def quality(self, room: str, qualities: Mapping[str, str]) -> None:
        """Connection quality changes: ``connection_quality`` (only on change, as LiveKit)."""
        r = self._room(room)
        updates = []
        for identity, name in qualities.items():
            p = r.participant(identity)
            q = _QUALITY[name.lower()]
            if q != p.quality:
                p.quality = q
                score = {models.POOR: 1.5, models.GOOD: 3.5, models.EXCELLENT: 4.8, models.LOST: 0.0}[q]
                updates.append(rtc.ConnectionQualityInfo(participant_sid=p.sid, quality=q, score=score))
        if updates:
            r.broadcast(rtc.SignalResponse(connection_quality=rtc.ConnectionQualityUpdate(updates=updates)))

    def set_room_metadata(self, room: str, *, metadata: str) -> None:
        """Room metadata changes: ``room_update``."""
        self._room(room).set_metadata(metadata)

    def send_data(
        self,
        room: str,
        identity: str,
        *,
        kind: str = "user",
        payload: str = "",
        topic: str = "",
        destinations: Sequence[str] = (),
        reliable: bool = True,
        **fields: Any,
    ) -> int:
        """A participant sends a DataPacket of any variant over the data channel; returns how many
        clients received it. ``payload`` is text (or ``base64:``-prefixed bytes)."""
        packet = build_data_packet(kind, payload=payload, topic=topic, destinations=destinations, **fields)
        r = self._room(room)
        return forward_data(r, r.participant(identity), packet, "_reliable" if reliable else "_lossy")

    # -------------------------------------------------------- session control

    def kick(self, room: str, identity: str) -> None:
        """RemoveParticipant: ``leave{PARTICIPANT_REMOVED, DISCONNECT}``."""
        self._client(room, identity).close_with_leave(models.PARTICIPANT_REMOVED, rtc.LeaveRequest.DISCONNECT)

    def server_leave(
        self, room: str, identity: str, *, reason: str = "server_shutdown", action: str = "disconnect"
    ) -> None:
        """The server sends ``leave`` with any reason and action (DISCONNECT / RESUME / RECONNECT)."""
        self._client(room, identity).close_with_leave(_reason(reason), _ACTIONS[action.lower()])

    def drop_socket(self, room: str, identity: str) -> None:
        """The TCP connection breaks with no close frame (the participant stays, resumable)."""
        self._client(room, identity).drop_socket()

    def silence(self, room: str, identity: str) -> None:
        """The socket stays open but nothing more is sent on it (not even pongs)."""
        self._client(room, identity).silent = True

    def refresh_token(self, room: str, identity: str) -> str:
        """Send a fresh token now: ``refresh_token``. Returns it."""
        session = self._client(room, identity)
        token = session.refresh_token()
        session.send(rtc.SignalResponse(refresh_token=token))
        return token

    def move(self, room: str, identity: str, *, to_room: str) -> None:
        """MoveParticipant: ``room_moved`` with the new room, a token for it and its participants."""
        session = self._client(room, identity)
        source, target = self._room(room), self._room(to_room)
        participant = session.participant
        del source.participants[identity]
        source.broadcast_update([participant])
        participant.info.sid = new_sid("PA_")
        participant.info.version += 1
        participant.room = target
        target.participants[identity] = participant
        session.room = target
        if participant.grants is not None:
            claims = dict(participant.grants.claims)
            video = dict(claims.get("video") or {})
            video["room"] = to_room
            claims["video"] = video
            participant.grants = type(participant.grants)(
                **{**_fields(participant.grants), "room": to_room, "claims": claims}
            )
        target.broadcast_update([participant])
        session.send(
            rtc.SignalResponse(
                room_moved=rtc.RoomMovedResponse(
                    room=target.info,
                    token=session.refresh_token(),
                    participant=participant.info,
                    other_participants=target.visible_infos(exclude=participant),
                )
            )
        )

    def refuse_resumes(self, refuse: bool = True) -> None:
        """From now on answer resumes with ``leave{STATE_MISMATCH, RECONNECT}``."""
        self.server.refusals.resumes = refuse

    def refuse_joins(self, status: int | None = 503) -> None:
        """From now on answer every upgrade with this HTTP status (None to stop)."""
        self.server.refusals.joins_status = status

    def shutdown(self, *, action: str = "reconnect") -> None:
        """The server is stopping: ``leave{SERVER_SHUTDOWN}`` to every client."""
        for room in list(self.server.rooms.values()):
            for p in room.connected():
                if isinstance(p.connection, ClientSession):
                    p.connection.close_with_leave(models.SERVER_SHUTDOWN, _ACTIONS[action.lower()])

    # ------------------------------------------------------------------ pacing

    async def wait(self, seconds: float) -> None:
        """Pause a script (YAML and admin pacing only)."""
        await asyncio.sleep(seconds)

    async def wait_for_client(self, room: str, *, count: int = 1, timeout_s: float = 30.0) -> None:
        """Block a script until ``count`` clients are connected to ``room``."""
        deadline = time.monotonic() + timeout_s
        while len(self._room(room).connected()) < count:
            if time.monotonic() > deadline:
                raise NotFound(f"no {count} connected clients in room {room!r} after {timeout_s} s")
            await asyncio.sleep(0.05)

    # --------------------------------------------------------------- dispatch

    async def apply(self, step: Mapping[str, Any], *, room: str | None = None) -> Any:
        """Run one ``{"action": name, ...}`` step; ``room`` is the default room."""
        args = dict(step)
        name = args.pop("action", None)
        method = ACTIONS.get(str(name))
        if method is None:
            raise BadRequest(f"unknown scenario action {name!r}; known: {', '.join(sorted(ACTIONS))}")
        if "room" not in args and room is not None and name not in _ROOMLESS:
            args["room"] = room
        try:
            result = method(self, **args)
        except TypeError as exc:
            raise BadRequest(f"action {name!r}: {exc}") from None
        if asyncio.iscoroutine(result):
            result = await result
        return result

    async def run(self, steps: Sequence[Mapping[str, Any]], *, room: str | None = None) -> list[Any]:
        return [await self.apply(step, room=room) for step in steps]

    async def run_file(self, path: Path) -> list[Any]:
        """Run a YAML scenario: ``{room: NAME, steps: [{action: ..., ...}, ...]}``."""
        doc = yaml.safe_load(await asyncio.to_thread(path.read_text))
        if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
            raise BadRequest(f"{path}: a scenario is a mapping with a 'steps' list")
        return await self.run(doc["steps"], room=doc.get("room"))


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


Action = Callable[..., Any | Coroutine[Any, Any, Any]]

ACTIONS: Final[dict[str, Action]] = {
    name: getattr(Scenario, name)
    for name in (
        "join",
        "leave",
        "set_metadata",
        "set_permission",
        "publish",
        "unpublish",
        "mute",
        "subscribed",
        "permission_update",
        "stream_state",
        "subscribed_quality",
        "subscribed_audio_codec",
        "subscription_error",
        "media_sections",
        "publish_data_track",
        "data_track_handles",
        "speak",
        "quality",
        "set_room_metadata",
        "send_data",
        "kick",
        "server_leave",
        "drop_socket",
        "silence",
        "refresh_token",
        "move",
        "refuse_resumes",
        "refuse_joins",
        "shutdown",
        "wait",
        "wait_for_client",
    )
}
_ROOMLESS: Final = frozenset({"refuse_resumes", "refuse_joins", "shutdown", "wait"})


def _payload(text: str) -> bytes:
    if text.startswith("base64:"):
        return base64.b64decode(text[7:])
    return text.encode()


def build_data_packet(
    kind: str, *, payload: str = "", topic: str = "", destinations: Sequence[str] = (), **fields: Any
) -> models.DataPacket:
    """A DataPacket of variant ``kind`` with realistic fields; extra ``fields`` go into the variant."""
    packet = models.DataPacket(destination_identities=list(destinations))
    body = _payload(payload)
    ms = now_ms()
    if kind == "user":
        packet.user.CopyFrom(models.UserPacket(payload=body, topic=topic, **fields))
    elif kind == "chat_message":
        packet.chat_message.CopyFrom(
            models.ChatMessage(id=new_sid("CM_"), timestamp=ms, message=payload, **fields)
        )
    elif kind == "transcription":
        packet.transcription.CopyFrom(
            models.Transcription(
                transcribed_participant_identity=fields.pop("transcribed", ""),
                track_id=fields.pop("track", ""),
                segments=[
                    models.TranscriptionSegment(
                        id=new_sid("SG_"),
                        text=payload,
                        start_time=0,
                        end_time=1000,
                        final=True,
                        language="en",
                    )
                ],
                **fields,
            )
        )
    elif kind == "rpc_request":
        packet.rpc_request.CopyFrom(
            models.RpcRequest(
                id=fields.pop("id", new_sid("RPC_")),
                method=fields.pop("method", "ping"),
                payload=payload,
                response_timeout_ms=10_000,
                version=1,
                **fields,
            )
        )
    elif kind == "rpc_ack":
        packet.rpc_ack.CopyFrom(models.RpcAck(request_id=fields.pop("request_id", "RPC_1")))
    elif kind == "rpc_response":
        packet.rpc_response.CopyFrom(
            models.RpcResponse(request_id=fields.pop("request_id", "RPC_1"), payload=payload)
        )
    elif kind == "stream_header":
        header = models.DataStream.Header(
            stream_id=fields.pop("stream_id", "ST_1"),
            timestamp=ms,
            topic=topic or "lk.chat",
            mime_type="text/plain",
            total_length=len(body),
        )
        header.text_header.operation_type = models.DataStream.CREATE
        packet.stream_header.CopyFrom(header)
    elif kind == "stream_chunk":
        packet.stream_chunk.CopyFrom(
            models.DataStream.Chunk(
                stream_id=fields.pop("stream_id", "ST_1"), chunk_index=fields.pop("index", 0), content=body
            )
        )
    elif kind == "stream_trailer":
        packet.stream_trailer.CopyFrom(models.DataStream.Trailer(stream_id=fields.pop("stream_id", "ST_1")))
    elif kind == "sip_dtmf":
        packet.sip_dtmf.CopyFrom(models.SipDTMF(code=fields.pop("code", 1), digit=fields.pop("digit", "1")))
    elif kind == "metrics":
        packet.metrics.timestamp_ms = ms
    elif kind == "speaker":
        packet.speaker.CopyFrom(
            models.ActiveSpeakerUpdate(speakers=[models.SpeakerInfo(sid="PA_x", level=0.5, active=True)])
        )
    elif kind == "encrypted_packet":
        packet.encrypted_packet.CopyFrom(
            models.EncryptedPacket(
                encryption_type=models.Encryption.GCM, iv=b"\0" * 12, key_index=0, encrypted_value=body
            )
        )
    else:
        raise BadRequest(f"unknown DataPacket kind {kind!r}")
    return packet
