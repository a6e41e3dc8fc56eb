"""CloudEvent <-> Kafka record / NATS message, by hand and pure (no I/O, no clocks).

The wire contracts (DESIGN.md §3 "Events"):

- **Kafka**, binary content mode (CloudEvents Kafka binding 1.0.2): the value is ``event.data`` untouched,
  every attribute is a ``ce_<name>`` header with its UTF-8 canonical string (no percent-encoding), except
  ``datacontenttype``, which is the plain ``content-type`` header. The record key is the room name.
- **NATS** subject ``<prefix>.events.<room token>.<type token>``. The room token is the room name with every
  UTF-8 byte outside ``[A-Za-z0-9_-]`` written as ``%XX`` (upper-case hex), so any room name is one valid
  subject token (no ``.``, space, ``*`` or ``>``) and decodes back exactly.
- **NATS structured** (binding 1.0.2, the default): the payload is the JSON event format 1.0.2; a
  ``Content-Type: application/cloudevents+json`` header lets 1.0.3-wip receivers detect the mode.
- **NATS binary** (binding 1.0.3-wip, opt-in): ``ce-<name>`` headers for every attribute *including*
  ``ce-datacontenttype``, values percent-encoded (space, ``"``, ``%`` and everything outside U+0021..U+007E,
  as UTF-8 bytes in upper-case hex); the payload is ``event.data``.

Why by hand: the ``cloudevents`` SDK costs 17+ µs per event and has header-encoding bugs
(research/bus-anchors.md §2). Everything shared by a room session (``source``, ``lkroom``, ``lksession``...)
is encoded once per :class:`SessionContext` and everything shared by an event type once per
:class:`EventType`, in small bounded caches; per event only ``id``/``sequence``/``time``/``subject`` and
the data are encoded.

The decoders (:func:`event_from_kafka`, :func:`event_from_nats`) are for tests and tools (``tail``), not
for the hot path.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from json.encoder import encode_basestring  # the C-accelerated string escaper behind json.dumps
from typing import Any, Final

from bridge.bus.nats_wire import BLOCK_END, BLOCK_START, header_lines
from bridge.events.cloudevent import SPEC_VERSION, CloudEvent, EventType, SessionContext

__all__ = [
    "CLOUDEVENTS_JSON",
    "CONTENT_TYPE",
    "NATS_STRUCTURED_HEADERS",
    "event_from_kafka",
    "event_from_nats",
    "is_json_content_type",
    "kafka_record",
    "nats_binary_block",
    "nats_binary_headers",
    "nats_structured",
    "nats_subject",
    "percent_decode",
    "percent_encode",
    "room_from_token",
    "room_token",
]

CLOUDEVENTS_JSON: Final = "application/cloudevents+json"
CONTENT_TYPE: Final = "content-type"
#: The one header of a structured NATS message (shared, never mutated).
NATS_STRUCTURED_HEADERS: Final[Mapping[str, str]] = {"Content-Type": CLOUDEVENTS_JSON}

# Caches are bounded: a long-running bridge sees a new SessionContext per room session. When one is
# full it is simply cleared (rebuilding an entry costs a few µs; an LRU would cost more per hit).
_CTX_CACHE_MAX: Final = 4096
_TYPE_CACHE_MAX: Final = 1024


# --- tokens and percent-encoding ---------------------------------------------------------------------

_TOKEN_SAFE: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_TOKEN_SAFE_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
_HEX: Final = tuple(f"%{b:02X}" for b in range(256))


def room_token(room: str) -> str:
    """The NATS subject token for ``room``: bytes outside ``[A-Za-z0-9_-]`` become ``%XX``.

    ``"standup.eu"`` -> ``"standup%2Eeu"``; ``"é"`` -> ``"%C3%A9"``. Raises ValueError for an empty name
    (an empty token would make the subject invalid).
    """
    if _TOKEN_SAFE_RE.fullmatch(room):
        return room
    if not room:
        raise ValueError("a room name must not be empty")
    return "".join(chr(b) if b in _TOKEN_SAFE else _HEX[b] for b in room.encode())


_PCT_RE: Final = re.compile(rb"%([0-9A-Fa-f]{2})")


def percent_decode(text: str) -> str:
    """Reverses :func:`room_token` / :func:`percent_encode`; accepts lower-case hex and unneeded escapes.

    Raises ValueError for a ``%`` not followed by two hex digits or for bytes that are not UTF-8 (the NATS
    binding says decoders must reject invalid UTF-8).
    """
    raw = text.encode()
    if b"%" not in raw:
        return text
    if raw.count(b"%") != len(_PCT_RE.findall(raw)):
        raise ValueError("a '%' must be followed by two hex digits")
    return _PCT_RE.sub(lambda m: bytes((int(m.group(1), 16),)), raw).decode("utf-8")  # strict


room_from_token = percent_decode


# Printable ASCII minus space, '"' and '%' passes unencoded (NATS binding 1.0.3-wip §3.1.3.2).
_HEADER_SAFE_RE: Final = re.compile(r"[\x21\x23\x24\x26-\x7e]*")
_HEADER_SAFE: Final = frozenset(range(0x21, 0x7F)) - {0x22, 0x25}


def percent_encode(value: str) -> str:
    """A ``ce-`` header value for the NATS binary mode: percent-encoded as the binding requires."""
    if _HEADER_SAFE_RE.fullmatch(value):
        return value
    return "".join(chr(b) if b in _HEADER_SAFE else _HEX[b] for b in value.encode())


def is_json_content_type(content_type: str) -> bool:
    """``application/json``, ``*/json``, ``*/*+json`` (parameters and case ignored): JSON format §3.1."""
    media = content_type.partition(";")[0].strip().lower()
    return media.endswith(("/json", "+json"))


# --- per-session and per-type caches -------------------------------------------------------------------


class _CtxParts:
    """Everything of one SessionContext the bindings need, encoded once."""

    __slots__ = (
        "id_prefix",
        "id_prefix_json",
        "id_prefix_percent",
        "kafka_headers",
        "nats_headers",
        "nats_lines",
        "room_bytes",
        "structured_prefix",
        "subject_room",
    )

    def __init__(self, ctx: SessionContext) -> None:
        room_b = ctx.room.encode()
        self.room_bytes = room_b
        self.id_prefix = ctx.session + "-"
        self.subject_room = room_token(ctx.room)
        headers: list[tuple[str, bytes]] = [
            ("ce_specversion", SPEC_VERSION.encode()),
            ("ce_source", ctx.source.encode()),
            ("ce_lkroom", room_b),
        ]
        if ctx.room_sid:
            headers.append(("ce_lkroomsid", ctx.room_sid.encode()))
        headers += [("ce_lksession", ctx.session.encode()), ("ce_partitionkey", room_b)]
        self.kafka_headers = tuple(headers)
        nats = {
            "ce-specversion": SPEC_VERSION,
            "ce-source": percent_encode(ctx.source),
            "ce-lkroom": percent_encode(ctx.room),
        }
        if ctx.room_sid:
            nats["ce-lkroomsid"] = percent_encode(ctx.room_sid)
        nats["ce-lksession"] = percent_encode(ctx.session)
        nats["ce-partitionkey"] = nats["ce-lkroom"]
        self.nats_headers = nats
        self.nats_lines = header_lines(nats)
        self.id_prefix_percent = percent_encode(self.id_prefix)  # the sequence digits never need it
        members = [
            f'{{"specversion":"{SPEC_VERSION}"',
            f'"source":{encode_basestring(ctx.source)}',
            f'"lkroom":{encode_basestring(ctx.room)}',
        ]
        if ctx.room_sid:
            members.append(f'"lkroomsid":{encode_basestring(ctx.room_sid)}')
        members += [
            f'"lksession":{encode_basestring(ctx.session)}',
            f'"partitionkey":{encode_basestring(ctx.room)}',
        ]
        self.structured_prefix = ",".join(members)
        # The id is "<session>-<sequence>": escape the session part once, the digits never need it.
        self.id_prefix_json = ',"id":' + encode_basestring(self.id_prefix)[:-1]


class _TypeParts:
    __slots__ = ("dataschema_bytes", "json", "nats", "nats_lines", "subject_token", "type_bytes")

    def __init__(self, etype: EventType) -> None:
        self.type_bytes = etype.type_bytes or etype.type.encode()
        self.dataschema_bytes = etype.dataschema_bytes or etype.dataschema.encode()
        self.subject_token = room_token(etype.field)
        self.json = (
            f',"type":{encode_basestring(etype.type)},"dataschema":{encode_basestring(etype.dataschema)}'
        )
        self.nats = {"ce-type": percent_encode(etype.type), "ce-dataschema": percent_encode(etype.dataschema)}
        self.nats_lines = header_lines(self.nats)


_ctx_cache: dict[SessionContext, _CtxParts] = {}
_type_cache: dict[EventType, _TypeParts] = {}
_content_type_cache: dict[str, tuple[bytes, bool, str]] = {}


def _ctx(ctx: SessionContext) -> _CtxParts:
    parts = _ctx_cache.get(ctx)
    if parts is None:
        if len(_ctx_cache) >= _CTX_CACHE_MAX:
            _ctx_cache.clear()
        parts = _ctx_cache[ctx] = _CtxParts(ctx)
    return parts


def _type(etype: EventType) -> _TypeParts:
    parts = _type_cache.get(etype)
    if parts is None:
        if len(_type_cache) >= _TYPE_CACHE_MAX:
            _type_cache.clear()
        parts = _type_cache[etype] = _TypeParts(etype)
    return parts


def _content_type(value: str) -> tuple[bytes, bool, str]:
    """(UTF-8 bytes, is JSON, JSON member) for a datacontenttype; a handful of values per process."""
    parts = _content_type_cache.get(value)
    if parts is None:
        if len(_content_type_cache) >= _TYPE_CACHE_MAX:
            _content_type_cache.clear()
        parts = _content_type_cache[value] = (
            value.encode(),
            is_json_content_type(value),
            f',"datacontenttype":{encode_basestring(value)}',
        )
    return parts


def clear_caches() -> None:
    """Forget the per-session and per-type encodings (tests; a long-lived process never needs it)."""
    _ctx_cache.clear()
    _type_cache.clear()
    _content_type_cache.clear()


# --- Kafka -----------------------------------------------------------------------------------------------


def kafka_record(event: CloudEvent) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """``(key, value, headers)`` of the binary-mode Kafka record: key = room, value = ``event.data``."""
    c = _ctx(event.ctx)
    t = _type(event.etype)
    seq = f"{event.sequence:020d}"
    headers = [
        *c.kafka_headers,
        ("ce_id", (c.id_prefix + seq).encode()),
        ("ce_type", t.type_bytes),
        ("ce_time", event.time.encode()),
        ("ce_dataschema", t.dataschema_bytes),
        ("ce_sequence", seq.encode()),
        (CONTENT_TYPE, _content_type(event.datacontenttype)[0]),
    ]
    if event.subject:
        headers.append(("ce_subject", event.subject.encode()))
    if event.traceparent:
        headers.append(("ce_traceparent", event.traceparent.encode()))
    for name, value in event.extensions:
        headers.append(("ce_" + name, value.encode()))
    return c.room_bytes, event.data, headers


def kafka_key(event: CloudEvent) -> bytes:
    """The record key alone (the room name as UTF-8), for partitioning before encoding the rest."""
    return _ctx(event.ctx).room_bytes


def event_from_kafka(
    key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]]
) -> dict[str, Any]:
    """Attributes (strings) plus ``data`` (bytes) of a binary-mode record; header names case-insensitive."""
    event: dict[str, Any] = {}
    for name, raw in headers:
        lname = name.lower()
        if lname.startswith("ce_"):
            event[lname[3:]] = raw.decode()
        elif lname == CONTENT_TYPE:
            event["datacontenttype"] = raw.decode()
    if key is not None and "partitionkey" not in event:
        event["partitionkey"] = key.decode()
    event["data"] = value if value is not None else b""
    return event


# --- NATS ------------------------------------------------------------------------------------------------


def nats_subject(prefix: str, event: CloudEvent) -> str:
    """``<prefix>.events.<room token>.<type token>``."""
    return f"{prefix}.events.{_ctx(event.ctx).subject_room}.{_type(event.etype).subject_token}"


def nats_structured(event: CloudEvent) -> bytes:
    """The JSON event format 1.0.2 payload: attributes as top-level members, then the data.

    JSON data (``*/json``, ``*/*+json``) is embedded as the JSON value itself, not as a string; it is
    trusted to be valid JSON (the bridge produced it). Any other data goes in ``data_base64``.
    """
    c = _ctx(event.ctx)
    _, is_json, ct_member = _content_type(event.datacontenttype)
    seq = f"{event.sequence:020d}"
    head = (
        f'{c.structured_prefix}{c.id_prefix_json}{seq}","sequence":"{seq}"{_type(event.etype).json}'
        f',"time":{encode_basestring(event.time)}{ct_member}'
    )
    if event.subject:
        head += ',"subject":' + encode_basestring(event.subject)
    if event.traceparent:
        head += ',"traceparent":' + encode_basestring(event.traceparent)
    for name, value in event.extensions:
        head += f',"{name}":' + encode_basestring(value)
    data = event.data
    if is_json:
        if not data:
            return (head + "}").encode()
        return b"".join((head.encode(), b',"data":', data, b"}"))
    return b"".join((head.encode(), b',"data_base64":"', base64.b64encode(data), b'"}'))


def nats_binary_headers(event: CloudEvent) -> dict[str, str]:
    """The ``ce-`` headers of the NATS binary mode (1.0.3-wip), percent-encoded; the payload is the data."""
    c = _ctx(event.ctx)
    seq = f"{event.sequence:020d}"
    headers = c.nats_headers | _type(event.etype).nats
    headers["ce-id"] = percent_encode(c.id_prefix + seq)
    headers["ce-sequence"] = seq
    headers["ce-time"] = percent_encode(event.time)
    headers["ce-datacontenttype"] = percent_encode(event.datacontenttype)
    if event.subject:
        headers["ce-subject"] = percent_encode(event.subject)
    if event.traceparent:
        headers["ce-traceparent"] = percent_encode(event.traceparent)
    for name, value in event.extensions:
        headers["ce-" + name] = percent_encode(value)
    return headers


def nats_binary_block(event: CloudEvent) -> bytes:
    """The NATS header block of the binary mode, as :func:`nats_binary_headers` then
    :func:`~bridge.bus.nats_wire.header_block` would encode it, joined from lines encoded once per session
    and per type: the dict, its merge and a check per header cost 13 µs per event more than this."""
    c = _ctx(event.ctx)
    seq = f"{event.sequence:020d}"
    lines = (
        f"ce-id: {c.id_prefix_percent}{seq}\r\nce-sequence: {seq}\r\nce-time: {percent_encode(event.time)}"
        f"\r\nce-datacontenttype: {percent_encode(event.datacontenttype)}\r\n"
    )
    if event.subject:
        lines += f"ce-subject: {percent_encode(event.subject)}\r\n"
    if event.traceparent:
        lines += f"ce-traceparent: {percent_encode(event.traceparent)}\r\n"
    parts = [BLOCK_START, c.nats_lines, _type(event.etype).nats_lines, lines.encode()]
    if event.extensions:  # the bridge's own events only; names checked like any header's
        parts.append(header_lines({"ce-" + name: percent_encode(value) for name, value in event.extensions}))
    parts.append(BLOCK_END)
    return b"".join(parts)


def event_from_nats(subject: str, payload: bytes, headers: Mapping[str, str] | None) -> dict[str, Any]:
    """Attributes plus ``data`` (bytes) of a NATS message in either mode (detected as the binding says).

    Structured JSON data comes back re-serialised compactly in ``data`` and parsed in ``data_json``.
    Raises ValueError for a payload that is not a CloudEvent.
    """
    lower = {k.lower(): v for k, v in (headers or {}).items()}
    content_type = lower.get("content-type", "")
    if content_type.lower().startswith("application/cloudevents") or not any(
        k.startswith("ce-") for k in lower
    ):
        return _from_structured(payload)
    event: dict[str, Any] = {k[3:]: percent_decode(v) for k, v in lower.items() if k.startswith("ce-")}
    event["data"] = payload
    return event


def _from_structured(payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a JSON CloudEvent: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("a structured CloudEvent must be a JSON object")  # noqa: TRY004 (a format error)
    event: dict[str, Any] = {k: v for k, v in doc.items() if k not in ("data", "data_base64")}
    if "data_base64" in doc:
        if "data" in doc:
            raise ValueError("data and data_base64 are mutually exclusive")
        try:
            event["data"] = base64.b64decode(doc["data_base64"], validate=True)
        except (binascii.Error, TypeError) as exc:
            raise ValueError(f"data_base64 is not base64: {exc}") from exc
    elif "data" in doc:
        event["data_json"] = doc["data"]
        event["data"] = json.dumps(doc["data"], separators=(",", ":"), ensure_ascii=False).encode()
    else:
        event["data"] = b""
    return event
