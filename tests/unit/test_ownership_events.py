"""Ownership changes become ``ownership_changed`` events: one per room and change, numbered per room."""

from __future__ import annotations

from typing import Any, cast

from bridge._proto import events_pb2
from bridge.bus.nats_leases import NatsLeaseOwnership
from bridge.config import Settings, load_settings
from bridge.events.cloudevent import CloudEvent, SessionContext, source_uri
from bridge.events.mapping import EventMapper
from bridge.rooms.ownership import Lease, LeaseEvent
from bridge.rooms.room_events import RoomEvents
from bridge.rooms.session import RoomSession
from bridge.rooms.sharding import KafkaOwnership, build_ownership
from bridge.rooms.supervisor import RoomSupervisor
from bridge.signaling.protocol import SessionState

URL = "wss://lk.example.com"
ROOMS = ["a0", "b1", "c0", "d1"]  # the last digit is the room's Kafka partition here


class ListSink:
    def __init__(self) -> None:
        self.events: list[CloudEvent] = []

    async def emit(self, event: CloudEvent) -> None:
        self.events.append(event)


class FakeSession:
    """What RoomEvents needs of a running RoomSession: its own numbering."""

    def __init__(self, room: str, sink: ListSink) -> None:
        self.ended: object = None
        self.state = SessionState.JOINED
        self.session_id = f"BS_{room}"
        self.mapper = EventMapper(
            SessionContext(source=source_uri(URL, room), room=room, session=self.session_id)
        )
        self._sink = sink

    async def emit_bridge_event(
        self, name: str, message: Any, *, extensions: Any = (), traceparent: Any = None
    ) -> CloudEvent | None:
        event = self.mapper.bridge(name, message, wall=0.0)
        assert event is not None
        await self._sink.emit(event)
        return event


class FakeSupervisor:
    def __init__(self) -> None:
        self.sessions: dict[str, Any] = {}
        self.joined: list[str] = []

    def join(self, room: str) -> None:
        self.joined.append(room)

    def leave(self, room: str) -> None:
        pass

    async def wait_rooms(self, rooms: Any, deadline_s: float) -> None:
        pass


def _settings(**env: str) -> Settings:
    environ = {
        "BRIDGE_LIVEKIT__URL": URL,
        "BRIDGE_LIVEKIT__API_KEY": "key",
        "BRIDGE_LIVEKIT__API_SECRET": "secret",
        "BRIDGE_ROOMS__STATIC": "[" + ", ".join(ROOMS) + "]",
        **{f"BRIDGE_{k.upper()}": v for k, v in env.items()},
    }
    return load_settings(None, environ)


def _kafka(supervisor: FakeSupervisor, sink: ListSink) -> KafkaOwnership:
    return KafkaOwnership(
        cast(RoomSupervisor, supervisor),
        candidates=ROOMS,
        handover_timeout_s=0.05,
        partition_of=lambda room, count: int(room[-1]) % count,
        replica="r-1",
        events=RoomEvents(livekit_url=URL, sink=sink),
    )


def _changes(sink: ListSink) -> list[tuple[str, bool, events_pb2.OwnershipChanged, CloudEvent]]:
    out = []
    for event in sink.events:
        assert event.type == "io.livekit.bridge.ownership_changed.v1"
        msg = events_pb2.OwnershipChanged.FromString(event.data)
        assert event.ctx.room == msg.room
        out.append((msg.room, msg.acquired, msg, event))
    return out


async def test_kafka_assignment_changes_are_published_per_room_and_numbered_per_room() -> None:
    supervisor, sink = FakeSupervisor(), ListSink()
    own = _kafka(supervisor, sink)
    await own.on_assignment(frozenset({0}), 2)
    await own.flush_events(1.0)
    assert [(room, acquired) for room, acquired, _, _ in _changes(sink)] == [("a0", True), ("c0", True)]
    _, _, first, _ = _changes(sink)[0]
    assert (first.mode, first.replica, first.fencing_token) == ("kafka", "r-1", 0)
    assert first.reason == "kafka partitions [0] of 2"
    assert supervisor.joined == ["a0", "c0"]

    sink.events.clear()
    await own.on_assignment(frozenset({1}), 2)  # partition 0 moved away, partition 1 came here
    await own.flush_events(1.0)
    changes = _changes(sink)
    assert [(room, acquired) for room, acquired, _, _ in changes] == [
        ("a0", False),
        ("c0", False),
        ("b1", True),
        ("d1", True),
    ]
    # No session ran for a0: its acquisition and release share a pseudo-session, numbered 1 then 2.
    released_a0 = changes[0][3]
    assert [e for e in sink.events if e.ctx.room == "a0"] == [released_a0]
    assert released_a0.sequence == 2
    await own.aclose()


async def test_a_release_is_numbered_in_the_running_session_and_a_revocation_is_no_change() -> None:
    supervisor, sink = FakeSupervisor(), ListSink()
    own = _kafka(supervisor, sink)
    await own.on_assignment(frozenset({0}), 2)
    await own.flush_events(1.0)
    session = FakeSession("a0", sink)
    supervisor.sessions["a0"] = session
    sink.events.clear()

    await own.on_assignment(frozenset(), 2)  # eager revocation: the next assignment decides
    await own.flush_events(1.0)
    assert sink.events == []

    await own.on_assignment(frozenset({1}), 2)
    await own.flush_events(1.0)
    (released,) = [e for e in sink.events if e.ctx.room == "a0"]
    assert released.ctx.session == "BS_a0"  # the room's session, not a pseudo-session
    assert released.sequence == 1
    assert not events_pb2.OwnershipChanged.FromString(released.data).acquired
    await own.aclose()


async def test_kafka_shutdown_releases_every_owned_room() -> None:
    supervisor, sink = FakeSupervisor(), ListSink()
    own = _kafka(supervisor, sink)
    await own.on_assignment(frozenset({0, 1}), 2)
    await own.flush_events(1.0)
    sink.events.clear()
    await own.handover()
    changes = _changes(sink)
    assert sorted(room for room, acquired, _, _ in changes if not acquired) == ROOMS
    assert all(msg.reason == "shutting down" for _, _, msg, _ in changes)
    assert own.owned == frozenset()
    await own.aclose()


async def test_nats_events_carry_the_lease_revision_as_fencing_token() -> None:
    supervisor, sink = FakeSupervisor(), ListSink()
    settings = _settings(
        nats__servers='["nats://127.0.0.1:1"]', ownership__mode="nats", ownership__replica_id="r-nats"
    )
    own = build_ownership(
        settings, cast(RoomSupervisor, supervisor), events=RoomEvents(livekit_url=URL, sink=sink)
    )
    assert isinstance(own, NatsLeaseOwnership)
    lease = own.leases["a0"] = Lease("a0")
    lease.apply(LeaseEvent.CLAIM)
    lease.apply(LeaseEvent.CLAIMED, now=1e12, revision=41, ttl_s=3.0)
    own._publish("lease change")
    lease.apply(LeaseEvent.RENEW)
    lease.apply(LeaseEvent.RENEWED, now=1e12, revision=57, ttl_s=3.0)
    own._lost(lease, "renewal refused")
    await own.flush_events(1.0)
    changes = _changes(sink)
    assert [(room, acquired, msg.fencing_token, msg.reason) for room, acquired, msg, _ in changes] == [
        ("a0", True, 41, "lease change"),
        ("a0", False, 57, "lease lost"),
    ]
    assert {(msg.mode, msg.replica) for _, _, msg, _ in changes} == {("nats", "r-nats")}
    assert [e.sequence for e in sink.events] == [1, 2]
    assert len({e.ctx.session for e in sink.events}) == 1
    await own.aclose()


async def test_static_mode_publishes_nothing() -> None:
    supervisor, sink = FakeSupervisor(), ListSink()
    own = build_ownership(
        _settings(), cast(RoomSupervisor, supervisor), events=RoomEvents(livekit_url=URL, sink=sink)
    )
    assert own.mode == "static"
    own.start()
    assert own.consider("new-room")
    await own.handover()
    await own.aclose()
    assert sink.events == []


async def test_room_events_use_a_live_session_else_one_pseudo_session_per_room() -> None:
    sink = ListSink()
    events = RoomEvents(livekit_url=URL, sink=sink)
    message = events_pb2.OwnershipChanged(room="a0", acquired=True)
    session = FakeSession("a0", sink)
    in_session = await events.emit("a0", "ownership_changed", message, session=cast(RoomSession, session))
    session.ended = object()  # an ended session no longer numbers events
    after_end = await events.emit("a0", "ownership_changed", message, session=cast(RoomSession, session))
    other = await events.emit("b1", "ownership_changed", message, session=None)
    assert in_session is not None
    assert after_end is not None
    assert other is not None
    assert in_session.ctx.session == "BS_a0"
    assert after_end.ctx.session != "BS_a0"
    assert after_end.ctx.session == events.fallback_mapper("a0").ctx.session
    assert other.ctx.session not in {in_session.ctx.session, after_end.ctx.session}
    assert sink.events == [in_session, after_end, other]
