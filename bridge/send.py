"""``livekit-bridge send ROOM COMMAND [FIELD=VALUE ...]``: publish one command and wait for its result.

COMMAND is a signal command (``mute``, ``update_metadata``, ...), a bridge command (``send_data`` or
``bridge.send_data``) or a full CloudEvents type. Fields come as ``FIELD=VALUE`` pairs (dots nest:
``attributes.role=host``; a VALUE that parses as JSON is used as such, else it is a string; a bytes
field takes UTF-8 text) or as ``--data JSON`` in protobuf's JSON mapping; both may be combined.

Over NATS the command is a request and the reply is its result; over Kafka the result is read from the
events topic (the consumer is positioned before the command is produced, so it cannot be missed).
Exit status: 0 applied, 2 rejected, 3 failed, 4 dead-lettered (not a valid command), 1 no answer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from bridge._proto import events_pb2
from bridge.bus.bindings import event_from_kafka, room_token
from bridge.commands.model import BRIDGE_MESSAGES, COMMANDS, SIGNAL_COMMANDS, TYPE_PREFIX, TYPE_SUFFIX
from bridge.errors import BridgeError

EXIT_APPLIED, EXIT_NO_ANSWER, EXIT_REJECTED, EXIT_FAILED, EXIT_DEAD = 0, 1, 2, 3, 4
RESULT_TYPE = b"io.livekit.bridge.command_result.v1"


class SendError(BridgeError):
    """A usage problem: the message says which argument and why."""


def add_send_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("room", help="the room the command is for")
    parser.add_argument(
        "command_name",
        metavar="COMMAND",
        help="e.g. mute, update_metadata, send_data, bridge.remove_participant",
    )
    parser.add_argument("fields", nargs="*", metavar="FIELD=VALUE", help="fields of the command's data")
    parser.add_argument("--data", help="the command's data as JSON (protobuf JSON mapping)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--nats", metavar="URL", help="NATS server URL (request/reply)")
    where.add_argument("--kafka", metavar="BOOTSTRAP", help="Kafka bootstrap servers, host:port[,host:port]")
    where.add_argument("--config", type=Path, help="take the bus from the bridge's settings file")
    parser.add_argument("--prefix", default="livekit", help="NATS subject prefix (default livekit)")
    parser.add_argument("--topic", default="livekit.commands", help="Kafka commands topic")
    parser.add_argument("--events-topic", default="livekit.events", help="Kafka topic the result comes on")
    parser.add_argument("--id", help="command id (default: a new UUID); resend an id to test deduplication")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="how long to wait for the result")
    parser.add_argument("--json", action="store_true", help="print the result event as JSON")


def command_type(name: str) -> str:
    """Accept ``mute``, ``send_data``, ``bridge.send_data`` or a full type; SendError if unknown."""
    if name.startswith(TYPE_PREFIX):
        full = name
    elif f"{TYPE_PREFIX}{name}{TYPE_SUFFIX}" in SIGNAL_COMMANDS or name.startswith("bridge."):
        full = f"{TYPE_PREFIX}{name}{TYPE_SUFFIX}"
    elif name in BRIDGE_MESSAGES:
        full = f"{TYPE_PREFIX}bridge.{name}{TYPE_SUFFIX}"
    else:
        full = f"{TYPE_PREFIX}{name}{TYPE_SUFFIX}"
    if full not in COMMANDS:
        known = ", ".join(sorted(t.removeprefix(TYPE_PREFIX).removesuffix(TYPE_SUFFIX) for t in COMMANDS))
        raise SendError(f"unknown command {name!r}; known: {known}")
    return full


def build_message(ctype: str, fields: list[str], data: str | None) -> Message:
    """The command's data from ``--data`` and ``FIELD=VALUE`` pairs (pairs win)."""
    message = COMMANDS[ctype].message_class()
    doc: dict[str, Any] = {}
    if data:
        try:
            loaded = json.loads(data)
        except ValueError as exc:
            raise SendError(f"--data: not JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SendError("--data: must be a JSON object")
        doc = loaded
    for pair in fields:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SendError(f"{pair!r}: expected FIELD=VALUE")
        _assign(doc, message, key.split("."), raw)
    try:
        json_format.ParseDict(doc, message)
    except json_format.ParseError as exc:
        raise SendError(f"data for {ctype}: {exc}") from exc
    return message


def _assign(doc: dict[str, Any], message: Message, path: list[str], raw: str) -> None:
    target = doc
    for part in path[:-1]:
        target = target.setdefault(part, {})
    field = _leaf_field(message, path)
    if field is not None and field.type == FieldDescriptor.TYPE_BYTES:
        value: Any = base64.b64encode(raw.encode()).decode()  # friendly: text in, bytes on the wire
    elif field is not None and field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated:
        value = raw  # "42" stays a string where a string is expected
    else:
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
    target[path[-1]] = value


def _leaf_field(message: Message, path: list[str]) -> Any:
    """The descriptor of the field ``path`` names (a map's value field for ``map.key``), if known."""
    descriptor: Any = message.DESCRIPTOR
    field: Any = None
    for part in path:
        if field is not None and field.message_type is not None and field.message_type.GetOptions().map_entry:
            return field.message_type.fields_by_name["value"]  # the rest of the path is the map key
        if descriptor is None:
            return None
        field = descriptor.fields_by_name.get(part)
        if field is None:
            return None
        descriptor = field.message_type
    return field


def envelope(room: str, ctype: str, command_id: str, message: Message) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": command_id,
        "source": "urn:livekit-bridge:send",
        "type": ctype,
        "lkroom": room,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "datacontenttype": "application/json",
        "data": json_format.MessageToDict(message),
    }


async def send_nats(
    url: str, prefix: str, room: str, event: dict[str, Any], timeout_s: float
) -> dict[str, Any]:
    import nats
    import nats.errors

    async def quiet(_: Exception) -> None:
        return None  # a failed connect is reported once, below, not as nats-py tracebacks

    try:
        nc = await nats.connect(
            url,
            connect_timeout=min(timeout_s, 5.0),
            # One retry, then NoServersError (0 would mean "forever" in nats-py).
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            error_cb=quiet,
        )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise SendError(f"cannot connect to NATS at {url} ({type(exc).__name__})") from exc
    try:
        subject = f"{prefix}.commands.{room_token(room)}"
        try:
            reply = await nc.request(subject, json.dumps(event).encode(), timeout=timeout_s)
        except nats.errors.NoRespondersError as exc:
            raise SendError(f"no bridge is subscribed to {subject}") from exc
        except nats.errors.TimeoutError as exc:
            raise SendError(f"no answer on {subject} within {timeout_s:g}s") from exc
        doc: dict[str, Any] = json.loads(reply.data)
        return doc
    finally:
        await nc.close()


async def send_kafka(
    bootstrap: str, topic: str, events_topic: str, room: str, event: dict[str, Any], *, timeout_s: float
) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    data = json.dumps(event["data"]).encode()
    headers = [(f"ce_{k}", str(v).encode()) for k, v in event.items() if k not in ("data", "datacontenttype")]
    headers.append(("content-type", b"application/json"))
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await consumer.start()
    await producer.start()
    try:
        partitions = consumer.partitions_for_topic(events_topic) or await consumer._client._wait_on_metadata(
            events_topic
        )
        consumer.assign([TopicPartition(events_topic, p) for p in sorted(partitions)])
        await consumer.seek_to_end()
        for tp in consumer.assignment():
            await consumer.position(tp)  # resolve now: the result must come after this point
        await producer.send_and_wait(topic, value=data, key=room.encode(), headers=headers)
        deadline = time.monotonic() + timeout_s
        wanted = event["id"].encode()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    hdrs = dict(record.headers or ())
                    if hdrs.get("ce_type") == RESULT_TYPE and hdrs.get("ce_lkcommandid") == wanted:
                        attrs = event_from_kafka(record.key, record.value, record.headers or ())
                        data_bytes = attrs.pop("data")
                        attrs["data_base64"] = base64.b64encode(data_bytes).decode()
                        return attrs
        raise SendError(f"no result on {events_topic} within {timeout_s:g}s (is a bridge consuming {topic}?)")
    finally:
        await producer.stop()
        await consumer.stop()


def decode_result(doc: dict[str, Any]) -> events_pb2.CommandResult:
    result = events_pb2.CommandResult()
    if "data" in doc and isinstance(doc["data"], dict):
        json_format.ParseDict(doc["data"], result, ignore_unknown_fields=True)
    elif "data_base64" in doc:
        raw = base64.b64decode(doc["data_base64"])
        if str(doc.get("datacontenttype", "")).endswith("json"):
            json_format.Parse(raw, result, ignore_unknown_fields=True)
        else:
            result.ParseFromString(raw)
    return result


def where_from(args: argparse.Namespace) -> tuple[str, str]:
    """("nats", url) or ("kafka", bootstrap), from the flags or the settings file."""
    if args.nats:
        return "nats", str(args.nats)
    if args.kafka:
        return "kafka", str(args.kafka)
    if args.config:
        import os

        from bridge.config import load_settings

        settings = load_settings(args.config, os.environ)
        if settings.nats is not None:
            args.prefix = settings.nats.subject_prefix
            return "nats", settings.nats.servers[0]
        if settings.kafka is not None:
            args.topic, args.events_topic = settings.kafka.commands_topic, settings.kafka.events_topic
            return "kafka", ",".join(settings.kafka.bootstrap_servers)
        raise SendError(f"{args.config} configures neither kafka nor nats")
    raise SendError("say where to send: --nats URL, --kafka BOOTSTRAP or --config FILE")


async def run_send(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        ctype = command_type(args.command_name)
        message = build_message(ctype, list(args.fields), args.data)
        bus, address = where_from(args)
        command_id = args.id or str(uuid.uuid4())
        event = envelope(args.room, ctype, command_id, message)
        if bus == "nats":
            doc = await send_nats(address, args.prefix, args.room, event, timeout_s=args.timeout_s)
        else:
            doc = await send_kafka(
                address, args.topic, args.events_topic, args.room, event, timeout_s=args.timeout_s
            )
    except (SendError, BridgeError) as exc:
        print(f"livekit-bridge send: {exc}", file=err)
        return EXIT_NO_ANSWER
    except (OSError, TimeoutError) as exc:
        print(f"livekit-bridge send: cannot reach the bus ({type(exc).__name__}: {exc})", file=err)
        return EXIT_NO_ANSWER
    if "error" in doc:  # the bridge dead-lettered it
        problem = doc["error"]
        print(f"dead-lettered {command_id}: {problem.get('code')}: {problem.get('message')}", file=out)
        return EXIT_DEAD
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True), file=out)
    result = decode_result(doc)
    status = events_pb2.CommandResult.Status.Name(result.status).removeprefix("STATUS_").lower()
    line = f"{status} {ctype} id={command_id}"
    if result.code:
        line += f" code={result.code}"
    if result.message:
        line += f" ({result.message})"
    if result.response:
        line += f" response={len(result.response)} bytes"
    if not args.json:
        print(line, file=out)
    return {
        events_pb2.CommandResult.STATUS_APPLIED: EXIT_APPLIED,
        events_pb2.CommandResult.STATUS_REJECTED: EXIT_REJECTED,
    }.get(result.status, EXIT_FAILED)


def main_send(args: argparse.Namespace) -> int:
    return asyncio.run(run_send(args, sys.stdout, sys.stderr))
