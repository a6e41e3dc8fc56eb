"""Commands through the runner into the simulator, with an in-memory source and bus (no broker needed).

The broker round trips are in test_commands_e2e.py; these pin the runner's behaviour: results for every
outcome, dead letters, duplicates, room ownership, LiveKit's answers, per-room order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence

from livekit.protocol import models, rtc

from bridge._proto import commands_pb2, events_pb2
from bridge.app import Bridge
from bridge.bus.memory import InMemoryBus
from bridge.bus.memory_commands import MemoryCommandSource, MemoryDelivery
from bridge.events.cloudevent import CloudEvent
from bridge.rooms.commands import CANDIDATE_ADDED
from bridge.sim.scenario import Scenario
from bridge.sim.server import SimServer
from support.bridge import bridge_settings
from support.commands import kafka_command, nats_command
from support.simulator import running_sim
from support.waiting import eventually

IDENTITY = "livekit-bridge"
Status = events_pb2.CommandResult


def bridge_requests(server: SimServer, room: str) -> list[rtc.SignalRequest]:
    participant = server.rooms[room].participants.get(IDENTITY)
    conn = participant.connection if participant else None
    return list(getattr(conn, "requests", []))


def results(bus: InMemoryBus) -> dict[str, tuple[CloudEvent, events_pb2.CommandResult]]:
    out = {}
    for event in bus.events:
        if event.type == "io.livekit.bridge.command_result.v1":
            out[dict(event.extensions)["lkcommandid"]] = (
                event,
                events_pb2.CommandResult.FromString(event.data),
            )
    return out


@contextlib.asynccontextmanager
async def bridged(
    *rooms: str, bus: InMemoryBus | None = None, **livekit: object
) -> AsyncIterator[tuple[SimServer, Scenario, Bridge, MemoryCommandSource, InMemoryBus]]:
    async with running_sim(ice_servers=()) as (server, scenario):
        for room in rooms:
            scenario.join(room, "alice")
        bus = bus or InMemoryBus()
        source = MemoryCommandSource()
        settings = bridge_settings(server, *rooms, can_publish=True, can_update_own_metadata=True, **livekit)
        bridge = Bridge(settings, publishers=[bus], command_sources=[source])
        await bridge.start()
        try:
            await eventually(
                lambda: all(bridge.supervisor.sessions[r].participant_sid for r in rooms),
                within=15,
                what="bridge joined every room",
            )
            yield server, scenario, bridge, source, bus
        finally:
            await bridge.aclose()


async def finished(delivery: MemoryDelivery) -> MemoryDelivery:
    await asyncio.wait_for(delivery.finished.wait(), 10)
    return delivery


async def test_signal_command_is_sent_and_answered_by_livekit() -> None:
    async with bridged("r1") as (server, _, bridge, source, bus):
        message = rtc.UpdateParticipantMetadata(metadata="from-the-bus", attributes={"k": "v"})
        d = await finished(
            await source.submit_kafka(
                *kafka_command("r1", "update_metadata", message, command_id="c1", as_json=True)
            )
        )
        await eventually(lambda: "c1" in results(bus), within=5, what="result on the bus")
        event, result = results(bus)["c1"]
        assert result.status == Status.STATUS_APPLIED, result
        assert result.command_type == "io.livekit.command.update_metadata.v1"
        sent = [r for r in bridge_requests(server, "r1") if r.WhichOneof("message") == "update_metadata"]
        assert [r.update_metadata.metadata for r in sent] == ["from-the-bus"]
        assert sent[0].update_metadata.request_id != 0  # the bridge numbered it to match LiveKit's answer
        assert server.rooms["r1"].participants[IDENTITY].info.metadata == "from-the-bus"
        # The result is numbered in the room's session, like every other event of the room.
        assert event.ctx.session == bridge.supervisor.sessions["r1"].session_id
        assert d.reply_payload is not None
        assert json.loads(d.reply_payload)["lkcommandid"] == "c1"
        assert (d.settled, d.dead) == (1, None)


class HeldBus(InMemoryBus):
    """Publishes only while ``open`` is set: a broker that stopped confirming."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()
        self.open.set()

    async def publish_batch(self, events: Sequence[CloudEvent]) -> None:
        await self.open.wait()
        await super().publish_batch(events)


async def test_a_delivery_is_settled_only_once_its_result_is_on_the_bus() -> None:
    """Settling commits the Kafka offset (acks the NATS message): before the result is published, a crash
    would lose the result of a command that was applied, and nothing would send it again."""
    bus = HeldBus()
    async with bridged("r1", bus=bus) as (_, _, _, source, _):
        bus.open.clear()
        message = rtc.UpdateParticipantMetadata(metadata="held")
        d = await source.submit_kafka(*kafka_command("r1", "update_metadata", message, command_id="h1"))
        await eventually(lambda: d.reply_payload is not None, within=10, what="the command answered")
        assert "h1" not in results(bus)
        assert d.settled == 0
        bus.open.set()
        await finished(d)
        assert "h1" in results(bus)
        assert d.settled == 1


async def test_a_duplicate_is_not_settled_before_the_first_delivery_s_result_is_published() -> None:
    """A redelivery (same id) answered from the dedup window must not move the commit point past the
    original's result while that result is still in an outbox."""
    bus = HeldBus()
    async with bridged("r1", bus=bus) as (_, _, _, source, _):
        bus.open.clear()
        record = kafka_command(
            "r1", "update_metadata", rtc.UpdateParticipantMetadata(metadata="d"), command_id="d1"
        )
        first = await source.submit_kafka(*record)
        await eventually(lambda: first.reply_payload is not None, within=10, what="the command answered")
        again = await source.submit_kafka(*record)
        # Answered with the first result (and, without the fix, settled in the same step).
        await eventually(lambda: again.reply_payload is not None, within=10, what="the duplicate answered")
        assert (first.settled, again.settled) == (0, 0)
        bus.open.set()
        await finished(first)
        await finished(again)
        assert "d1" in results(bus)


async def test_a_nats_delivery_is_settled_without_waiting_for_the_result_to_be_published() -> None:
    """Core NATS never redelivers: holding its in-flight slot until the result is published would only
    throttle intake while a bus is slow."""
    bus = HeldBus()
    async with bridged("r1", bus=bus) as (_, _, _, source, _):
        bus.open.clear()
        subject, payload = nats_command(
            "r1", "update_metadata", rtc.UpdateParticipantMetadata(metadata="n"), command_id="n1"
        )
        d = await finished(await source.submit_nats(subject, payload))
        assert d.settled == 1
        assert "n1" not in results(bus)  # still held
        bus.open.set()
        await eventually(lambda: "n1" in results(bus), within=10, what="the result published")


async def test_livekit_refusal_is_a_failed_result_with_its_reason() -> None:
    async with bridged("r1") as (_, _, _, source, bus):
        await finished(
            await source.submit_kafka(
                *kafka_command("r1", "mute", rtc.MuteTrackRequest(sid="TR_nope", muted=True), command_id="m1")
            )
        )
        await eventually(lambda: "m1" in results(bus), within=5, what="result")
        result = results(bus)["m1"][1]
        assert (result.status, result.code) == (Status.STATUS_FAILED, "not_found")


async def test_typed_answer_confirms_and_is_returned() -> None:
    async with bridged("r1") as (_, _, _, source, bus):
        add = rtc.AddTrackRequest(cid="cid-1", name="mic", type=models.AUDIO)
        await finished(await source.submit_kafka(*kafka_command("r1", "add_track", add, command_id="a1")))
        await eventually(lambda: "a1" in results(bus), within=5, what="result")
        result = results(bus)["a1"][1]
        assert result.status == Status.STATUS_APPLIED
        assert rtc.TrackPublishedResponse.FromString(result.response).cid == "cid-1"


async def test_plumbing_is_rejected_and_garbage_is_dead_lettered() -> None:
    async with bridged("r1") as (server, _, bridge, source, bus):
        before = len(bridge_requests(server, "r1"))
        offer = rtc.SessionDescription(type="offer", sdp="v=0")
        rejected = await finished(
            await source.submit_kafka(*kafka_command("r1", "offer", offer, command_id="o1"))
        )
        garbage = await finished(await source.submit_kafka(b"r1", b"\x00\xff", [("ce_type", b"x")]))
        await eventually(lambda: "o1" in results(bus), within=5, what="result")
        result = results(bus)["o1"][1]
        assert (result.status, result.code) == (Status.STATUS_REJECTED, "not_allowed")
        assert rejected.dead is None
        assert garbage.dead is not None
        assert garbage.dead[0] == "bad_envelope"
        assert garbage.settled == 1
        assert len(results(bus)) == 1  # a dead letter gets no result event
        assert len(bridge_requests(server, "r1")) == before  # nothing reached LiveKit
        assert bridge.commands.stats.dead_lettered == 1


async def test_duplicate_id_is_answered_not_applied_again() -> None:
    async with bridged("r1") as (server, _, _, source, bus):
        message = rtc.UpdateParticipantMetadata(metadata="once")
        record = kafka_command("r1", "update_metadata", message, command_id="dup")
        first = await finished(await source.submit_kafka(*record))
        second = await finished(await source.submit_kafka(*record))
        sent = [r for r in bridge_requests(server, "r1") if r.WhichOneof("message") == "update_metadata"]
        assert len(sent) == 1
        assert first.reply_payload
        assert first.reply_payload == second.reply_payload
        await eventually(lambda: "dup" in results(bus), within=5, what="result")
        assert sum(1 for e in bus.events if dict(e.extensions).get("lkcommandid") == "dup") == 1


async def test_room_not_served_is_rejected_with_a_result() -> None:
    async with bridged("r1") as (_, _, _, source, bus):
        sub = rtc.UpdateSubscription(track_sids=["TR_x"], subscribe=True)
        await finished(
            await source.submit_kafka(*kafka_command("elsewhere", "subscription", sub, command_id="e1"))
        )
        await eventually(lambda: "e1" in results(bus), within=5, what="result")
        event, result = results(bus)["e1"]
        assert (result.status, result.code) == (Status.STATUS_REJECTED, "room_not_owned")
        assert event.ctx.room == "elsewhere"


async def test_commands_of_one_room_keep_their_order() -> None:
    async with bridged("r1") as (server, _, _, source, _):
        deliveries = []
        for i in range(30):
            subject, payload = nats_command(
                "r1", "update_metadata", rtc.UpdateParticipantMetadata(metadata=f"m{i}")
            )
            deliveries.append(await source.submit_nats(subject, payload))
        for d in deliveries:
            await finished(d)
        sent = [
            r.update_metadata.metadata
            for r in bridge_requests(server, "r1")
            if r.WhichOneof("message") == "update_metadata"
        ]
        assert sent == [f"m{i}" for i in range(30)]


async def test_join_and_leave_room_commands() -> None:
    async with bridged("r1") as (server, scenario, bridge, source, bus):
        scenario.join("r2", "bob")
        join = commands_pb2.JoinRoom(room="r2")
        await finished(
            await source.submit_kafka(*kafka_command("r2", "bridge.join_room", join, command_id="j1"))
        )
        await eventually(lambda: "j1" in results(bus), within=10, what="join result")
        assert results(bus)["j1"][1].status == Status.STATUS_APPLIED
        assert IDENTITY in server.rooms["r2"].participants
        await finished(
            await source.submit_kafka(
                *kafka_command("r2", "bridge.leave_room", commands_pb2.LeaveRoom(), command_id="l1")
            )
        )
        await eventually(
            lambda: bridge.supervisor.sessions["r2"].ended is not None, within=10, what="left r2"
        )
        assert results(bus)["l1"][1].status == Status.STATUS_APPLIED


async def test_a_stale_delivery_is_dropped_unanswered_and_can_come_again() -> None:
    async with bridged("r1") as (server, _, bridge, source, bus):
        message = rtc.UpdateParticipantMetadata(metadata="moved-away")
        record = kafka_command("r1", "update_metadata", message, command_id="st1")
        # Queue it behind a command that waits for LiveKit's answer, then act out a revoked partition.
        blocker = await source.submit_kafka(
            *kafka_command("r1", "update_metadata", rtc.UpdateParticipantMetadata(metadata="first"))
        )
        stale = MemoryDelivery(build=("kafka", record), stale=True)
        source.deliveries.append(stale)
        await bridge.commands.handle(stale)
        await finished(blocker)
        await finished(stale)
        assert "st1" not in results(bus)  # no answer: the partition's new owner gives it
        assert bridge.commands.stats.dropped_stale == 1
        sent = [
            r.update_metadata.metadata
            for r in bridge_requests(server, "r1")
            if r.WhichOneof("message") == "update_metadata"
        ]
        assert "moved-away" not in sent
        # Delivered again (to the new owner, here the same runner): applied once, one result.
        again = await finished(await source.submit_kafka(*record))
        assert again.reply_payload
        await eventually(lambda: "st1" in results(bus), within=5, what="result after redelivery")


async def test_join_room_makes_the_room_a_candidate_first() -> None:
    async with bridged("r1") as (server, scenario, bridge, source, bus):
        scenario.join("r2", "bob")
        scenario.join("r3", "carol")
        considered: list[str] = []
        claimed: set[str] = set()

        def consider(room: str) -> bool:
            considered.append(room)
            return room in claimed

        runner = bridge.commands
        runner.consider = consider
        runner.owns = lambda room: room in claimed or room == "r1"
        # Leases (nats): a room not claimed yet is only added; the replica that claims it joins it.
        runner.joins_follow_claims = True
        join = commands_pb2.JoinRoom(room="r2")
        await finished(
            await source.submit_kafka(*kafka_command("r2", "bridge.join_room", join, command_id="c1"))
        )
        await eventually(lambda: "c1" in results(bus), within=10, what="join result")
        result = results(bus)["c1"][1]
        assert (result.status, result.message) == (Status.STATUS_APPLIED, CANDIDATE_ADDED)
        assert considered == ["r2"]
        assert "r2" not in bridge.supervisor.sessions
        # Partitions (kafka): the room is ours once considered, and joined here.
        runner.joins_follow_claims = False
        claimed.add("r3")
        join = commands_pb2.JoinRoom(room="r3")
        await finished(
            await source.submit_kafka(*kafka_command("r3", "bridge.join_room", join, command_id="c2"))
        )
        await eventually(lambda: "c2" in results(bus), within=10, what="join result")
        assert results(bus)["c2"][1].status == Status.STATUS_APPLIED
        assert considered == ["r2", "r3"]
        assert IDENTITY in server.rooms["r3"].participants
