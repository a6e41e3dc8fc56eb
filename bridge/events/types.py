"""Every CloudEvent type the bridge emits, in one registry.

- ``io.livekit.signal.<field>.v1``: one per ``SignalResponse`` oneof field (all 30, plumbing included);
- ``io.livekit.data.<field>.v1``: one per ``DataPacket`` oneof field received on a data channel;
- ``io.livekit.bridge.<name>.v1``: the bridge's own lifecycle, snapshot, gap, command results, the end
  of recordings, forwards and published tracks, and room ownership changes.

``dataschema`` is a URN naming the data's protobuf message (``urn:livekit-bus-bridge:schema:<message>``),
absolute and stable; ``schemas/`` documents each one. A LiveKit upgrade that adds a oneof variant makes
``tests/unit/test_event_types.py`` fail until the variant is mapped here.
"""

from __future__ import annotations

from typing import Final

from google.protobuf.descriptor import FieldDescriptor
from livekit.protocol import models, rtc

from bridge.events.cloudevent import EventType

SCHEMA_PREFIX: Final = "urn:livekit-bus-bridge:schema:"
TYPE_PREFIX: Final = "io.livekit."

# Scalars in a oneof travel wrapped in the matching google.protobuf wrapper type.
_WRAPPERS: Final = {
    FieldDescriptor.TYPE_INT64: "google.protobuf.Int64Value",
    FieldDescriptor.TYPE_STRING: "google.protobuf.StringValue",
}

BRIDGE_EVENTS: Final[dict[str, str]] = {
    "session_started": "livekit.bridge.v1.SessionStarted",
    "session_resumed": "livekit.bridge.v1.SessionResumed",
    "session_ended": "livekit.bridge.v1.SessionEnded",
    "room_snapshot": "livekit.bridge.v1.RoomSnapshot",
    "gap": "livekit.bridge.v1.Gap",
    "command_result": "livekit.bridge.v1.CommandResult",
    "text_stream": "livekit.bridge.v1.TextStream",
    "recording_finished": "livekit.bridge.v1.RecordingFinished",
    "forward_finished": "livekit.bridge.v1.ForwardFinished",
    "publish_finished": "livekit.bridge.v1.PublishFinished",
    "ownership_changed": "livekit.bridge.v1.OwnershipChanged",
}


def _message_name(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        return field.message_type.full_name
    return _WRAPPERS[field.type]


def _make(kind: str, field: str, message: str) -> EventType:
    return EventType.make(
        type=f"{TYPE_PREFIX}{kind}.{field}.v1",
        message=message,
        dataschema=SCHEMA_PREFIX + message,
        kind=kind,
        field=field,
    )


def _oneof(descriptor: object, kind: str) -> dict[str, EventType]:
    fields = descriptor.oneofs_by_name[  # type: ignore[attr-defined]
        "message" if kind == "signal" else "value"
    ].fields
    return {f.name: _make(kind, f.name, _message_name(f)) for f in fields}


SIGNAL: Final[dict[str, EventType]] = _oneof(rtc.SignalResponse.DESCRIPTOR, "signal")
DATA: Final[dict[str, EventType]] = _oneof(models.DataPacket.DESCRIPTOR, "data")
BRIDGE: Final[dict[str, EventType]] = {
    name: _make("bridge", name, msg) for name, msg in BRIDGE_EVENTS.items()
}

ALL: Final[dict[str, EventType]] = {t.type: t for t in (*SIGNAL.values(), *DATA.values(), *BRIDGE.values())}


def subject_token(etype: EventType) -> str:
    """The last NATS subject token of a type: the oneof field, ``data_<field>`` or ``bridge_<name>``."""
    return etype.field if etype.kind == "signal" else f"{etype.kind}_{etype.field}"
