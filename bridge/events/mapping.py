"""SignalResponses and DataPackets of one room session in, CloudEvents out. Pure: no I/O, no clock.

Dispatch is by table. :data:`SIGNAL_SUBJECTS` and :data:`DATA_SUBJECTS` name every oneof variant
explicitly (a test proves they match livekit-protocol's descriptors), so a new LiveKit message fails a
test instead of flowing out unreviewed: each variant needs a decision on its ``subject`` and on whether
it carries credentials (:data:`REDACT`).

Protobuf mode keeps LiveKit's bytes as they are: the data of a signal event is sliced out of the frame
the server sent, never re-encoded, unless redaction had to change it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from google.protobuf import wrappers_pb2
from google.protobuf.message import Message
from livekit.protocol import models, rtc

from bridge.events import types
from bridge.events.cloudevent import JSON, PROTOBUF, CloudEvent, EventType, SessionContext, check_extensions
from bridge.events.jsonfmt import message_to_json

REDACTED: Final = "REDACTED"

Subject = Callable[[Any], str | None]


def _none(_: Any) -> str | None:
    return None


def _track_sid(m: Any) -> str | None:
    return m.track_sid or None


def _single_participant(update: rtc.ParticipantUpdate) -> str | None:
    identities = {p.identity for p in update.participants}
    return identities.pop() if len(identities) == 1 else None


def _first_stream(update: rtc.StreamStateUpdate) -> str | None:
    sids = {s.track_sid for s in update.stream_states}
    return sids.pop() if len(sids) == 1 else None


# subject per SignalResponse variant: the participant identity or track sid the event is about.
SIGNAL_SUBJECTS: Final[dict[str, Subject]] = {
    "join": lambda m: m.participant.identity or None,
    "answer": _none,
    "offer": _none,
    "trickle": _none,
    "update": _single_participant,
    "track_published": lambda m: m.track.sid or None,
    "leave": _none,
    "mute": lambda m: m.sid or None,
    "speakers_changed": _none,
    "room_update": _none,
    "connection_quality": lambda m: None,
    "stream_state_update": _first_stream,
    "subscribed_quality_update": _track_sid,
    "subscription_permission_update": _track_sid,
    "refresh_token": _none,
    "track_unpublished": _track_sid,
    "pong": _none,
    "reconnect": _none,
    "pong_resp": _none,
    "subscription_response": _track_sid,
    "request_response": _none,
    "track_subscribed": _track_sid,
    "room_moved": lambda m: m.participant.identity or None,
    "media_sections_requirement": _none,
    "subscribed_audio_codec_update": _track_sid,
    "publish_data_track_response": lambda m: m.info.sid or None,
    "unpublish_data_track_response": lambda m: m.info.sid or None,
    "data_track_subscriber_handles": _none,
    "store_data_blob_response": _none,
    "get_data_blob_response": _none,
}

# DataPacket variants: the subject is always the sender (stamped by the server).
DATA_SUBJECTS: Final[frozenset[str]] = frozenset(
    {
        "user",
        "speaker",
        "sip_dtmf",
        "transcription",
        "metrics",
        "chat_message",
        "rpc_request",
        "rpc_ack",
        "rpc_response",
        "stream_header",
        "stream_chunk",
        "stream_trailer",
        "encrypted_packet",
    }
)


def _redact_ice(servers: Sequence[rtc.ICEServer]) -> None:
    for server in servers:
        if server.username:
            server.username = REDACTED
        if server.credential:
            server.credential = REDACTED


def _redact_room(room: models.Room) -> None:
    if room.turn_password:
        room.turn_password = REDACTED


def _redact_join(m: rtc.JoinResponse) -> None:
    _redact_ice(m.ice_servers)
    _redact_room(m.room)


def _redact_reconnect(m: rtc.ReconnectResponse) -> None:
    _redact_ice(m.ice_servers)


def _redact_moved(m: rtc.RoomMovedResponse) -> None:
    if m.token:
        m.token = REDACTED
    _redact_room(m.room)


def _redact_room_update(m: rtc.RoomUpdate) -> None:
    _redact_room(m.room)


# Variants that can carry credentials: tokens, TURN passwords. Checked before anything is published.
REDACT: Final[dict[str, Callable[[Any], None]]] = {
    "join": _redact_join,
    "reconnect": _redact_reconnect,
    "room_moved": _redact_moved,
    "room_update": _redact_room_update,
}


def _needs_redaction(kind: str, message: Any) -> bool:
    if kind == "join":
        return bool(message.room.turn_password) or any(
            s.username or s.credential for s in message.ice_servers
        )
    if kind == "reconnect":
        return any(s.username or s.credential for s in message.ice_servers)
    if kind == "room_moved":
        return bool(message.token or message.room.turn_password)
    if kind == "room_update":
        return bool(message.room.turn_password)
    return False


def oneof_payload(frame: bytes) -> bytes | None:
    """The bytes of the single length-delimited field a frame holds, or None if it is not that simple.

    A SignalResponse on the wire is one oneof field: tag, length, message bytes. Slicing those bytes
    out costs nothing and keeps LiveKit's encoding exactly.
    """
    tag, pos = _varint(frame, 0)
    if tag & 7 != 2:
        return None
    length, pos = _varint(frame, pos)
    return frame[pos:] if pos + length == len(frame) else None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A protobuf varint at ``pos``: its value and the position after it."""
    value = shift = 0
    n = len(data)
    while pos < n:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
    return value, pos


_MS_CACHE: list[Any] = [None, ""]


def rfc3339(wall: float) -> str:
    """UTC RFC 3339 with milliseconds; the seconds part is formatted once per second."""
    seconds, millis = divmod(round(wall * 1000), 1000)
    if _MS_CACHE[0] != seconds:
        _MS_CACHE[0] = seconds
        _MS_CACHE[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{_MS_CACHE[1]}.{millis:03d}Z"


class TypeFilter:
    """``events.include`` / ``events.exclude`` type globs, decided once per type."""

    def __init__(self, include: Sequence[str] = ("*",), exclude: Sequence[str] = ()) -> None:
        self._include = tuple(include)
        self._exclude = tuple(exclude)
        self._cache: dict[str, bool] = {}

    def __call__(self, event_type: str) -> bool:
        allowed = self._cache.get(event_type)
        if allowed is None:
            allowed = any(fnmatch.fnmatchcase(event_type, g) for g in self._include) and not any(
                fnmatch.fnmatchcase(event_type, g) for g in self._exclude
            )
            self._cache[event_type] = allowed
        return allowed


class EventMapper:
    """Numbers and encodes one session's events. ``sequence`` is gap-free over what it emits."""

    def __init__(
        self,
        ctx: SessionContext,
        *,
        data_format: str = "protobuf",
        allow: Callable[[str], bool] | None = None,
    ) -> None:
        self.ctx = ctx
        self.json = data_format == "json"
        self.content_type = JSON if self.json else PROTOBUF
        self.allow = allow or TypeFilter()
        self.sequence = 0
        self.redacted = 0

    def _event(
        self, etype: EventType, message: Message, raw: bytes | None, subject: str | None, wall: float
    ) -> CloudEvent:
        """Number and encode one event (``raw``: the message's bytes as received, when usable)."""
        self.sequence += 1
        if self.json:
            data = message_to_json(message)
        else:
            data = raw if raw is not None else message.SerializeToString()
        return CloudEvent(
            ctx=self.ctx,
            etype=etype,
            sequence=self.sequence,
            time=rfc3339(wall),
            data=data,
            datacontenttype=self.content_type,
            subject=subject,
        )

    def signal(self, response: rtc.SignalResponse, frame: bytes | None, *, wall: float) -> CloudEvent | None:
        """The event for one SignalResponse (None when filtered out)."""
        kind = response.WhichOneof("message")
        if kind is None:
            return None
        etype = types.SIGNAL[kind]
        if not self.allow(etype.type):
            return None
        value = getattr(response, kind)
        raw = oneof_payload(frame) if isinstance(frame, bytes) else None
        if isinstance(value, int):
            message: Message = wrappers_pb2.Int64Value(value=value)
            raw = None
        elif isinstance(value, str):
            # refresh_token: a JWT; consumers learn that a refresh happened, never the token.
            message = wrappers_pb2.StringValue(value=REDACTED)
            raw = None
            self.redacted += 1
        else:
            message = value
            if kind in REDACT and _needs_redaction(kind, value):
                message = type(value)()
                message.CopyFrom(value)
                REDACT[kind](message)
                raw = None
                self.redacted += 1
        return self._event(etype, message, raw, SIGNAL_SUBJECTS[kind](value), wall)

    def data(self, packet: models.DataPacket, *, wall: float) -> CloudEvent | None:
        """The event for a DataPacket received on a data channel; the subject is its sender."""
        kind = packet.WhichOneof("value")
        if kind is None:
            return None
        etype = types.DATA[kind]
        if not self.allow(etype.type):
            return None
        return self._event(etype, getattr(packet, kind), None, packet.participant_identity or None, wall)

    def bridge(
        self,
        name: str,
        message: Message,
        *,
        wall: float,
        subject: str | None = None,
        extensions: tuple[tuple[str, str], ...] = (),
        traceparent: str | None = None,
    ) -> CloudEvent | None:
        """One of the bridge's own events (session_started, room_snapshot, gap, command_result, …)."""
        etype = types.BRIDGE[name]
        if not self.allow(etype.type):
            return None
        event = self._event(etype, message, None, subject, wall)
        if extensions or traceparent:
            check_extensions(extensions)
            event = dataclasses.replace(event, extensions=extensions, traceparent=traceparent)
        return event
