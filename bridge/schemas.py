"""JSON Schemas (draft 2020-12) for the ``data`` of every event and command type, from protobuf descriptors.

Each schema describes the message in protobuf's canonical JSON mapping, exactly as
``bridge.events.jsonfmt.message_to_dict`` (= ``json_format.MessageToDict``) writes it: lowerCamelCase
``json_name`` keys, 64-bit integers as decimal strings, enums by name (or number when unknown), bytes as
base64, every field optional and no other keys. Messages live in ``$defs`` keyed by their full name.

Besides the data schemas (``events/``, ``commands/``), ``envelope/`` holds the CloudEvents envelope and the
Kafka / NATS header schemas (``bridge/envelope.py``), and ``asyncapi.yaml`` describes every channel
(``bridge/asyncapi.py``); the README catalogues are rendered from the same descriptors.

``render()`` is pure: the same descriptors give the same bytes. ``livekit-bridge schemas`` writes the
result to ``schemas/`` (``make schemas``) and ``--check`` fails on drift (``make schemas-check``).
"""

from __future__ import annotations

import difflib
import json
import re
import tempfile
from collections.abc import Mapping
from itertools import combinations
from pathlib import Path
from typing import Any, Final

from google.protobuf import descriptor_pool, wrappers_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from bridge._proto import commands_pb2, events_pb2
from bridge.commands.model import COMMANDS, NEVER_TYPES, CommandType
from bridge.events import types
from bridge.events.cloudevent import EventType

# The modules above register their descriptors in the default pool.
_REGISTERED: Final = (wrappers_pb2, events_pb2, commands_pb2)

META_SCHEMA: Final = "https://json-schema.org/draft/2020-12/schema"
EVENTS_DIR: Final = "events"
COMMANDS_DIR: Final = "commands"
ENVELOPE_DIR: Final = "envelope"
INDEX_FILE: Final = "index.json"
ASYNCAPI_FILE: Final = "asyncapi.yaml"
# Generated folders: a file in them that render() no longer produces is stale and removed.
_GENERATED_DIRS: Final = (EVENTS_DIR, COMMANDS_DIR, ENVELOPE_DIR)
_PROTOS: Final = Path(__file__).resolve().parents[1] / "protos/livekit/bridge/v1"
BRIDGE_PROTO: Final = _PROTOS / "events.proto"
COMMANDS_PROTO: Final = _PROTOS / "commands.proto"
# A command's data schema is named by its type: the same message (MuteTrackRequest) can be both an event's
# and a command's data, with different descriptions, so the message name alone would not be unique.
COMMAND_SCHEMA_PREFIX: Final = "urn:livekit-bus-bridge:command-schema:"

_INT64_SIGNED: Final = {"type": "string", "pattern": "^-?[0-9]+$"}
_INT64_UNSIGNED: Final = {"type": "string", "pattern": "^[0-9]+$"}
_INT32_SIGNED: Final = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
_INT32_UNSIGNED: Final = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
_FLOAT: Final = {"anyOf": [{"type": "number"}, {"enum": ["NaN", "Infinity", "-Infinity"]}]}
_BYTES: Final = {"type": "string", "contentEncoding": "base64"}

_F = FieldDescriptor
_SCALARS: Final[dict[int, dict[str, Any]]] = {
    _F.TYPE_INT64: _INT64_SIGNED,
    _F.TYPE_SINT64: _INT64_SIGNED,
    _F.TYPE_SFIXED64: _INT64_SIGNED,
    _F.TYPE_UINT64: _INT64_UNSIGNED,
    _F.TYPE_FIXED64: _INT64_UNSIGNED,
    _F.TYPE_INT32: _INT32_SIGNED,
    _F.TYPE_SINT32: _INT32_SIGNED,
    _F.TYPE_SFIXED32: _INT32_SIGNED,
    _F.TYPE_UINT32: _INT32_UNSIGNED,
    _F.TYPE_FIXED32: _INT32_UNSIGNED,
    _F.TYPE_FLOAT: _FLOAT,
    _F.TYPE_DOUBLE: _FLOAT,
    _F.TYPE_BOOL: {"type": "boolean"},
    _F.TYPE_STRING: {"type": "string"},
    _F.TYPE_BYTES: _BYTES,
}

# Well-known types have their own JSON forms (https://protobuf.dev/programming-guides/json/).
_WELL_KNOWN: Final[dict[str, dict[str, Any]]] = {
    "google.protobuf.Int64Value": _INT64_SIGNED,
    "google.protobuf.UInt64Value": _INT64_UNSIGNED,
    "google.protobuf.Int32Value": _INT32_SIGNED,
    "google.protobuf.UInt32Value": _INT32_UNSIGNED,
    "google.protobuf.FloatValue": _FLOAT,
    "google.protobuf.DoubleValue": _FLOAT,
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": _BYTES,
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Any": {"type": "object", "required": ["@type"]},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
}

_CATEGORIES: Final = {
    "E": "Category E: a room or participant event worth republishing to users.",
    "P": "Category P: transport plumbing the bridge handles inside its connector.",
    "C": "Category C: session control the bridge acts on.",
    "R": "Category R: a reply to one of the bridge's own requests.",
}

# livekit-signaling.md §5.2 (SignalResponse): field -> (category, what it carries and when).
_SIGNAL: Final[dict[str, tuple[str, str]]] = {
    "join": ("C", "JoinResponse: the first message of a new signaling session."),
    "answer": ("P", "The server's answer to the publisher or single-PC offer."),
    "offer": (
        "P",
        "A server offer for the subscriber PeerConnection (at join, on subscription changes, "
        "and as an ICE restart after a resume).",
    ),
    "trickle": ("P", "A server ICE candidate, with target and final."),
    "update": (
        "E",
        "ParticipantUpdate: full ParticipantInfo snapshots for joins, leaves (state "
        "DISCONNECTED), metadata/name/attribute changes, permission changes and track "
        "publish/mute/unpublish. Apply an update only if its version is at least the last one "
        "seen for that sid.",
    ),
    "track_published": ("R", "TrackPublishedResponse: a track the bridge added was accepted."),
    "leave": ("C", "LeaveRequest from the server: the session is ending (or must reconnect)."),
    "mute": ("E", "A server- or admin-initiated mute of one of the bridge's own tracks."),
    "speakers_changed": (
        "E",
        "SpeakersChanged: active speaker levels. Deltas only, and only for "
        "participants the bridge is subscribed to plus itself.",
    ),
    "room_update": (
        "E",
        "RoomUpdate: room metadata, counts, recording flag and late SID. Also sent after a resume.",
    ),
    "connection_quality": (
        "E",
        "ConnectionQualityUpdate: per-participant quality "
        "(POOR/GOOD/EXCELLENT/LOST) and score, sent only on change.",
    ),
    "stream_state_update": ("E", "A subscribed stream was PAUSED or resumed (ACTIVE) by congestion control."),
    "subscribed_quality_update": ("P", "Dynacast: which simulcast layers of a published track are wanted."),
    "subscription_permission_update": ("E", "The bridge's permission to a remote track changed."),
    "refresh_token": (
        "C",
        "A new access token replaces the stored one; the token is redacted before publishing.",
    ),
    "track_unpublished": (
        "E",
        "TrackUnpublishedResponse: the server unpublished one of the bridge's own tracks.",
    ),
    "pong": ("P", "Legacy pong: the server time in milliseconds (int64, wrapped in Int64Value)."),
    "reconnect": ("C", "ReconnectResponse: the first message of a successful resume."),
    "pong_resp": ("P", "Pong: the last ping timestamp and the server timestamp."),
    "subscription_response": ("E", "A subscription to a track failed (err says why)."),
    "request_response": ("R", "RequestResponse: the outcome of one of the bridge's requests."),
    "track_subscribed": ("E", "Someone subscribed to one of the bridge's own tracks for the first time."),
    "room_moved": (
        "C",
        "RoomMovedResponse: the participant was moved to another room (Cloud "
        "MoveParticipant); the token is redacted before publishing.",
    ),
    "media_sections_requirement": ("P", "Single-PC: add recvonly audio and video m-lines and re-offer."),
    "subscribed_audio_codec_update": ("P", 'Audio codec "simulcast" driven by subscribers.'),
    "publish_data_track_response": ("R", "A data track was published; carries the server-assigned sid."),
    "unpublish_data_track_response": ("R", "A data track was unpublished, by the bridge or by the SFU."),
    "data_track_subscriber_handles": ("P", "How to demultiplex incoming data-track packets."),
    "store_data_blob_response": ("R", "The reply to a store-data-blob request."),
    "get_data_blob_response": ("R", "The reply to a get-data-blob request, with the blob."),
}

# livekit-signaling.md §10.2 (DataPacket `value` oneof).
_DATA: Final[dict[str, str]] = {
    "user": "UserPacket: the classic publishData payload, with topic and destination identities.",
    "speaker": "Deprecated ActiveSpeakerUpdate; speakers now travel as speakers_changed on signaling.",
    "sip_dtmf": "DTMF (code, digit) from or to SIP participants.",
    "transcription": "Transcription segments for a participant's track (forwarded only from agents).",
    "metrics": "MetricsBatch of performance metrics.",
    "chat_message": "ChatMessage: legacy chat (id, timestamp, edit timestamp, message, deleted, generated).",
    "rpc_request": "RPC v1 request (id, method, payload, response timeout, version).",
    "rpc_ack": "RPC v1 acknowledgement of a request.",
    "rpc_response": "RPC v1 response: the payload or an error.",
    "stream_header": "The start of a text or byte data stream (stream id, topic, mime type, "
    "attributes, ...).",
    "stream_chunk": "A chunk of a data stream's content.",
    "stream_trailer": "The end of a data stream, with a reason and attributes.",
    "encrypted_packet": "E2EE wrapper holding an encrypted payload (user, chat, rpc, stream).",
}

_DECL: Final = re.compile(r"^\s*(message|enum)\s+(\w+)\s*\{")
_FIELD: Final = re.compile(r"^\s*(?:repeated\s+|optional\s+)?[\w.<>, ]+?\s+(\w+)\s*=\s*\d+")
_VALUE: Final = re.compile(r"^\s*(\w+)\s*=\s*-?\d+\s*;")


def proto_comments(text: str, package: str) -> dict[str, str]:
    """Leading ``//`` comments of messages, enums, fields and enum values, keyed by full name."""
    out: dict[str, str] = {}
    scope: list[tuple[str, str]] = []  # (kind, name) of the open message/enum blocks
    pending: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("//"):
            pending.append(stripped[2:].strip())
            continue
        comment = " ".join(pending).strip()
        pending = []
        prefix = ".".join([package, *(name for _, name in scope)])
        if decl := _DECL.match(line):
            scope.append((decl.group(1), decl.group(2)))
            if comment:
                out[f"{prefix}.{decl.group(2)}"] = comment
        elif stripped.startswith("}"):
            if scope:
                scope.pop()
        elif scope and comment:
            pattern = _VALUE if scope[-1][0] == "enum" else _FIELD
            if m := pattern.match(line):
                # Enum values are siblings of their enum in protobuf scoping; keep them under the enum.
                out[f"{prefix}.{m.group(1)}"] = comment
    return out


def _bridge_comments() -> dict[str, str]:
    out: dict[str, str] = {}
    for proto in (BRIDGE_PROTO, COMMANDS_PROTO):
        out.update(proto_comments(proto.read_text(encoding="utf-8"), "livekit.bridge.v1"))
    return out


class _Builder:
    def __init__(self, comments: Mapping[str, str]) -> None:
        self.defs: dict[str, dict[str, Any]] = {}
        self.comments = comments

    def ref(self, name: str) -> dict[str, Any]:
        return {"$ref": f"#/$defs/{name}"}

    def message(self, desc: Descriptor) -> dict[str, Any]:
        name = desc.full_name
        if name not in self.defs:
            if name in _WELL_KNOWN:
                self.defs[name] = {"title": name, **_WELL_KNOWN[name]}
            else:
                self.defs[name] = {}  # placeholder: recursive messages refer to themselves
                self.defs[name] = self._object(desc)
        return self.ref(name)

    def _object(self, desc: Descriptor) -> dict[str, Any]:
        props: dict[str, Any] = {}
        for field in desc.fields:
            schema = self.field(field)
            note = self.comments.get(f"{desc.full_name}.{field.name}")
            if note:
                schema = {**schema, "description": note}
            props[field.json_name] = schema
        out: dict[str, Any] = {
            "title": desc.full_name,
            "type": "object",
            "properties": props,
            "additionalProperties": False,
        }
        if note := self.comments.get(desc.full_name):
            out["description"] = note
        # At most one member of a (non-synthetic) oneof is set.
        exclusive = [
            {"required": [a.json_name, b.json_name]}
            for oneof in desc.oneofs
            if len(oneof.fields) > 1
            for a, b in combinations(oneof.fields, 2)
        ]
        if exclusive:
            out["not"] = {"anyOf": exclusive}
        return out

    def enum(self, desc: EnumDescriptor) -> dict[str, Any]:
        name = desc.full_name
        if name == "google.protobuf.NullValue":
            return {"type": "null"}
        if name not in self.defs:
            out: dict[str, Any] = {
                "title": name,
                "anyOf": [{"enum": [v.name for v in desc.values]}, _INT32_SIGNED],
            }
            notes = [
                f"{v.name}: {self.comments[f'{name}.{v.name}']}"
                for v in desc.values
                if f"{name}.{v.name}" in self.comments
            ]
            lead = self.comments.get(name)
            text = "\n".join([*([lead] if lead else []), *notes])
            if text:
                out["description"] = text
            self.defs[name] = out
        return self.ref(name)

    def single(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.type in (_F.TYPE_MESSAGE, _F.TYPE_GROUP):
            assert field.message_type is not None
            return self.message(field.message_type)
        if field.type == _F.TYPE_ENUM:
            assert field.enum_type is not None
            return self.enum(field.enum_type)
        return dict(_SCALARS[field.type])

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key = entry.fields_by_name["key"]
            out: dict[str, Any] = {
                "type": "object",
                "additionalProperties": self.single(entry.fields_by_name["value"]),
            }
            if key.type == _F.TYPE_BOOL:
                out["propertyNames"] = {"enum": ["true", "false"]}
            elif key.type != _F.TYPE_STRING:
                signed = key.type not in (_F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_FIXED32, _F.TYPE_FIXED64)
                out["propertyNames"] = {"pattern": "^-?[0-9]+$" if signed else "^[0-9]+$"}
            return out
        if field.is_repeated:
            return {"type": "array", "items": self.single(field)}
        return self.single(field)


def describe(etype: EventType, comments: Mapping[str, str]) -> str:
    """What an event of this type means (the seed's wording where there is one)."""
    if etype.kind == "signal" and etype.field in _SIGNAL:
        cat, what = _SIGNAL[etype.field]
        return f"{what} {_CATEGORIES[cat]}"
    if etype.kind == "data" and etype.field in _DATA:
        return f"Received on a data channel. {_DATA[etype.field]}"
    if etype.kind == "bridge" and etype.message in comments:
        return comments[etype.message]
    return f"The `{etype.field}` {etype.kind} event; data is a {etype.message} message."


def event_schema(etype: EventType, comments: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The JSON Schema of ``etype``'s ``data`` in protobuf's JSON mapping."""
    notes = _bridge_comments() if comments is None else comments
    desc = descriptor_pool.Default().FindMessageTypeByName(etype.message)
    builder = _Builder(notes)
    root = builder.message(desc)
    return {
        "$schema": META_SCHEMA,
        "$id": etype.dataschema,
        "title": etype.message,
        "description": describe(etype, notes),
        "x-cloudevents-type": etype.type,
        **root,
        "$defs": builder.defs,
    }


def describe_command(ctype: CommandType, comments: Mapping[str, str]) -> str:
    """What a command of this type does (the seed's wording for signal commands, proto comments else)."""
    from bridge.schema_examples import SIGNAL_COMMAND_DESCRIPTIONS

    message = ctype.message_class.DESCRIPTOR.full_name
    if ctype.kind == "signal" and ctype.name in SIGNAL_COMMAND_DESCRIPTIONS:
        return f"{SIGNAL_COMMAND_DESCRIPTIONS[ctype.name]} Sent as SignalRequest `{ctype.name}`."
    if message in comments:
        return comments[message]
    return f"The `{ctype.name}` {ctype.kind} command; data is a {message} message."


def accepted_commands() -> list[CommandType]:
    """Every command type a bus may send (plumbing in NEVER_TYPES is never accepted), sorted by type."""
    return [COMMANDS[t] for t in sorted(COMMANDS) if t not in NEVER_TYPES]


def command_schema(ctype: CommandType, comments: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The JSON Schema of a ``ctype`` command's ``data`` in protobuf's JSON mapping."""
    notes = _bridge_comments() if comments is None else comments
    builder = _Builder(notes)
    name = ctype.message_class.DESCRIPTOR.full_name
    root = builder.message(descriptor_pool.Default().FindMessageTypeByName(name))
    return {
        "$schema": META_SCHEMA,
        "$id": COMMAND_SCHEMA_PREFIX + ctype.type,
        "title": name,
        "description": describe_command(ctype, notes),
        "x-cloudevents-type": ctype.type,
        **root,
        "$defs": builder.defs,
    }


def _dump(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def render() -> dict[str, bytes]:
    """Every generated file under ``schemas/``, relative path -> bytes (deterministic)."""
    from bridge import asyncapi, envelope

    comments = _bridge_comments()
    files: dict[str, bytes] = {}
    events: dict[str, dict[str, str]] = {}
    for name in sorted(types.ALL):
        etype = types.ALL[name]
        path = f"{EVENTS_DIR}/{name}.json"
        files[path] = _dump(event_schema(etype, comments))
        events[name] = {"file": path, "message": etype.message, "dataschema": etype.dataschema}
    commands: dict[str, dict[str, str]] = {}
    for ctype in accepted_commands():
        path = f"{COMMANDS_DIR}/{ctype.type}.json"
        files[path] = _dump(command_schema(ctype, comments))
        commands[ctype.type] = {
            "file": path,
            "message": ctype.message_class.DESCRIPTOR.full_name,
            "kind": ctype.kind,
        }
    envelopes: dict[str, str] = {}
    for name, schema in envelope.schemas().items():
        path = f"{ENVELOPE_DIR}/{name}.json"
        files[path] = _dump(schema)
        envelopes[name] = path
    files[INDEX_FILE] = _dump({"events": events, "commands": commands, "envelope": envelopes})
    files[ASYNCAPI_FILE] = asyncapi.render_yaml(comments)
    return dict(sorted(files.items()))


def _stale(out: Path, expected: Mapping[str, bytes]) -> list[str]:
    return sorted(
        f"{folder}/{p.name}"
        for folder in _GENERATED_DIRS
        if (out / folder).is_dir()
        for p in (out / folder).glob("*.json")
        if f"{folder}/{p.name}" not in expected
    )


def write(out: Path, readme: Path | None = None) -> list[str]:
    """Writes every file under ``out`` (and the catalogues into ``readme``), removes stale schemas.

    Returns the paths written under ``out``.
    """
    files = render()
    for rel in _stale(out, files):
        (out / rel).unlink()
    for rel, data in files.items():
        _write_if_changed(out / rel, data)
    if readme is not None:
        _write_if_changed(readme, _readme(readme))
    return list(files)


def _write_if_changed(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists() or target.read_bytes() != data:
        target.write_bytes(data)


def _readme(readme: Path) -> bytes:
    from bridge import asyncapi

    text = readme.read_text(encoding="utf-8")
    return asyncapi.update_readme(text, _bridge_comments()).encode("utf-8")


def check(out: Path, max_lines: int = 40, readme: Path | None = None) -> list[str]:
    """Regenerates into a temp dir and compares with ``out``; returns a short diff (empty = no drift)."""
    with tempfile.TemporaryDirectory(prefix="schemas-") as tmp:
        fresh = Path(tmp)
        expected = {rel: (fresh / rel).read_bytes() for rel in write(fresh)}
    lines: list[str] = [f"stale: {rel}" for rel in _stale(out, expected)]
    # (file, its name in the report, the generated bytes)
    compare = [(out / rel, rel, data) for rel, data in expected.items()]
    if readme is not None:
        try:
            compare.append((readme, str(readme), _readme(readme)))
        except (OSError, ValueError) as exc:
            lines.append(f"{readme}: {exc}")
    for current, name, data in compare:
        if not current.exists():
            lines.append(f"missing: {name}")
            continue
        have = current.read_bytes()
        if have != data:
            lines.extend(
                difflib.unified_diff(
                    have.decode("utf-8", "replace").splitlines(),
                    data.decode("utf-8").splitlines(),
                    fromfile=str(current),
                    tofile=f"generated/{name}",
                    lineterm="",
                    n=1,
                )
            )
    if len(lines) > max_lines:
        lines = [*lines[:max_lines], f"... ({len(lines) - max_lines} more lines)"]
    return lines
