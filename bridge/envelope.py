"""JSON Schemas (draft 2020-12) of the CloudEvents envelope and the bus headers, as the bridge writes them.

Written by hand from CloudEvents 1.0.2 (spec.md, formats/json-format.md, the Kafka binding 1.0.2 and the
NATS binding 1.0.3-wip for binary mode) and ``bridge/bus/bindings.py``: the upstream JSON Schema and the
AsyncAPI traits of the CloudEvents working draft are only reachable by remote ``$ref``, and the AsyncAPI
check runs offline, so the pieces we need are vendored here. Schemas refer to each other by relative file
name (``./cloudevents.json``) and carry no ``$id``, so every tool resolves them against the file location.

``schemas()`` returns them by file stem; ``bridge/schemas.py`` writes them to ``schemas/envelope/``.
"""

from __future__ import annotations

from typing import Any, Final

from bridge.bus.bindings import CLOUDEVENTS_JSON
from bridge.commands.validate import CODES
from bridge.events.cloudevent import JSON, PROTOBUF, SPEC_VERSION

META_SCHEMA: Final = "https://json-schema.org/draft/2020-12/schema"
CE_SPEC: Final = "CloudEvents 1.0.2"

# Extension names: lower-case ASCII letters and digits only (spec.md "Attribute Naming Convention").
_ATTRIBUTE_NAME: Final = "^[a-z0-9]+$"
_SEQUENCE: Final = "^[0-9]{20}$"
_TRACEPARENT: Final = "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
_EVENT_TYPE: Final = "^io\\.livekit\\.(signal|data|bridge)\\.[a-z0-9_]+\\.v1$"
_COMMAND_TYPE: Final = "^io\\.livekit\\.command\\.(bridge\\.)?[a-z0-9_]+\\.v1$"
_DATASCHEMA: Final = "^urn:livekit-bus-bridge:schema:"
COMMAND_RESULT_TYPE: Final = "io.livekit.bridge.command_result.v1"

_STRING: Final = {"type": "string", "minLength": 1}

# The bridge's extensions (DESIGN.md §3 "Events"), shared by the JSON members and the headers.
EXTENSIONS: Final[dict[str, dict[str, Any]]] = {
    "lkroom": {**_STRING, "description": "LiveKit room name."},
    "lkroomsid": {**_STRING, "description": "LiveKit room sid, once the server has told the bridge."},
    "lksession": {
        **_STRING,
        "description": "Id of the bridge's session in the room; `sequence` restarts with every session.",
    },
    "sequence": {
        "type": "string",
        "pattern": _SEQUENCE,
        "description": "Position of the event in its session, zero-padded to 20 digits, gap-free "
        "(CloudEvents sequence extension: compare as strings).",
    },
    "partitionkey": {
        **_STRING,
        "description": "The room name: the Kafka record key (CloudEvents partitioning extension).",
    },
    "traceparent": {
        "type": "string",
        "pattern": _TRACEPARENT,
        "description": "W3C trace context of the operation that caused the event, when there is one.",
    },
    "lkcommandid": {
        **_STRING,
        "description": "On command_result events only: the `id` of the command this result answers.",
    },
}
_EVENT_REQUIRED: Final = ("lkroom", "lksession", "sequence", "partitionkey")


def _schema(title: str, description: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"$schema": META_SCHEMA, "title": title, "description": description, **body}


def cloudevents() -> dict[str, Any]:
    """CloudEvents 1.0.2 JSON event format (structured mode), any producer."""
    optional: dict[str, Any] = {
        "datacontenttype": {**_STRING, "description": "RFC 2046 media type of `data`; absent means JSON."},
        "dataschema": {**_STRING, "format": "uri", "description": "Absolute URI of the data's schema."},
        "subject": {**_STRING, "description": "What the event is about, within `source`."},
        "time": {"type": "string", "format": "date-time", "description": "RFC 3339 time of the occurrence."},
    }
    return _schema(
        f"{CE_SPEC} JSON event format",
        "A CloudEvent in structured mode (`application/cloudevents+json`): every attribute and extension is "
        "a top-level member, `data` holds JSON data as a JSON value and `data_base64` binary data. "
        "A JSON null means the attribute is unset. Written from cloudevents/spec v1.0.2 spec.md and "
        "formats/json-format.md.",
        {
            "type": "object",
            "required": ["id", "source", "specversion", "type"],
            "properties": {
                "id": {**_STRING, "description": "Unique per `source`; a resent duplicate keeps its id."},
                "source": {**_STRING, "format": "uri-reference", "description": "Where the event happened."},
                "specversion": {"const": SPEC_VERSION},
                "type": {**_STRING, "description": "What happened; reverse-DNS prefixed."},
                **{name: {"anyOf": [schema, {"type": "null"}]} for name, schema in optional.items()},
                "data": {
                    "description": "The event data (JSON data as a JSON value, other text as a string)."
                },
                "data_base64": {"type": "string", "contentEncoding": "base64", "description": "Binary data."},
            },
            "propertyNames": {"anyOf": [{"const": "data_base64"}, {"pattern": _ATTRIBUTE_NAME}]},
            "not": {"required": ["data", "data_base64"]},
        },
    )


def _data_members() -> dict[str, Any]:
    return {
        "data": {"description": "The data in the protobuf JSON mapping (with `application/json`)."},
        "data_base64": {
            "type": "string",
            "contentEncoding": "base64",
            "description": "The serialized protobuf message (with `application/x-protobuf`).",
        },
    }


def event() -> dict[str, Any]:
    """The structured JSON event the bridge publishes on NATS (and the NATS reply to a command)."""
    props: dict[str, Any] = {
        "specversion": {"const": SPEC_VERSION},
        "id": {
            "type": "string",
            "pattern": "^.+-[0-9]{20}$",
            "description": "`<lksession>-<sequence>`: unique and stable.",
        },
        "source": {
            "type": "string",
            "pattern": "^livekit://",
            "description": "`livekit://<livekit host>/rooms/<room, percent-encoded>`.",
        },
        "type": {"type": "string", "pattern": _EVENT_TYPE},
        "time": {"type": "string", "format": "date-time"},
        "subject": {**_STRING, "description": "Participant identity or track sid the event is about."},
        "datacontenttype": {"enum": [PROTOBUF, JSON]},
        "dataschema": {
            "type": "string",
            "pattern": _DATASCHEMA,
            "description": "`urn:livekit-bus-bridge:schema:<protobuf message>`.",
        },
        **EXTENSIONS,
        **_data_members(),
    }
    return _schema(
        "LiveKit bus bridge event (structured JSON)",
        "A CloudEvent published by the bridge in the JSON event format: the core attributes, the bridge's "
        "extensions, and the data as `data_base64` (protobuf, the default) or `data` (JSON).",
        {
            "type": "object",
            "allOf": [
                {"$ref": "./cloudevents.json"},
                {
                    "if": {"properties": {"datacontenttype": {"const": PROTOBUF}}},
                    "then": {"not": {"required": ["data"]}},
                },
                {
                    "if": {"properties": {"datacontenttype": {"const": JSON}}},
                    "then": {"not": {"required": ["data_base64"]}},
                },
                {
                    "if": {"properties": {"type": {"const": COMMAND_RESULT_TYPE}}},
                    "then": {"required": ["lkcommandid"]},
                    "else": {"not": {"required": ["lkcommandid"]}},
                },
            ],
            "required": [
                "specversion",
                "id",
                "source",
                "type",
                "time",
                "datacontenttype",
                "dataschema",
                *_EVENT_REQUIRED,
            ],
            "properties": props,
            "additionalProperties": False,
        },
    )


def command() -> dict[str, Any]:
    """A command in structured JSON (NATS), as ``bridge.commands.validate`` accepts it."""
    return _schema(
        "LiveKit bus bridge command (structured JSON)",
        "A command CloudEvent in the JSON event format. `lkroom` addresses the room (it must agree with the "
        "NATS subject); `datacontenttype` says whether the data is protobuf (`data_base64`) or JSON "
        "(`data`, the default when it is absent). Other attributes and extensions are ignored.",
        {
            "type": "object",
            "allOf": [{"$ref": "./cloudevents.json"}],
            "required": ["specversion", "id", "source", "type", "lkroom"],
            "properties": {
                "specversion": {"const": SPEC_VERSION},
                "id": {
                    **_STRING,
                    "description": "Unique per source; repeated as `lkcommandid` in the result.",
                },
                "source": {**_STRING, "description": "Who sent the command (any URI-reference)."},
                "type": {"type": "string", "pattern": _COMMAND_TYPE},
                "datacontenttype": {"enum": [PROTOBUF, "application/protobuf", JSON]},
                "lkroom": EXTENSIONS["lkroom"],
                "traceparent": EXTENSIONS["traceparent"],
                **_data_members(),
            },
        },
    )


def _header_props(prefix: str, names: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {f"{prefix}{name}": schema for name, schema in names.items()}


def _event_attributes() -> dict[str, dict[str, Any]]:
    return {
        "specversion": {"const": SPEC_VERSION},
        "id": {"type": "string", "pattern": "^.+-[0-9]{20}$"},
        "source": {"type": "string", "pattern": "^livekit://"},
        "type": {"type": "string", "pattern": _EVENT_TYPE},
        "time": {"type": "string", "format": "date-time"},
        "subject": _STRING,
        "dataschema": {"type": "string", "pattern": _DATASCHEMA},
        **EXTENSIONS,
    }


_EVENT_HEADERS_REQUIRED: Final = (
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "dataschema",
    *_EVENT_REQUIRED,
)


def kafka_event_headers() -> dict[str, Any]:
    return _schema(
        "Kafka headers of an event (binary mode)",
        f"{CE_SPEC} Kafka binding, binary content mode: every attribute is a `ce_<name>` header holding its "
        "UTF-8 string (no percent-encoding) and `datacontenttype` is the plain `content-type` header. The "
        "record key is the room name and the value is the data.",
        {
            "type": "object",
            "required": [*(f"ce_{n}" for n in _EVENT_HEADERS_REQUIRED), "content-type"],
            "properties": {
                **_header_props("ce_", _event_attributes()),
                "content-type": {"enum": [PROTOBUF, JSON]},
            },
            "additionalProperties": {"type": "string"},
        },
    )


def nats_event_headers() -> dict[str, Any]:
    binary = {
        "title": "binary mode (nats.binary_mode: true)",
        "type": "object",
        "required": [*(f"ce-{n}" for n in _EVENT_HEADERS_REQUIRED), "ce-datacontenttype"],
        "properties": {
            **_header_props("ce-", {name: {"type": "string"} for name in _event_attributes()}),
            "ce-datacontenttype": {"enum": [PROTOBUF, JSON]},
        },
        "additionalProperties": {"type": "string"},
    }
    return _schema(
        "NATS headers of an event",
        "Structured mode (the default, NATS binding 1.0.2): one `Content-Type: application/cloudevents+json` "
        "header and the JSON event as the payload. Binary mode (NATS binding 1.0.3-wip): a `ce-<name>` "
        'header per attribute, `datacontenttype` included, values percent-encoded (space, `"`, `%` and '
        "everything outside U+0021..U+007E, as UTF-8 bytes), and the data as the payload.",
        {"oneOf": [_nats_structured_headers(required=True), binary]},
    )


def _nats_structured_headers(*, required: bool) -> dict[str, Any]:
    return {
        "title": "structured mode",
        "type": "object",
        "required": ["Content-Type"] if required else [],
        "properties": {"Content-Type": {"const": CLOUDEVENTS_JSON}},
        "not": {"anyOf": [{"required": ["ce-specversion"]}, {"required": ["ce-id"]}]},
        "additionalProperties": {"type": "string"},
    }


_COMMAND_HEADER_ATTRIBUTES: Final[dict[str, dict[str, Any]]] = {
    "specversion": {"const": SPEC_VERSION},
    "id": _STRING,
    "source": _STRING,
    "type": {"type": "string", "pattern": _COMMAND_TYPE},
    "lkroom": _STRING,
    "traceparent": {"type": "string"},
}


def kafka_command_headers() -> dict[str, Any]:
    return _schema(
        "Kafka headers of a command (binary mode)",
        f"{CE_SPEC} Kafka binding, binary content mode: `ce_<name>` headers and `content-type` for the "
        "data's media type. The record key is the room name and must equal `ce_lkroom`.",
        {
            "type": "object",
            "required": ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_lkroom", "content-type"],
            "properties": {
                **_header_props("ce_", _COMMAND_HEADER_ATTRIBUTES),
                "content-type": {"enum": [PROTOBUF, "application/protobuf", JSON]},
            },
            "additionalProperties": {"type": "string"},
        },
    )


def nats_command_headers() -> dict[str, Any]:
    binary = {
        "title": "binary mode",
        "type": "object",
        "required": ["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-lkroom", "ce-datacontenttype"],
        "properties": {
            **_header_props("ce-", {name: {"type": "string"} for name in _COMMAND_HEADER_ATTRIBUTES}),
            "ce-datacontenttype": {"enum": [PROTOBUF, "application/protobuf", JSON]},
        },
        "additionalProperties": {"type": "string"},
    }
    return _schema(
        "NATS headers of a command",
        "Structured mode: no `ce-` headers (a `Content-Type: application/cloudevents+json` header is "
        "optional) and the JSON command as the payload. Binary mode: `ce-<name>` headers, percent-encoded, "
        "`ce-datacontenttype` included, and the data as the payload.",
        {"oneOf": [_nats_structured_headers(required=False), binary]},
    )


_ERROR_HEADERS: Final[dict[str, dict[str, Any]]] = {
    "bridgeerrorcode": {"enum": sorted(CODES), "description": "Why the command was dead-lettered."},
    "bridgeerror": {"type": "string", "description": "Human-readable detail of the error."},
}


def kafka_dead_letter_headers() -> dict[str, Any]:
    return _schema(
        "Kafka headers of a dead-lettered command",
        "The original record's headers, unchanged, plus the error as `ce_bridgeerrorcode` and "
        "`ce_bridgeerror`. Key and value are the original record's.",
        {
            "type": "object",
            "required": ["ce_bridgeerrorcode", "ce_bridgeerror"],
            "properties": _header_props("ce_", _ERROR_HEADERS),
            "additionalProperties": {"type": "string"},
        },
    )


def nats_dead_letter_headers() -> dict[str, Any]:
    return _schema(
        "NATS headers of a dead-lettered command",
        "The original message's headers, unchanged, plus the error as `ce-bridgeerrorcode` and "
        "`ce-bridgeerror` and the subject it arrived on as `bridge-original-subject`. The payload is the "
        "original payload.",
        {
            "type": "object",
            "required": ["ce-bridgeerrorcode", "ce-bridgeerror", "bridge-original-subject"],
            "properties": {
                **_header_props("ce-", _ERROR_HEADERS),
                "bridge-original-subject": {
                    "type": "string",
                    "description": "The subject the command was published to.",
                },
            },
            "additionalProperties": {"type": "string"},
        },
    )


def _either(title: str, kafka: str, nats: str) -> dict[str, Any]:
    return _schema(
        title,
        "The headers on Kafka or on NATS (AsyncAPI messages are shared by both servers).",
        {"anyOf": [{"$ref": f"./{kafka}.json"}, {"$ref": f"./{nats}.json"}]},
    )


def schemas() -> dict[str, dict[str, Any]]:
    """Every envelope schema by file stem (sorted)."""
    out = {
        "cloudevents": cloudevents(),
        "event": event(),
        "command": command(),
        "kafka-event-headers": kafka_event_headers(),
        "nats-event-headers": nats_event_headers(),
        "event-headers": _either("Headers of an event", "kafka-event-headers", "nats-event-headers"),
        "kafka-command-headers": kafka_command_headers(),
        "nats-command-headers": nats_command_headers(),
        "command-headers": _either("Headers of a command", "kafka-command-headers", "nats-command-headers"),
        "kafka-dead-letter-headers": kafka_dead_letter_headers(),
        "nats-dead-letter-headers": nats_dead_letter_headers(),
        "dead-letter-headers": _either(
            "Headers of a dead-lettered command", "kafka-dead-letter-headers", "nats-dead-letter-headers"
        ),
    }
    return dict(sorted(out.items()))
