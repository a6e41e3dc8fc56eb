"""The pure ownership decisions: Kafka partition filtering, handover, the lease state machine, claims."""

from __future__ import annotations

import pytest

from bridge.bus.kafka import partition_for
from bridge.errors import InvalidState
from bridge.rooms import ownership as o
from bridge.rooms.ownership import Lease, LeaseEvent, LeaseState


def murmur(room: str, count: int) -> int:
    return partition_for(room.encode(), range(count))


ROOMS = [f"room-{i:02d}" for i in range(30)]


def test_partitions_split_the_rooms_exactly_once() -> None:
    owners = [frozenset({0, 3}), frozenset({1, 4}), frozenset({2, 5})]
    shares = [o.rooms_in(ROOMS, p, 6, murmur) for p in owners]
    assert sum(len(s) for s in shares) == len(ROOMS)
    assert frozenset().union(*shares) == frozenset(ROOMS)


def test_no_partitions_means_no_rooms() -> None:
    assert o.rooms_in(ROOMS, frozenset(), 6, murmur) == frozenset()
    assert o.rooms_in(ROOMS, frozenset({0}), 0, murmur) == frozenset()


def test_handover_names_gained_and_lost() -> None:
    moved = o.handover({"a", "b"}, {"b", "c"})
    assert moved == o.Handover(gained=frozenset({"c"}), lost=frozenset({"a"}))


@pytest.mark.parametrize("room", ["plain", "with.dot", "sp ace", "ünï", "a=b", "%2E", ""])
def test_lease_keys_round_trip_and_are_valid_kv_keys(room: str) -> None:
    key = o.lease_key(room)
    assert o.room_of_lease_key(key) == room
    assert all(c.isascii() and (c.isalnum() or c in "-_=.") for c in key)
    assert key.count(".") == 1


def test_member_keys_are_not_lease_keys() -> None:
    assert o.room_of_lease_key(o.member_key("replica.1")) is None


def test_lease_lifecycle() -> None:
    lease = Lease("r")
    lease.apply(LeaseEvent.CLAIM)
    assert lease.state is LeaseState.CLAIMING
    assert not lease.held
    lease.apply(LeaseEvent.CLAIMED, now=10.0, revision=7, ttl_s=3.0)
    assert lease.held
    assert lease.revision == 7
    assert lease.expires_at == 13.0
    assert not lease.renew_due(10.5, 1.0)
    assert lease.renew_due(11.0, 1.0)
    lease.apply(LeaseEvent.RENEW)
    assert lease.held  # still ours while the renewal is in flight
    lease.apply(LeaseEvent.RENEWED, now=11.0, revision=9, ttl_s=3.0)
    assert lease.revision == 9
    assert not lease.expired(13.5)
    assert lease.expired(14.0)
    lease.apply(LeaseEvent.RELEASE)
    lease.apply(LeaseEvent.RELEASED)
    assert lease.state is LeaseState.FREE


def test_failed_renewal_keeps_the_lease_until_it_expires() -> None:
    lease = Lease("r")
    lease.apply(LeaseEvent.CLAIM)
    lease.apply(LeaseEvent.CLAIMED, now=0.0, revision=1, ttl_s=3.0)
    lease.apply(LeaseEvent.RENEW)
    lease.apply(LeaseEvent.RENEW_FAILED)
    assert lease.held
    assert lease.expired(3.0)
    lease.apply(LeaseEvent.LOST)
    assert lease.state is LeaseState.FREE


@pytest.mark.parametrize(
    ("state_events", "illegal"),
    [
        ([], LeaseEvent.RENEW),
        ([], LeaseEvent.CLAIMED),
        ([LeaseEvent.CLAIM], LeaseEvent.CLAIM),
        ([LeaseEvent.CLAIM, LeaseEvent.CLAIM_FAILED], LeaseEvent.RELEASE),
    ],
)
def test_illegal_transitions_raise(state_events: list[LeaseEvent], illegal: LeaseEvent) -> None:
    lease = Lease("r")
    for event in state_events:
        lease.apply(event)
    with pytest.raises(InvalidState, match=illegal.value):
        lease.apply(illegal)


def test_every_state_has_a_way_back_to_free() -> None:
    reachable = {LeaseState.FREE}
    frontier = [LeaseState.FREE]
    while frontier:
        for nxt in o.TRANSITIONS[frontier.pop()].values():
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(LeaseState)


def test_fair_share() -> None:
    assert o.fair_share(30, 3) == 10
    assert o.fair_share(30, 4) == 8
    assert o.fair_share(30, 0) == 30
    assert o.fair_share(30, 1, capacity=12) == 12


def test_claims_fill_the_fair_share_in_preference_order() -> None:
    plan = o.plan_claims(replica="a", candidates=set(ROOMS), held=set(), taken=set(), members=3)
    assert len(plan.claim) == 10
    assert not plan.release
    scores = [o.preference("a", r) for r in plan.claim]
    assert scores == sorted(scores, reverse=True)


def test_replicas_prefer_different_rooms() -> None:
    firsts = {
        o.plan_claims(replica=r, candidates=set(ROOMS), held=set(), taken=set(), members=3).claim
        for r in ("a", "b", "c")
    }
    assert len(firsts) == 3


def test_claims_skip_taken_rooms_and_respect_capacity() -> None:
    taken = set(ROOMS[:25])
    plan = o.plan_claims(replica="a", candidates=set(ROOMS), held=set(), taken=taken, members=1, capacity=3)
    assert len(plan.claim) == 3
    assert not set(plan.claim) & taken


def test_excess_and_gone_rooms_are_released() -> None:
    held = set(ROOMS[:20]) | {"gone"}
    plan = o.plan_claims(replica="a", candidates=set(ROOMS), held=held, taken=set(ROOMS[20:]), members=3)
    assert not plan.claim
    assert "gone" in plan.release
    assert len(plan.release) == 1 + 10


def test_three_replicas_converge_to_every_room_once() -> None:
    held: dict[str, set[str]] = {"a": set(), "b": set(), "c": set()}
    for _ in range(3):
        for replica, mine in held.items():
            others = set().union(*(h for r, h in held.items() if r != replica))
            plan = o.plan_claims(replica=replica, candidates=set(ROOMS), held=mine, taken=others, members=3)
            mine -= set(plan.release)
            mine |= set(plan.claim)
    assert sorted(len(h) for h in held.values()) == [10, 10, 10]
    assert set().union(*held.values()) == set(ROOMS)
