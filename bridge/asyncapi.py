"""``schemas/asyncapi.yaml`` (AsyncAPI 3.0.0) and the README catalogues, generated from the registries.

The document describes the bridge from its own point of view: it *sends* events, command results and
dead letters and *receives* commands, on Kafka and on NATS (DESIGN.md §3). There is one message per event
type and per accepted command type, shared by both servers: its payload is the data (the binary-mode
Kafka value or NATS payload, in the protobuf JSON mapping) or the structured JSON CloudEvent carrying it,
and its headers are those of either bus (``schemas/envelope/``). Every ``$ref`` is a local file or a
``#`` pointer, so validation works offline (``make asyncapi-check``).

Examples are built with the real encoders (``bridge/bus/bindings.py``) from the data in
``bridge/schema_examples.py``, so they show exactly what goes on the wire.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import yaml
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import Default as default_pool
from google.protobuf.message import Message

from bridge import __version__, schema_examples
from bridge.bus.bindings import (
    CLOUDEVENTS_JSON,
    kafka_record,
    nats_structured,
    room_token,
)
from bridge.commands.model import CommandType
from bridge.envelope import COMMAND_RESULT_TYPE
from bridge.events import types
from bridge.events.cloudevent import JSON, PROTOBUF, SPEC_VERSION, CloudEvent, EventType, SessionContext
from bridge.events.mapping import SIGNAL_SUBJECTS

KAFKA_EVENTS: Final = "livekit.events"
KAFKA_COMMANDS: Final = "livekit.commands"
KAFKA_DLQ: Final = "livekit.commands.dlq"
PREFIX: Final = "livekit"
KAFKA_BINDING: Final = "0.5.0"
NATS_BINDING: Final = "0.1.0"
COMMAND_SOURCE: Final = "urn:example:ops-console"

EVENTS_START: Final = "<!-- catalogue:events:start -->"
EVENTS_END: Final = "<!-- catalogue:events:end -->"
COMMANDS_START: Final = "<!-- catalogue:commands:start -->"
COMMANDS_END: Final = "<!-- catalogue:commands:end -->"

_ROOM_PARAM: Final = {
    "description": "The room name with every UTF-8 byte outside `[A-Za-z0-9_-]` written as `%XX` "
    "(upper-case hex), so room `a.b` is `a%2Eb`.",
    "examples": [schema_examples.ROOM],
}


# --- examples --------------------------------------------------------------------------------------------


def _message(name: str) -> Message:
    cls = message_factory.GetMessageClass(default_pool().FindMessageTypeByName(name))
    return cls()


def example_data(etype: EventType) -> Any:
    """The example data (protobuf JSON mapping) of an event type; ``{}`` when none is written yet."""
    table: Mapping[str, Mapping[str, Any]] = {
        "signal": schema_examples.SIGNAL_EVENTS,
        "data": schema_examples.DATA_EVENTS,
        "bridge": schema_examples.BRIDGE_EVENTS,
    }
    return table[etype.kind].get(etype.field, {})


def command_example_data(ctype: CommandType) -> Any:
    """The example data of a command type; ``{}`` when none is written yet."""
    table = schema_examples.SIGNAL_COMMANDS if ctype.kind == "signal" else schema_examples.BRIDGE_COMMANDS
    return table.get(ctype.name, {})


def _subject(etype: EventType, message: Message) -> str | None:
    if etype.kind == "signal":
        pick: Callable[[Any], str | None] | None = SIGNAL_SUBJECTS.get(etype.field)
        return pick(message) if pick else None
    if etype.kind == "data":
        return "alice"  # the data packet's sender
    return None


def _command_id(ctype_name: str) -> str:
    return f"cmd-{ctype_name.replace('_', '-')}-1"


def _event(etype: EventType, sequence: int, content_type: str) -> tuple[CloudEvent, dict[str, str]]:
    """A CloudEvent for the example data, plus the extensions the encoders do not write yet."""
    message = _message(etype.message)
    json_format.ParseDict(example_data(etype), message)
    data = (
        message.SerializeToString(deterministic=True)
        if content_type == PROTOBUF
        else json.dumps(json_format.MessageToDict(message), separators=(",", ":")).encode()
    )
    ctx = SessionContext(
        source=schema_examples.SOURCE,
        room=schema_examples.ROOM,
        session=schema_examples.SESSION,
        room_sid=schema_examples.ROOM_SID,
    )
    event = CloudEvent(
        ctx=ctx,
        etype=etype,
        sequence=sequence,
        time=schema_examples.TIME,
        data=data,
        datacontenttype=content_type,
        subject=_subject(etype, message),
        traceparent=schema_examples.TRACEPARENT if etype.type == COMMAND_RESULT_TYPE else None,
    )
    extra = {}
    if etype.type == COMMAND_RESULT_TYPE:
        extra["lkcommandid"] = str(example_data(etype).get("commandId", _command_id("send_data")))
    return event, extra


def event_examples(etype: EventType, sequence: int) -> list[dict[str, Any]]:
    """A Kafka binary-mode record (JSON data) and a NATS structured message (protobuf data, the default)."""
    event, extra = _event(etype, sequence, JSON)
    _, value, headers = kafka_record(event)
    kafka_headers = {name: raw.decode() for name, raw in headers}
    kafka_headers.update({f"ce_{k}": v for k, v in extra.items()})
    event, extra = _event(etype, sequence, PROTOBUF)
    structured = json.loads(nats_structured(event))
    structured.update(extra)
    return [
        {
            "name": "kafka",
            "summary": f"Kafka record on {KAFKA_EVENTS} (key {schema_examples.ROOM!r}), JSON data",
            "headers": dict(sorted(kafka_headers.items())),
            "payload": json.loads(value),
        },
        {
            "name": "nats",
            "summary": f"NATS message on {PREFIX}.events.{room_token(schema_examples.ROOM)}."
            f"{types.subject_token(etype)}, structured, protobuf data",
            "headers": {"Content-Type": CLOUDEVENTS_JSON},
            "payload": structured,
        },
    ]


def command_examples(ctype: CommandType) -> list[dict[str, Any]]:
    """A Kafka binary-mode record and a NATS structured message, both with JSON data."""
    data = command_example_data(ctype)
    cid = _command_id(ctype.name)
    room = schema_examples.ROOM
    return [
        {
            "name": "kafka",
            "summary": f"Kafka record on {KAFKA_COMMANDS} (key {room!r})",
            "headers": {
                "ce_specversion": SPEC_VERSION,
                "ce_id": cid,
                "ce_source": COMMAND_SOURCE,
                "ce_type": ctype.type,
                "ce_lkroom": room,
                "content-type": JSON,
            },
            "payload": data,
        },
        {
            "name": "nats",
            "summary": f"NATS request on {PREFIX}.commands.{room_token(room)}, structured",
            "headers": {"Content-Type": CLOUDEVENTS_JSON},
            "payload": {
                "specversion": SPEC_VERSION,
                "id": cid,
                "source": COMMAND_SOURCE,
                "type": ctype.type,
                "lkroom": room,
                "traceparent": schema_examples.TRACEPARENT,
                "datacontenttype": JSON,
                "data": data,
            },
        },
    ]


def _dead_letter_examples() -> list[dict[str, Any]]:
    bad_type = "io.livekit.command.bridge.reboot.v1"
    error = f"attribute type: {bad_type!r} is not a known command type"
    value = {"force": True}
    original = {
        "specversion": SPEC_VERSION,
        "id": "cmd-reboot-1",
        "source": COMMAND_SOURCE,
        "type": bad_type,
        "lkroom": schema_examples.ROOM,
    }
    subject = f"{PREFIX}.commands.{room_token(schema_examples.ROOM)}"
    return [
        {
            "name": "kafka",
            "summary": f"Kafka record on {KAFKA_DLQ}: the original key, value and headers plus the error",
            "headers": {
                **{f"ce_{k}": v for k, v in original.items()},
                "content-type": JSON,
                "ce_bridgeerrorcode": "unknown_type",
                "ce_bridgeerror": error,
            },
            "payload": value,
        },
        {
            "name": "nats",
            "summary": f"NATS message on {PREFIX}.dlq.commands: the original message plus the error",
            "headers": {
                "Content-Type": CLOUDEVENTS_JSON,
                "ce-bridgeerrorcode": "unknown_type",
                "ce-bridgeerror": error,
                "bridge-original-subject": subject,
            },
            "payload": {**original, "datacontenttype": JSON, "data": value},
        },
    ]


# --- the document ------------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _ref(pointer: str) -> dict[str, str]:
    return {"$ref": pointer}


def _payload(data_file: str, envelope_file: str, type_const: dict[str, Any]) -> dict[str, Any]:
    return {
        "oneOf": [
            {
                "title": "binary mode: the data",
                "description": "The Kafka record value or NATS binary-mode payload. With `application/json` "
                "it is this JSON; with `application/x-protobuf` (the default for events) it is the "
                "serialized protobuf message this JSON maps.",
                # Wrapped: draft-07 tools (AsyncAPI Schema) ignore the siblings of a bare $ref.
                "allOf": [_ref(data_file)],
            },
            {
                "title": "structured mode: the JSON CloudEvent",
                "allOf": [
                    _ref(envelope_file),
                    {"type": "object", "properties": {**type_const, "data": _ref(data_file)}},
                ],
            },
        ]
    }


def _event_message(etype: EventType, description: str, sequence: int) -> dict[str, Any]:
    data_file = f"./events/{etype.type}.json"
    extra: dict[str, Any] = {}
    if etype.type == COMMAND_RESULT_TYPE:
        extra["correlationId"] = {
            "description": "The command's `id`, as the `lkcommandid` extension (`ce_lkcommandid` on Kafka).",
            "location": "$message.payload#/lkcommandid",
        }
    return {
        "name": etype.type,
        "title": f"{etype.kind} {etype.field}",
        "summary": _one_line(description).split(". ")[0].rstrip(".") + ".",
        "description": f"{description}\n\nData: `{etype.message}` (`dataschema` `{etype.dataschema}`).",
        "payload": _payload(
            data_file,
            "./envelope/event.json",
            {"type": {"const": etype.type}, "dataschema": {"const": etype.dataschema}},
        ),
        **extra,
        "traits": [_ref("#/components/messageTraits/cloudEventsEvent")],
        "examples": event_examples(etype, sequence),
        "x-cloudevents-type": etype.type,
        "x-protobuf-message": etype.message,
    }


def _command_message(ctype: CommandType, description: str) -> dict[str, Any]:
    message = ctype.message_class.DESCRIPTOR.full_name
    return {
        "name": ctype.type,
        "title": f"{ctype.kind} command {ctype.name}",
        "summary": _one_line(description).split(". ")[0].rstrip(".") + ".",
        "description": f"{description}\n\nData: `{message}`. Answered by one "
        f"`{COMMAND_RESULT_TYPE}` event whose `lkcommandid` is this command's `id`.",
        "payload": _payload(
            f"./commands/{ctype.type}.json", "./envelope/command.json", {"type": {"const": ctype.type}}
        ),
        "traits": [_ref("#/components/messageTraits/cloudEventsCommand")],
        "examples": command_examples(ctype),
        "x-cloudevents-type": ctype.type,
        "x-protobuf-message": message,
    }


def _kafka_key(what: str) -> dict[str, Any]:
    return {
        "kafka": {"key": {"type": "string", "description": what}, "bindingVersion": KAFKA_BINDING},
        "nats": {"bindingVersion": NATS_BINDING},
    }


def _traits() -> dict[str, Any]:
    ce_docs = {
        "description": "CloudEvents 1.0.2 (core, JSON format, Kafka and NATS bindings)",
        "url": "https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/spec.md",
    }
    return {
        "cloudEventsEvent": {
            "headers": _ref("./envelope/event-headers.json"),
            "tags": [{"name": "cloudevents"}, {"name": "event"}],
            "externalDocs": ce_docs,
            "bindings": _kafka_key("The room name (also the `partitionkey` extension)."),
        },
        "cloudEventsCommand": {
            "headers": _ref("./envelope/command-headers.json"),
            "correlationId": {
                "description": "The command's id: its result carries it as `lkcommandid`.",
                "location": "$message.payload#/id",
            },
            "tags": [{"name": "cloudevents"}, {"name": "command"}],
            "externalDocs": ce_docs,
            "bindings": _kafka_key("The room name; it must equal the `lkroom` extension."),
        },
    }


def _messages_of(channel: str, names: list[str]) -> list[dict[str, str]]:
    return [_ref(f"#/channels/{channel}/messages/{name}") for name in names]


def document(comments: Mapping[str, str]) -> dict[str, Any]:
    """The AsyncAPI document as plain data (insertion order is the output order)."""
    from bridge import schemas

    event_names = sorted(types.ALL)
    commands = schemas.accepted_commands()
    command_names = [c.type for c in commands]
    messages: dict[str, Any] = {}
    for seq, name in enumerate(event_names, start=1):
        etype = types.ALL[name]
        messages[name] = _event_message(etype, schemas.describe(etype, comments), seq)
    for ctype in commands:
        messages[ctype.type] = _command_message(ctype, schemas.describe_command(ctype, comments))
    messages["commandDeadLetter"] = {
        "name": "commandDeadLetter",
        "title": "dead-lettered command",
        "summary": "A command that could not be parsed or validated, as it arrived, with the error.",
        "description": "Published instead of a result when a command is malformed (any code but "
        "`not_allowed`, which is answered by a rejected command result). The bridge keeps running.",
        "payload": {"description": "The original Kafka value or NATS payload, unchanged (any bytes)."},
        "headers": _ref("./envelope/dead-letter-headers.json"),
        "bindings": _kafka_key("The original record's key, unchanged (the room, when the sender set it)."),
        "examples": _dead_letter_examples(),
    }
    event_refs = {name: _ref(f"#/components/messages/{name}") for name in event_names}
    command_refs = {name: _ref(f"#/components/messages/{name}") for name in command_names}
    result_ref = {"commandResult": _ref(f"#/components/messages/{COMMAND_RESULT_TYPE}")}
    dlq_ref = {"commandDeadLetter": _ref("#/components/messages/commandDeadLetter")}
    kafka = [_ref("#/servers/kafka")]
    nats = [_ref("#/servers/nats")]

    def topic(name: str) -> dict[str, Any]:
        return {"kafka": {"topic": name, "bindingVersion": KAFKA_BINDING}}

    token_param = {
        "description": "The event's subject token: the oneof field for signal events, `data_<field>` for "
        "data events, `bridge_<name>` for the bridge's own events.",
        "enum": sorted(types.subject_token(types.ALL[n]) for n in event_names),
        "examples": ["speakers_changed"],
    }
    channels: dict[str, Any] = {
        "events": {
            "address": KAFKA_EVENTS,
            "title": "Events (Kafka)",
            "description": "Every event of every room, setting `kafka.events_topic`. Binary content mode; "
            "the key is the room, so one room's events stay in order on one partition.",
            "servers": kafka,
            "messages": event_refs,
            "bindings": topic(KAFKA_EVENTS),
        },
        "natsEvents": {
            "address": f"{PREFIX}.events.{{room}}.{{type}}",
            "title": "Events (NATS)",
            "description": "`<nats.subject_prefix>.events.<room>.<type>`. Structured mode "
            "(`application/cloudevents+json`) by default, binary `ce-` headers with `nats.binary_mode`.",
            "servers": nats,
            "parameters": {"room": _ROOM_PARAM, "type": token_param},
            "messages": event_refs,
        },
        "commands": {
            "address": KAFKA_COMMANDS,
            "title": "Commands (Kafka)",
            "description": "Commands to the bridge, setting `kafka.commands_topic`. Binary content mode, "
            "key = room.",
            "servers": kafka,
            "messages": command_refs,
            "bindings": topic(KAFKA_COMMANDS),
        },
        "natsCommands": {
            "address": f"{PREFIX}.commands.{{room}}",
            "title": "Commands (NATS)",
            "description": "`<nats.subject_prefix>.commands.<room>`, structured or binary mode. A request "
            "(with a reply subject) gets its command result as the reply.",
            "servers": nats,
            "parameters": {"room": _ROOM_PARAM},
            "messages": command_refs,
        },
        "commandResults": {
            "address": KAFKA_EVENTS,
            "title": "Command results (Kafka)",
            "description": "Command results travel with the room's other events on the events topic.",
            "servers": kafka,
            "messages": result_ref,
            "bindings": topic(KAFKA_EVENTS),
        },
        "natsCommandResults": {
            "address": f"{PREFIX}.events.{{room}}.bridge_command_result",
            "title": "Command results (NATS)",
            "description": "Every command result, whichever bus the command came from.",
            "servers": nats,
            "parameters": {"room": _ROOM_PARAM},
            "messages": result_ref,
        },
        "natsCommandReplies": {
            "address": None,
            "title": "Command replies (NATS)",
            "description": "The reply subject of a NATS command request: the result as a structured JSON "
            "CloudEvent, also published on the events subject.",
            "servers": nats,
            "messages": result_ref,
        },
        "deadLetters": {
            "address": KAFKA_DLQ,
            "title": "Dead letters (Kafka)",
            "description": "Commands that could not be parsed or validated (`kafka.dead_letter_topic`).",
            "servers": kafka,
            "messages": dlq_ref,
            "bindings": topic(KAFKA_DLQ),
        },
        "natsDeadLetters": {
            "address": f"{PREFIX}.dlq.commands",
            "title": "Dead letters (NATS)",
            "description": "Commands that could not be parsed or validated, as they arrived on NATS.",
            "servers": nats,
            "messages": dlq_ref,
        },
    }

    def op(action: str, channel: str, names: list[str], description: str, **extra: Any) -> dict[str, Any]:
        return {
            "action": action,
            "channel": _ref(f"#/channels/{channel}"),
            "description": description,
            "messages": _messages_of(channel, names),
            **extra,
        }

    operations: dict[str, Any] = {
        "publishEvents": op("send", "events", event_names, "The bridge publishes every event to Kafka."),
        "publishNatsEvents": op(
            "send", "natsEvents", event_names, "The bridge publishes every event to NATS."
        ),
        "receiveCommands": op(
            "receive", "commands", command_names, "The bridge consumes commands from Kafka."
        ),
        "receiveNatsCommands": op(
            "receive",
            "natsCommands",
            command_names,
            "The bridge receives commands from NATS and replies to a request with the command result.",
            reply={
                "channel": _ref("#/channels/natsCommandReplies"),
                "messages": _messages_of("natsCommandReplies", ["commandResult"]),
            },
        ),
        "publishCommandResults": op(
            "send", "commandResults", ["commandResult"], "One result per command, to Kafka."
        ),
        "publishNatsCommandResults": op(
            "send", "natsCommandResults", ["commandResult"], "One result per command, to NATS."
        ),
        "deadLetterCommands": op(
            "send",
            "deadLetters",
            ["commandDeadLetter"],
            "Malformed Kafka commands go to the dead-letter topic.",
        ),
        "deadLetterNatsCommands": op(
            "send",
            "natsDeadLetters",
            ["commandDeadLetter"],
            "Malformed NATS commands go to the dead-letter subject.",
        ),
    }
    return {
        "asyncapi": "3.0.0",
        "id": "urn:livekit-bus-bridge",
        "info": {
            "title": "livekit-bus-bridge",
            "version": __version__,
            "description": "LiveKit rooms as CloudEvents 1.0 on Kafka and NATS, and commands back in. "
            "Generated by `livekit-bridge schemas`; do not edit.",
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": JSON,
        "servers": {
            "kafka": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "description": "Any Kafka cluster (setting `kafka.bootstrap_servers`).",
            },
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "Any NATS server (setting `nats.servers`); subjects use `nats.subject_prefix` "
                f"(default `{PREFIX}`).",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "messageTraits": _traits()},
    }


class _Dumper(yaml.SafeDumper):
    """Never writes anchors/aliases: shared Python objects must appear in full at every use."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_yaml(comments: Mapping[str, str]) -> bytes:
    header = (
        "# Generated by `livekit-bridge schemas` (make schemas) from the protobuf descriptors; do not edit.\n"
    )
    body = yaml.dump(
        document(comments),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=110,
        default_flow_style=False,
    )
    return (header + body).encode("utf-8")


# --- README catalogues --------------------------------------------------------------------------------------

_EXAMPLE_MAX: Final = 110


def _compact(data: Any) -> str:
    """Compact JSON; past ``_EXAMPLE_MAX`` characters, nested values are abridged to ``{…}`` / ``[…]``."""
    full = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    if len(full) <= _EXAMPLE_MAX or not isinstance(data, dict):
        return full
    parts = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            shown = "{…}"
        elif isinstance(value, list) and value:
            shown = "[…]"
        else:
            shown = json.dumps(value, ensure_ascii=False)
        parts.append(f"{json.dumps(key)}:{shown}")
    return "{" + ",".join(parts) + "}"


def _cell(text: str) -> str:
    return _one_line(text).replace("|", "\\|")


def _code(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"


def events_catalogue(comments: Mapping[str, str]) -> str:
    from bridge import schemas

    rows = [
        "| type | when it is sent | data | example data (JSON) |",
        "|---|---|---|---|",
    ]
    for name in sorted(types.ALL):
        etype = types.ALL[name]
        rows.append(
            f"| `{name}` | {_cell(schemas.describe(etype, comments))} | `{etype.message}` "
            f"| {_code(_compact(example_data(etype)))} |"
        )
    return "\n".join(rows)


def commands_catalogue(comments: Mapping[str, str]) -> str:
    from bridge import schemas

    rows = [
        "| type | what it does | data | example data (JSON) |",
        "|---|---|---|---|",
    ]
    for ctype in schemas.accepted_commands():
        message = ctype.message_class.DESCRIPTOR.full_name
        rows.append(
            f"| `{ctype.type}` | {_cell(schemas.describe_command(ctype, comments))} "
            f"| `{message}` | {_code(_compact(command_example_data(ctype)))} |"
        )
    return "\n".join(rows)


def _replace(text: str, start: str, end: str, body: str) -> str:
    head, found, rest = text.partition(start)
    _, found_end, tail = rest.partition(end)
    if not found or not found_end:
        raise ValueError(f"README markers {start} ... {end} not found")
    note = "<!-- generated by `livekit-bridge schemas` (make schemas); edit bridge/schema_examples.py -->"
    return f"{head}{start}\n{note}\n\n{body}\n\n{end}{tail}"


def update_readme(text: str, comments: Mapping[str, str]) -> str:
    """``text`` with the event and command catalogues (re)written between their marker comments."""
    text = _replace(text, EVENTS_START, EVENTS_END, events_catalogue(comments))
    return _replace(text, COMMANDS_START, COMMANDS_END, commands_catalogue(comments))
