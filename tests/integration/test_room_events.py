"""A room session turns what LiveKit sends into CloudEvents: in order, numbered, snapshotted, redacted."""

from __future__ import annotations

import asyncio

from google.protobuf import json_format
from livekit.protocol import models, rtc

from bridge._proto import events_pb2
from bridge.events.cloudevent import CloudEvent
from bridge.rooms.session import RoomSession
from bridge.sim.scenario import Scenario
from bridge.sim.server import SimServer
from support.bridge import bridge_settings
from support.simulator import running_sim
from support.waiting import eventually

IDENTITY = "livekit-bridge"


class ListSink:
    def __init__(self) -> None:
        self.events: list[CloudEvent] = []

    async def emit(self, event: CloudEvent) -> None:
        self.events.append(event)

    def types(self) -> list[str]:
        return [e.type.removeprefix("io.livekit.").removesuffix(".v1") for e in self.events]

    def of(self, short: str) -> list[CloudEvent]:
        return [e for e in self.events if e.type == f"io.livekit.{short}.v1"]


def active(server: SimServer, room: str) -> bool:
    r = server.rooms.get(room)
    p = r.participants.get(IDENTITY) if r else None
    return p is not None and p.info.state == models.ParticipantInfo.ACTIVE


async def test_join_activity_data_and_resume_become_ordered_cloudevents() -> None:
    async with running_sim(ice_servers=()) as (server, scenario):
        scenario.join("r1", "alice", metadata="m0")
        sink = ListSink()
        session = RoomSession(settings=bridge_settings(server, "r1").livekit, room="r1", sink=sink)
        task = asyncio.create_task(session.run())
        try:
            await _exercise(server, scenario, sink)
        finally:
            session.leave()
            await asyncio.wait_for(task, 10)

    ended = events_pb2.SessionEnded.FromString(sink.of("bridge.session_ended")[0].data)
    assert ended.reason == "CLIENT_INITIATED"
    sequences = [e.sequence for e in sink.events]
    assert sequences == list(range(1, len(sequences) + 1))
    assert len({e.id for e in sink.events}) == len(sink.events)
    assert all(e.ctx.room == "r1" and e.ctx.room_sid.startswith("RM_") for e in sink.events[1:])
    for event in sink.events:
        assert b"eyJ" not in event.data  # no token, in any event


async def _exercise(server: SimServer, scenario: Scenario, sink: ListSink) -> None:
    await eventually(lambda: active(server, "r1"), within=15, what="bridge ACTIVE")

    started = sink.of("bridge.session_started")[0]
    assert events_pb2.SessionStarted.FromString(started.data).identity == IDENTITY
    snapshot = events_pb2.RoomSnapshot.FromString(sink.of("bridge.room_snapshot")[0].data)
    assert snapshot.cause == events_pb2.RoomSnapshot.CAUSE_JOIN
    assert [p.identity for p in snapshot.participants] == ["alice"]
    assert sink.types()[:3] == ["signal.join", "bridge.session_started", "bridge.room_snapshot"]

    scenario.speak("r1", {"alice": 0.7})
    scenario.set_metadata("r1", "alice", metadata="m1")
    assert scenario.send_data("r1", "alice", kind="chat_message", payload="hello bridge") == 1
    await eventually(lambda: bool(sink.of("data.chat_message")), within=10, what="chat message event")
    chat = sink.of("data.chat_message")[0]
    assert chat.subject == "alice"
    assert models.ChatMessage.FromString(chat.data).message == "hello bridge"
    speakers = rtc.SpeakersChanged.FromString(sink.of("signal.speakers_changed")[0].data)
    assert speakers.speakers[0].level > 0.6

    scenario.drop_socket("r1", IDENTITY)
    await eventually(
        lambda: len(sink.of("bridge.room_snapshot")) > 1, within=10, what="a snapshot after resume"
    )
    resumed = events_pb2.RoomSnapshot.FromString(sink.of("bridge.room_snapshot")[1].data)
    assert resumed.cause == events_pb2.RoomSnapshot.CAUSE_RESUME
    assert resumed.participants[0].metadata == "m1"
    assert sink.of("bridge.session_resumed")


async def test_json_mode_publishes_protobuf_json() -> None:
    async with running_sim() as (server, scenario):
        scenario.join("r1", "alice")
        sink = ListSink()
        settings = bridge_settings(server, "r1")
        events = settings.events.model_copy(update={"data_format": "json"})
        session = RoomSession(settings=settings.livekit, room="r1", sink=sink, events=events)
        task = asyncio.create_task(session.run())
        try:
            await eventually(lambda: bool(sink.of("bridge.room_snapshot")), within=15, what="snapshot")
        finally:
            session.leave()
            await asyncio.wait_for(task, 10)
    join = sink.of("signal.join")[0]
    assert join.datacontenttype == "application/json"
    parsed = json_format.Parse(join.data, rtc.JoinResponse())
    assert parsed.room.name == "r1"


class GatedSink(ListSink):
    """A sink that holds every emit until the gate opens, like a full ``block`` outbox."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def emit(self, event: CloudEvent) -> None:
        await self.gate.wait()
        self.events.append(event)


async def test_events_reach_the_sink_in_sequence_order_under_backpressure() -> None:
    async with running_sim() as (server, scenario):
        scenario.join("r1", "alice")
        sink = GatedSink()
        session = RoomSession(settings=bridge_settings(server, "r1").livekit, room="r1", sink=sink)
        task = asyncio.create_task(session.run())
        try:
            await eventually(lambda: active(server, "r1"), within=15, what="bridge ACTIVE")
            sink.gate.clear()  # the bus is full: every emit waits
            for n in range(20):  # signal events (reader) and data events (side task) interleave
                scenario.speak("r1", {"alice": 0.05 + n / 40})
                scenario.send_data("r1", "alice", payload=f"d{n}")
            # The reader is stuck on its first emit; data packets pile up for the side task meanwhile.
            await eventually(lambda: len(session._side) >= 5, within=10, what="data packets waiting")
            sink.gate.set()
            await eventually(lambda: len(sink.of("data.user")) == 20, within=10, what="all data events")
        finally:
            sink.gate.set()
            session.leave()
            await asyncio.wait_for(task, 10)
    sequences = [e.sequence for e in sink.events]
    assert sequences == list(range(1, len(sequences) + 1))
