"""``livekit-bridge tail`` as a user runs it (a subprocess) against the real brokers.

Events are published with the bridge's own publishers. Filter tests publish the events that must be
EXCLUDED first and stop tail with ``--count`` at the number of matching ones: a filter that let anything
else through would fill the count with the wrong events.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from livekit.protocol import models, rtc

from bridge.bus.kafka import KafkaPublisher
from bridge.bus.nats import NatsPublisher
from bridge.config import KafkaSettings, NatsSettings
from bridge.demo_services import free_port
from bridge.events import types
from bridge.events.cloudevent import CloudEvent, SessionContext, source_uri
from support.brokers import KafkaBroker, NatsServer, unique_name
from support.bus_consumers import create_topic

REPO = Path(__file__).resolve().parents[2]
TIME = "2025-01-02T14:02:03.123Z"
ROOM_A, ROOM_B = "alpha", "beta.room two"  # a dot and a space: the NATS room token escapes both
DEADLINE_S = 30.0
Process = asyncio.subprocess.Process


def room_events(room: str, first_seq: int = 1) -> list[CloudEvent]:
    """speakers_changed, update, chat_message for ``room``, with values that name the room."""
    ctx = SessionContext(
        source=source_uri("ws://lk.test", room), room=room, session=f"S-{room}", room_sid="RM_1"
    )
    who = f"{room}-alice"
    items: list[tuple[str, str, Message, str | None]] = [
        (
            "signal",
            "speakers_changed",
            rtc.SpeakersChanged(speakers=[models.SpeakerInfo(sid="PA_1", level=0.5)]),
            None,
        ),
        (
            "signal",
            "update",
            rtc.ParticipantUpdate(participants=[models.ParticipantInfo(identity=who, sid="PA_1")]),
            who,
        ),
        ("data", "chat_message", models.ChatMessage(id="CM_1", message=f"hello from {room}"), who),
    ]
    events = []
    for seq, (kind, field, message, subject) in enumerate(items, start=first_seq):
        etype = (types.SIGNAL if kind == "signal" else types.DATA)[field]
        events.append(CloudEvent(ctx, etype, seq, TIME, message.SerializeToString(), subject=subject))
    return events


@asynccontextmanager
async def tail(*args: str) -> AsyncIterator[Process]:
    """``python -m bridge tail ARGS``; killed by PID at the end if it is still running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "tail",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def ready(proc: Process) -> None:
    """tail says on stderr once it is subscribed / assigned: what is published after that is seen."""
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), DEADLINE_S)
    assert b"reading" in line, line


async def finish(proc: Process) -> tuple[int, list[dict[str, Any]], str]:
    out, err = await asyncio.wait_for(proc.communicate(), DEADLINE_S)
    assert proc.returncode is not None
    return proc.returncode, [json.loads(line) for line in out.decode().splitlines()], err.decode()


async def publish_nats(url: str, prefix: str, events: list[CloudEvent], *, binary: bool = False) -> None:
    publisher = NatsPublisher(NatsSettings(servers=(url,), subject_prefix=prefix, binary_mode=binary))
    await publisher.start()
    try:
        await publisher.publish_batch(events)
    finally:
        await publisher.aclose()


async def publish_kafka(bootstrap: str, topic: str, events: list[CloudEvent]) -> None:
    # tansu refuses InitProducerId: no idempotent producer.
    settings = KafkaSettings(bootstrap_servers=(bootstrap,), events_topic=topic, enable_idempotence=False)
    publisher = KafkaPublisher(settings)
    await publisher.start()
    try:
        await publisher.publish_batch(events)
    finally:
        await publisher.aclose()


def short(line: dict[str, Any]) -> str:
    return str(line["type"]).removeprefix("io.livekit.").removesuffix(".v1")


# --- NATS ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["structured", "binary"])
async def test_nats_every_event_decoded(nats_server: NatsServer, binary: bool) -> None:
    prefix = unique_name("lk").replace("-", "_")
    events = room_events(ROOM_A) + room_events(ROOM_B)
    async with tail(
        "--nats", nats_server.url, "--prefix", prefix, "--json", "--count", str(len(events))
    ) as proc:
        await ready(proc)
        await publish_nats(nats_server.url, prefix, events, binary=binary)
        code, lines, err = await finish(proc)
    assert code == 0, err
    assert [(line["lkroom"], short(line)) for line in lines] == [
        (e.ctx.room, e.type.removeprefix("io.livekit.").removesuffix(".v1")) for e in events
    ]
    by_type = {(line["lkroom"], short(line)): line for line in lines}
    speakers = by_type[(ROOM_A, "signal.speakers_changed")]
    assert speakers["data"] == {"speakers": [{"sid": "PA_1", "level": 0.5}]}
    assert speakers["id"] == f"S-{ROOM_A}-00000000000000000001"
    assert speakers["datacontenttype"] == "application/x-protobuf"
    chat = by_type[(ROOM_B, "data.chat_message")]
    assert chat["data"] == {"id": "CM_1", "message": f"hello from {ROOM_B}"}
    assert chat["subject"] == f"{ROOM_B}-alice"
    assert by_type[(ROOM_B, "signal.update")]["data"]["participants"][0]["identity"] == f"{ROOM_B}-alice"


async def test_nats_room_and_type_filters_exclude_the_rest(nats_server: NatsServer) -> None:
    prefix = unique_name("lk").replace("-", "_")
    async with tail(
        "--nats", nats_server.url, "--prefix", prefix, "--room", ROOM_B, "--json", "--count", "3"
    ) as by_room:
        await ready(by_room)
        await publish_nats(nats_server.url, prefix, room_events(ROOM_A))  # excluded, and first
        await publish_nats(nats_server.url, prefix, room_events(ROOM_B))
        code, lines, err = await finish(by_room)
    assert code == 0, err
    assert [line["lkroom"] for line in lines] == [ROOM_B] * 3

    async with tail(
        "--nats", nats_server.url, "--prefix", prefix, "--type", "data.*", "--type", "speakers_changed",
        "--json", "--count", "2",
    ) as by_type:  # fmt: skip
        await ready(by_type)
        a_update = [e for e in room_events(ROOM_A) if e.etype.field == "update"]
        await publish_nats(nats_server.url, prefix, a_update)  # excluded, and first
        await publish_nats(
            nats_server.url, prefix, [e for e in room_events(ROOM_B) if e.etype.field != "update"]
        )
        code, lines, err = await finish(by_type)
    assert code == 0, err
    assert [short(line) for line in lines] == ["signal.speakers_changed", "data.chat_message"]
    assert {line["lkroom"] for line in lines} == {ROOM_B}


async def test_nats_readable_lines(nats_server: NatsServer) -> None:
    prefix = unique_name("lk").replace("-", "_")
    async with tail("--nats", nats_server.url, "--prefix", prefix, "--count", "3") as proc:
        await ready(proc)
        await publish_nats(nats_server.url, prefix, room_events(ROOM_A))
        out, err = await asyncio.wait_for(proc.communicate(), DEADLINE_S)
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    assert len(lines) == 3
    assert " alpha #00000000000000000001 signal.speakers_changed " in lines[0]
    assert lines[0].endswith("{speakers: [{sid: PA_1, level: 0.5}]}")
    assert "subject=alpha-alice" in lines[2]
    assert lines[2].endswith('{id: CM_1, message: "hello from alpha"}')


async def test_sigterm_and_silence_end_tail(nats_server: NatsServer) -> None:
    async with tail("--nats", nats_server.url) as proc:
        await ready(proc)
        proc.terminate()  # SIGTERM, by PID
        code, lines, _ = await finish(proc)
    assert (code, lines) == (0, [])
    async with tail("--nats", nats_server.url, "--timeout", "0.5", "--count", "1") as proc:
        code, lines, err = await finish(proc)
    assert (code, lines) == (1, [])  # --count not reached before the silence
    assert "0 of 1 events" in err


async def test_config_file_picks_the_bus(nats_server: NatsServer, tmp_path: Path) -> None:
    prefix = unique_name("lk").replace("-", "_")
    config = tmp_path / "bridge.yaml"
    config.write_text(
        "livekit: {url: ws://127.0.0.1:7880, api_key: k, api_secret: top-secret-value}\n"
        f"nats: {{servers: ['{nats_server.url}'], subject_prefix: {prefix}}}\n"
        "kafka: {bootstrap_servers: ['127.0.0.1:9'], enable_idempotence: false}\n"
    )
    async with tail("--config", str(config), "--count", "1") as proc:
        code, _, err = await finish(proc)
    assert code == 2
    assert "--bus" in err
    async with tail("--config", str(config), "--bus", "nats", "--json", "--count", "3") as proc:
        await ready(proc)
        await publish_nats(nats_server.url, prefix, room_events(ROOM_A))
        code, lines, err = await finish(proc)
    assert code == 0, err
    assert len(lines) == 3
    assert "top-secret-value" not in err


# --- Kafka -----------------------------------------------------------------------------------------


async def test_kafka_filters_from_the_beginning(kafka_broker: KafkaBroker) -> None:
    topic = unique_name("lk-events")
    await create_topic(kafka_broker.bootstrap, topic)
    await publish_kafka(kafka_broker.bootstrap, topic, room_events(ROOM_A) + room_events(ROOM_B))
    base = ("--kafka", kafka_broker.bootstrap, "--topic", topic, "--from-beginning", "--json")

    async with tail(*base, "--count", "6") as proc:
        code, lines, err = await finish(proc)
    assert code == 0, err
    assert sorted((line["lkroom"], short(line)) for line in lines) == sorted(
        (room, kind)
        for room in (ROOM_A, ROOM_B)
        for kind in ("signal.speakers_changed", "signal.update", "data.chat_message")
    )
    chat = next(line for line in lines if line["lkroom"] == ROOM_A and short(line) == "data.chat_message")
    assert chat["data"] == {"id": "CM_1", "message": f"hello from {ROOM_A}"}
    assert chat["partitionkey"] == ROOM_A

    # Room A's events are older on their partition, so a broken room filter would print them first.
    async with tail(*base, "--room", ROOM_B, "--count", "3") as proc:
        code, lines, err = await finish(proc)
    assert code == 0, err
    assert [line["lkroom"] for line in lines] == [ROOM_B] * 3

    async with tail(
        *base, "--type", "signal.update", "--room", ROOM_A, "--count", "1", "--timeout", "3"
    ) as proc:
        code, lines, err = await finish(proc)
    assert code == 0, err
    assert [(line["lkroom"], short(line)) for line in lines] == [(ROOM_A, "signal.update")]
    assert lines[0]["data"]["participants"][0]["identity"] == f"{ROOM_A}-alice"


async def test_kafka_default_is_only_new_events(kafka_broker: KafkaBroker) -> None:
    topic = unique_name("lk-events")
    await create_topic(kafka_broker.bootstrap, topic)
    # Old events, not to be shown. One record per batch: tansu answers ListOffsets(latest) with the last
    # batch's base offset + 1, which is the true end only for single-record batches (Kafka is exact).
    for old in room_events(ROOM_A, first_seq=1):
        await publish_kafka(kafka_broker.bootstrap, topic, [old])
    async with tail("--kafka", kafka_broker.bootstrap, "--topic", topic, "--json", "--count", "3") as proc:
        await ready(proc)
        await publish_kafka(kafka_broker.bootstrap, topic, room_events(ROOM_A, first_seq=101))
        code, lines, err = await finish(proc)
    assert code == 0, err
    assert [line["sequence"] for line in lines] == [f"{n:020d}" for n in (101, 102, 103)]


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bus", ["nats", "kafka"])
async def test_unreachable_broker_is_one_clear_line(bus: str) -> None:
    port = free_port()  # nothing listens there
    target = f"nats://127.0.0.1:{port}" if bus == "nats" else f"127.0.0.1:{port}"
    async with tail(f"--{bus}", target, "--count", "1") as proc:
        code, lines, err = await finish(proc)
    assert code == 2
    assert lines == []
    assert err.count("\n") == 1, err
    assert target in err
    assert f"check --{bus}" in err
    assert "Traceback" not in err
