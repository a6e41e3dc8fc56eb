"""The CloudEvent the bridge emits: built once, serialised per bus without re-encoding the data.

An event is split in two parts so the hot path allocates little:

- :class:`SessionContext`: what every event of one room session shares (``source``, ``lkroom``,
  ``lkroomsid``, ``lksession``, ``partitionkey``), created once per session;
- :class:`CloudEvent`: the per-event attributes (``id``/``sequence``, ``type``, ``time``, ``subject``)
  and ``data``, the encoded bytes of the LiveKit (or bridge) message, kept exactly as they are.

The bus bindings (``bridge/bus/bindings.py``) turn these into Kafka headers or NATS payloads.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

SPEC_VERSION: Final = "1.0"
PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
# The attributes every event may carry; an extension never takes one of these names.
ATTRIBUTES: Final = frozenset(
    {"specversion", "id", "source", "type", "time", "datacontenttype", "dataschema", "subject", "data",
     "data_base64", "traceparent", "tracestate", "lkroom", "lkroomsid", "lksession", "sequence",
     "partitionkey"}
)  # fmt: skip
_EXTENSION_NAME: Final = re.compile(r"[a-z0-9]{1,20}")


def check_extensions(extensions: Iterable[tuple[str, str]]) -> None:
    """ValueError unless every name is a CloudEvents extension name (lower-case alphanumerics, at most 20,
    §3.1.1) that no attribute has: each binding writes names as they are, so a clash would be sent twice."""
    for name, _ in extensions:
        if not _EXTENSION_NAME.fullmatch(name) or name in ATTRIBUTES:
            raise ValueError(f"invalid CloudEvent extension name {name!r}")


@dataclass(frozen=True, slots=True)
class EventType:
    """One CloudEvent ``type``: its name, the message its data carries, and that message's schema URI."""

    type: str  # e.g. io.livekit.signal.speakers_changed.v1
    message: str  # full protobuf name of the data, e.g. livekit.SpeakersChanged
    dataschema: str  # absolute URI naming the message type
    kind: str  # "signal", "data" or "bridge"
    field: str  # the oneof field (signal/data) or the bridge event name
    type_bytes: bytes = b""  # cached UTF-8 forms for header building
    dataschema_bytes: bytes = b""
    _hash: int = dataclasses.field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        identity = (self.type, self.message, self.dataschema, self.kind, self.field)
        object.__setattr__(self, "_hash", hash(identity))

    def __hash__(self) -> int:
        # Computed once: the bus bindings look a type up in their caches for every event.
        return self._hash

    @classmethod
    def make(cls, *, type: str, message: str, dataschema: str, kind: str, field: str) -> EventType:
        return cls(type, message, dataschema, kind, field, type.encode(), dataschema.encode())


@dataclass(frozen=True, slots=True)
class SessionContext:
    """Attributes shared by every event of one room session."""

    source: str  # e.g. livekit://lk.example.com/rooms/standup
    room: str  # lkroom and partitionkey
    session: str  # lksession
    room_sid: str = ""  # lkroomsid, once known
    room_bytes: bytes = field(default=b"", compare=False)
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "room_bytes", self.room.encode())
        object.__setattr__(self, "_hash", hash((self.source, self.room, self.session, self.room_sid)))

    def __hash__(self) -> int:
        # Computed once: the bus bindings look a context up in their caches several times per event.
        return self._hash

    def with_room(self, *, room: str | None = None, room_sid: str | None = None) -> SessionContext:
        return SessionContext(
            source=self.source if room is None else self.source.rsplit("/", 1)[0] + "/" + _escape(room),
            room=self.room if room is None else room,
            session=self.session,
            room_sid=self.room_sid if room_sid is None else room_sid,
        )


def source_uri(livekit_url: str, room: str) -> str:
    """``livekit://<host[:port][/prefix]>/rooms/<room>``: names the deployment and the room."""
    rest = livekit_url.split("://", 1)[-1].rstrip("/")
    return f"livekit://{rest}/rooms/{_escape(room)}"


def _escape(room: str) -> str:
    from urllib.parse import quote

    return quote(room, safe="")


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """One event. ``id`` is ``<lksession>-<sequence>``; ``data`` is already encoded."""

    ctx: SessionContext
    etype: EventType
    sequence: int
    time: str  # RFC 3339, UTC
    data: bytes
    datacontenttype: str = PROTOBUF
    subject: str | None = None
    traceparent: str | None = None
    # Further extensions as (name, value) pairs, e.g. ("lkcommandid", ...) on a command result. Names are
    # lower-case alphanumerics (CloudEvents §3.1.1) and never collide with the attributes above.
    extensions: tuple[tuple[str, str], ...] = ()

    @property
    def id(self) -> str:
        return f"{self.ctx.session}-{self.sequence:020d}"

    @property
    def sequence_str(self) -> str:
        return f"{self.sequence:020d}"

    @property
    def type(self) -> str:
        return self.etype.type

    def attributes(self) -> dict[str, str]:
        """Every context attribute and extension as strings (for structured JSON and tests)."""
        attrs = {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "source": self.ctx.source,
            "type": self.etype.type,
            "time": self.time,
            "datacontenttype": self.datacontenttype,
            "dataschema": self.etype.dataschema,
            "lkroom": self.ctx.room,
            "lksession": self.ctx.session,
            "sequence": self.sequence_str,
            "partitionkey": self.ctx.room,
        }
        if self.ctx.room_sid:
            attrs["lkroomsid"] = self.ctx.room_sid
        if self.subject:
            attrs["subject"] = self.subject
        if self.traceparent:
            attrs["traceparent"] = self.traceparent
        attrs.update(self.extensions)
        return attrs


class EventSink(Protocol):
    """Where a room session hands its events (the bus fan-out, or a test's list)."""

    async def emit(self, event: CloudEvent) -> None: ...
