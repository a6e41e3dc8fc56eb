"""What a user's program does to steer rooms: publish commands on a real broker and wait for results.

``KafkaCommands`` produces binary-mode records on the commands topic and reads ``command_result``
events from the events topic (and dead letters from the DLQ topic); ``NatsCommands`` sends requests on
``<prefix>.commands.<room>`` and takes the reply, while also watching the result events and the
dead-letter subject. Both return the decoded :class:`CommandResult`.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any, Protocol

import nats
import nats.errors
from aiokafka import AIOKafkaProducer
from google.protobuf import json_format
from google.protobuf.message import Message
from nats.aio.msg import Msg

from bridge._proto import events_pb2
from bridge.bus.bindings import percent_decode
from support.bus_consumers import KafkaCollector, NatsCollector, Received
from support.commands import kafka_command, nats_command, new_id
from support.waiting import eventually

RESULT_TYPE = "io.livekit.bridge.command_result.v1"


def decode_result(attrs: dict[str, Any]) -> events_pb2.CommandResult:
    result = events_pb2.CommandResult()
    if "data_json" in attrs:
        json_format.ParseDict(attrs["data_json"], result)
    elif str(attrs.get("datacontenttype", "")).endswith("json"):
        json_format.Parse(attrs["data"], result)
    else:
        result.ParseFromString(attrs["data"])
    return result


def results_by_command(received: list[Received]) -> dict[str, list[Received]]:
    """The command_result events among ``received``, by ``lkcommandid``."""
    out: dict[str, list[Received]] = {}
    for r in received:
        if r.attrs.get("type") == RESULT_TYPE:
            out.setdefault(str(r.attrs.get("lkcommandid")), []).append(r)
    return out


class CommandClient(Protocol):
    name: str
    dead_letters: list[tuple[dict[str, str], bytes]]  # (headers, payload)

    async def send(self, room: str, name: str, message: Message, *, command_id: str | None = None) -> str: ...

    async def send_raw(self, room: str, payload: bytes, headers: list[tuple[str, bytes]]) -> None: ...

    async def result(self, command_id: str, within: float = 15.0) -> events_pb2.CommandResult: ...

    def results(self) -> dict[str, list[Received]]: ...

    def dead(self) -> list[tuple[dict[str, str], bytes]]: ...

    async def aclose(self) -> None: ...


class KafkaCommands:
    name = "kafka"

    def __init__(self, bootstrap: str, *, commands_topic: str, events_topic: str, dlq_topic: str) -> None:
        self.bootstrap = bootstrap
        self.commands_topic = commands_topic
        self.events = KafkaCollector(bootstrap, events_topic)
        self.dlq = KafkaCollector(bootstrap, dlq_topic)
        self.dead_letters: list[tuple[dict[str, str], bytes]] = []
        self._producer: Any = None

    async def start(self) -> None:
        await self.events.start()
        await self.dlq.start()
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=False)
        await self._producer.start()

    async def send(self, room: str, name: str, message: Message, *, command_id: str | None = None) -> str:
        cid = command_id or new_id()
        key, value, headers = kafka_command(room, name, message, command_id=cid)
        await self._producer.send_and_wait(self.commands_topic, value=value, key=key, headers=headers)
        return cid

    async def send_raw(self, room: str, payload: bytes, headers: list[tuple[str, bytes]]) -> None:
        await self._producer.send_and_wait(
            self.commands_topic, value=payload, key=room.encode(), headers=headers
        )

    def results(self) -> dict[str, list[Received]]:
        return results_by_command(self.events.received)

    async def result(self, command_id: str, within: float = 15.0) -> events_pb2.CommandResult:
        await eventually(lambda: command_id in self.results(), within=within, what=f"result of {command_id}")
        return decode_result(self.results()[command_id][0].attrs)

    def dead(self) -> list[tuple[dict[str, str], bytes]]:
        return [
            ({n: v.decode(errors="replace") for n, v in r.headers["list"]}, r.payload or b"")
            for r in self.dlq.received
        ]

    async def aclose(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
        await self.events.aclose()
        await self.dlq.aclose()


class NatsCommands:
    name = "nats"

    def __init__(self, url: str, *, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.events = NatsCollector(url, prefix)
        self.dead_letters: list[tuple[dict[str, str], bytes]] = []
        self.replies: dict[str, events_pb2.CommandResult] = {}
        self.no_responders = 0
        self._nc: Any = None

    async def start(self) -> None:
        await self.events.start()
        self._nc = await nats.connect(self.url)

        async def on_dead(msg: Msg) -> None:
            self.dead_letters.append((dict(msg.headers or {}), msg.data))

        await self._nc.subscribe(f"{self.prefix}.dlq.commands", cb=on_dead)
        await self._nc.flush()

    async def send(self, room: str, name: str, message: Message, *, command_id: str | None = None) -> str:
        cid = command_id or new_id()
        subject, payload = nats_command(room, name, message, prefix=self.prefix, command_id=cid)
        reply = await self._request(subject, payload)
        doc = json.loads(reply.data)
        assert doc["lkcommandid"] == cid, doc
        result = events_pb2.CommandResult()
        result.ParseFromString(base64.b64decode(doc["data_base64"]))
        self.replies[cid] = result
        return cid

    async def _request(self, subject: str, payload: bytes) -> Any:
        # Seen once in CI right after the bridge reported its subscription flushed: "no responders".
        # Retried within a deadline (and counted) so that one race does not fail a whole scenario;
        # `no_responders` lets a test see that it happened. Not yet explained; see the closing note.
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            try:
                return await self._nc.request(subject, payload, timeout=20)
            except nats.errors.NoRespondersError:
                self.no_responders += 1
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)  # retry pacing for a client, like a user's retry loop

    async def send_raw(self, room: str, payload: bytes, headers: list[tuple[str, bytes]]) -> None:
        from bridge.bus.bindings import room_token

        await self._nc.publish(
            f"{self.prefix}.commands.{room_token(room)}",
            payload,
            headers={k: v.decode() for k, v in headers} or None,
        )

    def results(self) -> dict[str, list[Received]]:
        return results_by_command(self.events.received)

    async def result(self, command_id: str, within: float = 15.0) -> events_pb2.CommandResult:
        await eventually(lambda: command_id in self.results(), within=within, what=f"result of {command_id}")
        published = decode_result(self.results()[command_id][0].attrs)
        assert self.replies.get(command_id, published) == published  # the reply is the published result
        return published

    def dead(self) -> list[tuple[dict[str, str], bytes]]:
        return [({k: percent_decode(v) for k, v in h.items()}, p) for h, p in self.dead_letters]

    async def aclose(self) -> None:
        if self._nc is not None:
            await self._nc.close()
        await self.events.aclose()
