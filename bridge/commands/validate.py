"""Validate a command as it arrived from a bus and turn it into a :class:`~bridge.commands.model.Command`.

Pure: no I/O. The input is transport-neutral (:class:`RawCommand`); the ``from_kafka`` / ``from_nats``
constructors reuse the event bindings' decoders. Every failure is an :class:`~bridge.errors.InvalidCommand`
with a code from :data:`CODES`; nothing else escapes, whatever the bytes (the consumers rely on this to
account for every input).

Two outcomes of failure, told apart by type:

- :class:`CommandRejected` (code ``not_allowed``): a well-formed command the bridge will not run. The
  caller publishes a ``rejected`` command result; it is not a dead letter.
- any other :class:`InvalidCommand`: malformed; the caller dead-letters the original bytes.

Check order: size, envelope, type, room, data, allowed. Data is decoded before the allowed check so that a
rejection is only ever given to a command that is otherwise well-formed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.message import Message

from bridge.bus.bindings import event_from_kafka, event_from_nats, room_from_token
from bridge.commands.model import COMMANDS, NEVER_TYPES, Command, CommandType
from bridge.errors import InvalidCommand

TOO_LARGE: Final = "too_large"
BAD_ENVELOPE: Final = "bad_envelope"
UNKNOWN_TYPE: Final = "unknown_type"
NOT_ALLOWED: Final = "not_allowed"
ROOM_MISSING: Final = "room_missing"
ROOM_MISMATCH: Final = "room_mismatch"
BAD_DATA: Final = "bad_data"
BAD_CONTENT_TYPE: Final = "bad_content_type"

CODES: Final[frozenset[str]] = frozenset(
    {
        TOO_LARGE,
        BAD_ENVELOPE,
        UNKNOWN_TYPE,
        NOT_ALLOWED,
        ROOM_MISSING,
        ROOM_MISMATCH,
        BAD_DATA,
        BAD_CONTENT_TYPE,
    }
)

SPEC_VERSION: Final = "1.0"


class CommandRejected(InvalidCommand):
    """A well-formed command that is not allowed: answer with a ``rejected`` result, do not dead-letter.

    Carries what the result event needs, since no :class:`Command` is returned.
    """

    def __init__(self, message: str, *, command_id: str, command_type: str, room: str) -> None:
        super().__init__(NOT_ALLOWED, message)
        self.command_id = command_id
        self.command_type = command_type
        self.room = room


@dataclass(frozen=True, slots=True)
class RawCommand:
    """A command as a transport delivered it, before any checking.

    ``attributes``: CloudEvent attributes and extensions (as decoded by the bus bindings; a structured
    event's JSON ``data`` may be present as ``data_json``). ``data``: the data bytes. ``datacontenttype``
    overrides the attribute of that name when given. ``transport_room``: the room named by the Kafka key or
    NATS subject, decoded, when there is one. ``wire_size``: the size of the record/message as received,
    when known (else ``len(data)`` is what the size limit applies to).
    """

    attributes: Mapping[str, Any]
    data: bytes = b""
    datacontenttype: str | None = None
    transport_room: str | None = None
    received_via: str = "kafka"
    wire_size: int | None = field(default=None)

    @classmethod
    def from_kafka(
        cls, key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]]
    ) -> RawCommand:
        """A binary-mode Kafka record; the record key is the transport room."""
        headers = list(headers)
        size = len(value or b"") + len(key or b"") + sum(len(n) + len(v) for n, v in headers)
        try:
            attrs = event_from_kafka(key, value, headers)
            room = key.decode() if key is not None else None
        except UnicodeDecodeError as exc:
            raise InvalidCommand(BAD_ENVELOPE, f"kafka record: header or key is not UTF-8: {exc}") from exc
        data = attrs.pop("data")
        return cls(attrs, data, transport_room=room, received_via="kafka", wire_size=size)

    @classmethod
    def from_nats(
        cls, subject: str, payload: bytes, headers: Mapping[str, str] | None, *, prefix: str
    ) -> RawCommand:
        """A NATS message on ``<prefix>.commands.<room token>`` in structured or binary mode."""
        head = f"{prefix}.commands."
        if not subject.startswith(head) or "." in subject[len(head) :] or subject == head:
            raise InvalidCommand(ROOM_MISSING, f"nats subject {subject!r}: expected {head}<room token>")
        try:
            room = room_from_token(subject[len(head) :])
        except ValueError as exc:
            raise InvalidCommand(ROOM_MISMATCH, f"nats subject {subject!r}: bad room token: {exc}") from exc
        size = len(payload) + sum(len(k) + len(v) for k, v in (headers or {}).items())
        try:
            attrs = event_from_nats(subject, payload, headers)
        except (ValueError, RecursionError) as exc:
            raise InvalidCommand(BAD_ENVELOPE, f"nats message: {exc}") from exc
        data = attrs.pop("data")
        return cls(attrs, data, transport_room=room, received_via="nats", wire_size=size)


_NO_JSON: Final = object()


def validate(raw: RawCommand, *, allowed: frozenset[str], max_bytes: int) -> Command:
    """Check ``raw`` and return the :class:`Command`; raise :class:`InvalidCommand` (only) otherwise.

    ``allowed`` holds full command types (see :func:`bridge.commands.model.allowed_types`); plumbing types
    (:data:`~bridge.commands.model.NEVER_TYPES`) are refused even if listed.
    """
    data = raw.data if isinstance(raw.data, bytes | bytearray) else b""
    size = max(len(data), raw.wire_size or 0)
    if size > max_bytes:
        raise InvalidCommand(TOO_LARGE, f"command is {size} bytes, the limit is {max_bytes}")

    attrs = raw.attributes
    specversion = attrs.get("specversion")
    if specversion != SPEC_VERSION:
        raise InvalidCommand(BAD_ENVELOPE, f"attribute specversion: {specversion!r}, expected '1.0'")
    cid = _required(attrs, "id")
    source = _required(attrs, "source")
    ctype = _required(attrs, "type")
    traceparent = attrs.get("traceparent")
    if traceparent is not None and not isinstance(traceparent, str):
        raise InvalidCommand(BAD_ENVELOPE, "attribute traceparent: must be a string")

    spec = COMMANDS.get(ctype)
    if spec is None:
        if ctype in NEVER_TYPES:  # a scalar plumbing variant (ping) has no registry entry
            raise CommandRejected(
                f"type {ctype!r} is never accepted from the bus",
                command_id=cid,
                command_type=ctype,
                room=_room(raw),
            )
        raise InvalidCommand(UNKNOWN_TYPE, f"attribute type: {ctype!r} is not a known command type")

    room = _room(raw)
    message = _decode(spec, raw, data)
    _check_message_room(spec, message, room)

    if ctype in NEVER_TYPES or ctype not in allowed:
        why = "is never accepted from the bus" if ctype in NEVER_TYPES else "is not in the allowed set"
        raise CommandRejected(f"type {ctype!r} {why}", command_id=cid, command_type=ctype, room=room)

    return Command(
        id=cid,
        type=ctype,
        name=spec.name,
        kind=spec.kind,
        room=room,
        message=message,
        source=source,
        received_via=raw.received_via,
        traceparent=traceparent,
    )


def _required(attrs: Mapping[str, Any], name: str) -> str:
    value = attrs.get(name)
    if not isinstance(value, str) or not value:
        got = "missing" if value is None else f"{value!r}"
        raise InvalidCommand(BAD_ENVELOPE, f"attribute {name}: must be a non-empty string ({got})")
    return value


def _room(raw: RawCommand) -> str:
    room = raw.attributes.get("lkroom")
    if not isinstance(room, str) or not room:
        raise InvalidCommand(ROOM_MISSING, "extension lkroom: must name the room (missing or empty)")
    if raw.transport_room is not None and raw.transport_room != room:
        raise InvalidCommand(
            ROOM_MISMATCH,
            f"extension lkroom {room!r} differs from the {raw.received_via} room {raw.transport_room!r}",
        )
    return room


def _check_message_room(spec: CommandType, message: Message, room: str) -> None:
    # join_room / leave_room name a room in their data too; it must not contradict the address.
    named = getattr(message, "room", "") if spec.kind == "bridge" else ""
    if isinstance(named, str) and named and named != room:
        raise InvalidCommand(ROOM_MISMATCH, f"data.room {named!r} differs from extension lkroom {room!r}")


# --- data decoding, dispatched by media type ------------------------------------------------------------


def _decode(spec: CommandType, raw: RawCommand, data: bytes) -> Message:
    data_json = raw.attributes.get("data_json", _NO_JSON)
    content_type = raw.datacontenttype or raw.attributes.get("datacontenttype")
    if content_type is None and data_json is not _NO_JSON:
        content_type = "application/json"  # structured mode: JSON data with no datacontenttype is JSON
    if not isinstance(content_type, str) or not content_type:
        raise InvalidCommand(BAD_CONTENT_TYPE, "datacontenttype: missing (expected protobuf or JSON)")
    media = content_type.partition(";")[0].strip().lower()
    decoder = _DECODERS.get(media)
    if decoder is None:
        raise InvalidCommand(
            BAD_CONTENT_TYPE,
            f"datacontenttype {content_type!r}: expected one of {', '.join(sorted(_DECODERS))}",
        )
    message = spec.message_class()
    decoder(message, data, data_json)
    return message


def _decode_protobuf(message: Message, data: bytes, data_json: object) -> None:
    if data_json is not _NO_JSON:
        raise InvalidCommand(BAD_DATA, "data: protobuf content type but the data is JSON (use data_base64)")
    try:
        message.ParseFromString(bytes(data))
    except Exception as exc:  # decode errors vary by protobuf backend; all mean bad data
        raise InvalidCommand(BAD_DATA, f"data: not a valid {_name(message)} in protobuf: {exc}") from exc
    # Unknown fields mean data of another message (or a newer schema): dropping them silently would
    # apply a different command than the one sent, the same reason JSON rejects unknown fields.
    before = message.ByteSize()
    message.DiscardUnknownFields()
    if message.ByteSize() != before:
        raise InvalidCommand(BAD_DATA, f"data: fields unknown to {_name(message)} in protobuf")


def _decode_json(message: Message, data: bytes, data_json: object) -> None:
    doc = data_json
    if doc is _NO_JSON:
        try:
            doc = json.loads(bytes(data))
        except (ValueError, RecursionError) as exc:  # bad UTF-8 is a ValueError too
            raise InvalidCommand(BAD_DATA, f"data: not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidCommand(BAD_DATA, f"data: a JSON {_name(message)} must be an object")
    try:
        json_format.ParseDict(doc, message, ignore_unknown_fields=False)
    except Exception as exc:  # json_format raises several types (ParseError, TypeError, ...): all bad data
        raise InvalidCommand(BAD_DATA, f"data: not a valid {_name(message)} in JSON: {exc}") from exc


def _name(message: Message) -> str:
    return message.DESCRIPTOR.full_name


_DECODERS: Final[Mapping[str, Callable[[Message, bytes, object], None]]] = {
    "application/x-protobuf": _decode_protobuf,
    "application/protobuf": _decode_protobuf,
    "application/json": _decode_json,
}
