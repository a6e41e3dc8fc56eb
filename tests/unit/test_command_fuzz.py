"""Property-based fuzzing of the command path: whatever arrives, the runner never raises, every input is
accounted for exactly once (applied, rejected or dead-lettered), and every dead letter has a reason.

The runner is the real one with an empty supervisor (no rooms joined), an in-memory source and a list
sink, so valid commands end as ``rejected/room_not_owned`` results: what is under test is the intake.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livekit.protocol import models, rtc

from bridge.bus.memory_commands import MemoryCommandSource, MemoryDelivery
from bridge.commands.model import COMMANDS
from bridge.commands.validate import CODES
from bridge.config import load_settings
from bridge.events.cloudevent import CloudEvent
from bridge.rooms.commands import CommandRunner
from bridge.rooms.supervisor import RoomSupervisor

SETTINGS = load_settings(
    None,
    {
        "BRIDGE_LIVEKIT__URL": "ws://127.0.0.1:1",
        "BRIDGE_LIVEKIT__API_KEY": "k",
        "BRIDGE_LIVEKIT__API_SECRET": "fuzz-secret-long-enough-for-hs256-signing",
        "BRIDGE_COMMANDS__MAX_BYTES": "2048",
    },
)
# Every type but join_room (which would start a real session against no server): that one is then
# rejected as not allowed, which is an outcome like any other here.
SETTINGS = SETTINGS.model_copy(
    update={
        "commands": SETTINGS.commands.model_copy(
            update={
                "allowed": tuple(sorted(t for t in SETTINGS.commands.allowed_set() if "join_room" not in t))
            }
        )
    }
)
TYPES = sorted(COMMANDS)
RESULT = "io.livekit.bridge.command_result.v1"


class ListSink:
    def __init__(self) -> None:
        self.events: list[CloudEvent] = []

    async def emit(self, event: CloudEvent) -> None:
        self.events.append(event)


def good_headers(cid: str, ctype: str, room: str, content_type: str) -> list[tuple[str, bytes]]:
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", cid.encode()),
        ("ce_source", b"urn:fuzz"),
        ("ce_type", ctype.encode()),
        ("ce_lkroom", room.encode()),
        ("content-type", content_type.encode()),
    ]


room_names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)
ids = st.uuids().map(lambda u: f"fz-{u.hex[:12]}")


@st.composite
def kafka_inputs(draw: st.DrawFn) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """A Kafka record, valid or broken in one of the ways users break them."""
    cid, room = draw(ids), draw(room_names)
    ctype = draw(st.sampled_from(TYPES))
    message = COMMANDS[ctype].message_class()
    kind = draw(
        st.sampled_from(
            [
                "valid",
                "random_bytes",
                "random_headers",
                "wrong_content_type",
                "wrong_message",
                "missing_room",
                "conflicting_room",
                "unknown_type",
                "oversized",
                "bad_json",
                "bad_specversion",
                "missing_id",
            ]
        )
    )
    headers = good_headers(cid, ctype, room, "application/x-protobuf")
    value: bytes | None = message.SerializeToString()
    key: bytes | None = room.encode()
    if kind == "random_bytes":
        value = draw(st.binary(max_size=200))
    elif kind == "random_headers":
        headers = draw(st.lists(st.tuples(st.text(max_size=12), st.binary(max_size=20)), max_size=6))
        value = draw(st.binary(max_size=100))
    elif kind == "wrong_content_type":
        headers[-1] = ("content-type", draw(st.sampled_from([b"text/plain", b"", b"application/xml"])))
    elif kind == "wrong_message":
        # Bytes of a different message whose fields this one does not know.
        value = models.ChatMessage(id="x" * 5, message="not this", timestamp=7).SerializeToString()
        value += rtc.LeaveRequest(reason=models.DUPLICATE_IDENTITY).SerializeToString()
    elif kind == "missing_room":
        headers = [h for h in headers if h[0] != "ce_lkroom"]
        key = None
    elif kind == "conflicting_room":
        key = (room + "-other").encode()
    elif kind == "unknown_type":
        headers[3] = ("ce_type", b"io.livekit.command.no_such_thing.v1")
    elif kind == "oversized":
        value = b"\x0a" + b"\xff" * 4096
    elif kind == "bad_json":
        headers[-1] = ("content-type", b"application/json")
        value = draw(st.sampled_from([b"{", b"[1,2]", b'{"nope": 1}', b"\xff\xfe", b'{"metadata": 5}']))
    elif kind == "bad_specversion":
        headers[0] = ("ce_specversion", draw(st.sampled_from([b"0.3", b"2.0", b""])))
    elif kind == "missing_id":
        headers = [h for h in headers if h[0] != "ce_id"]
    return key, value, headers


@st.composite
def nats_inputs(draw: st.DrawFn) -> tuple[str, bytes]:
    """A NATS message: a structured CloudEvent, valid or not, or arbitrary bytes."""
    room = draw(room_names)
    token = room.encode().hex()[:8] or "r"
    doc: dict[str, Any] = {
        "specversion": draw(st.sampled_from(["1.0", "1.0", "0.3"])),
        "id": draw(ids),
        "source": "urn:fuzz",
        "type": draw(st.sampled_from([*TYPES, "io.livekit.command.nope.v1"])),
        "lkroom": draw(st.sampled_from([token, room])),
        "datacontenttype": draw(st.sampled_from(["application/json", "application/x-protobuf", "text/csv"])),
    }
    choice = draw(st.integers(0, 3))
    if choice == 0:
        doc["data"] = draw(
            st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=6), max_size=3)
        )
    elif choice == 1:
        doc["data_base64"] = base64.b64encode(draw(st.binary(max_size=40))).decode()
    elif choice == 2:
        return f"livekit.commands.{token}", draw(st.binary(max_size=120))
    return f"livekit.commands.{token}", json.dumps(doc).encode()


async def run_all(
    kafka: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]], nats: list[tuple[str, bytes]]
) -> tuple[list[MemoryDelivery], ListSink, CommandRunner]:
    sink = ListSink()
    supervisor = RoomSupervisor(SETTINGS.livekit)
    runner = CommandRunner(
        commands=SETTINGS.commands, livekit=SETTINGS.livekit, supervisor=supervisor, sink=sink
    )
    source = MemoryCommandSource()
    await source.start(runner.handle)
    deliveries = [await source.submit_kafka(*record) for record in kafka]
    deliveries += [await source.submit_nats(subject, payload) for subject, payload in nats]
    assert await runner.drain(10.0)
    await runner.aclose()
    return deliveries, sink, runner


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(kafka_inputs(), max_size=12), st.lists(nats_inputs(), max_size=8))
def test_every_input_is_accounted_for_exactly_once(
    kafka: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]], nats: list[tuple[str, bytes]]
) -> None:
    deliveries, sink, runner = asyncio.run(run_all(kafka, nats))
    results = [e for e in sink.events if e.type == RESULT]
    result_ids = [dict(e.extensions)["lkcommandid"] for e in results]
    dead = [d for d in deliveries if d.dead is not None]

    assert all(d.settled == 1 for d in deliveries)  # each settled once: acknowledged to the broker
    for d in dead:
        assert d.dead is not None
        code, reason = d.dead
        assert code in CODES
        assert reason  # says what was wrong
    # Each input is exactly one of: dead letter, result (first delivery), duplicate of an earlier id.
    st_ = runner.stats
    assert st_.received == len(deliveries)
    assert st_.dead_lettered == len(dead)
    assert st_.applied + st_.rejected + st_.failed == len(results)
    assert len(dead) + len(results) + st_.duplicates == len(deliveries)
    assert len(set(result_ids)) == len(result_ids)  # never two results for one command id
    assert runner.pending == 0
