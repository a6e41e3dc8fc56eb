"""Build commands the way a user's producer would: binary Kafka records and NATS messages."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from bridge.bus.bindings import room_token
from bridge.commands.model import TYPE_PREFIX, TYPE_SUFFIX

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


def command_type(name: str) -> str:
    """``mute`` -> ``io.livekit.command.mute.v1``; ``bridge.send_data`` likewise; full types unchanged."""
    return name if name.startswith(TYPE_PREFIX) else f"{TYPE_PREFIX}{name}{TYPE_SUFFIX}"


def new_id() -> str:
    return "cmd-" + uuid.uuid4().hex[:16]


def kafka_command(
    room: str,
    name: str,
    message: Message,
    *,
    command_id: str | None = None,
    as_json: bool = False,
    extra: dict[str, str] | None = None,
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """``(key, value, headers)`` of a binary-mode command record."""
    cid = command_id or new_id()
    value = (
        json.dumps(json_format.MessageToDict(message)).encode() if as_json else message.SerializeToString()
    )
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", cid.encode()),
        ("ce_source", b"urn:test:producer"),
        ("ce_type", command_type(name).encode()),
        ("ce_lkroom", room.encode()),
        ("content-type", (JSON if as_json else PROTOBUF).encode()),
    ]
    headers += [(f"ce_{k}", v.encode()) for k, v in (extra or {}).items()]
    return room.encode(), value, headers


def nats_command(
    room: str,
    name: str,
    message: Message,
    *,
    prefix: str = "livekit",
    command_id: str | None = None,
    as_json: bool = True,
) -> tuple[str, bytes]:
    """``(subject, payload)`` of a structured-mode command on ``<prefix>.commands.<room token>``."""
    doc: dict[str, Any] = {
        "specversion": "1.0",
        "id": command_id or new_id(),
        "source": "urn:test:producer",
        "type": command_type(name),
        "lkroom": room,
    }
    if as_json:
        doc["datacontenttype"] = JSON
        doc["data"] = json_format.MessageToDict(message)
    else:
        doc["datacontenttype"] = PROTOBUF
        doc["data_base64"] = base64.b64encode(message.SerializeToString()).decode()
    return f"{prefix}.commands.{room_token(room)}", json.dumps(doc).encode()


async def memory_command_result(
    source: Any, bus: Any, room: str, name: str, message: Message, cid: str
) -> Any:
    """Submit a command through a ``MemoryCommandSource`` and wait for its result on an ``InMemoryBus``."""
    from bridge._proto import events_pb2
    from support.waiting import eventually

    await source.submit_kafka(*kafka_command(room, name, message, command_id=cid))

    def result() -> events_pb2.CommandResult | None:
        for event in bus.events:
            if (
                event.type == "io.livekit.bridge.command_result.v1"
                and dict(event.extensions)["lkcommandid"] == cid
            ):
                return events_pb2.CommandResult.FromString(event.data)
        return None

    await eventually(lambda: result() is not None, within=20, what=f"the result of {cid}")
    return result()
