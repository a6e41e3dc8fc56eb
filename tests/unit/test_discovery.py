"""The room discovery decision: what to join and leave, given what LiveKit lists and what runs here."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.rooms.discovery import RoomPlan, plan

ROOMS = st.frozensets(st.sampled_from(["a", "b", "c", "d", "e"]))


def test_joins_listed_rooms_that_are_not_running() -> None:
    assert plan(existing={"a", "b"}, running={"a"}, established={"a"}) == RoomPlan(
        join=frozenset({"b"}), leave=frozenset()
    )


def test_leaves_established_rooms_that_are_no_longer_listed() -> None:
    decided = plan(existing={"a"}, running={"a", "b"}, established={"a", "b"})
    assert decided == RoomPlan(join=frozenset(), leave=frozenset({"b"}))


def test_a_room_still_connecting_is_not_called_gone() -> None:
    # "c" was not joined when ListRooms was asked: its join may be creating the room right now.
    assert plan(existing={"a"}, running={"a", "c"}, established={"a"}).leave == frozenset()


def test_auto_join_off_only_leaves() -> None:
    decided = plan(existing={"a", "b"}, running={"c"}, established={"c"}, auto_join=False)
    assert decided == RoomPlan(join=frozenset(), leave=frozenset({"c"}))


def test_only_owned_rooms_are_joined_and_disowned_ones_are_left() -> None:
    decided = plan(existing={"a", "b", "c"}, running={"c"}, established=set(), owns=lambda r: r != "c")
    assert decided == RoomPlan(join=frozenset({"a", "b"}), leave=frozenset({"c"}))


def test_a_room_lost_to_another_owner_is_not_rejoined() -> None:
    assert plan(existing={"a", "b"}, running=set(), established=set(), lost={"b"}).join == {"a"}


def test_nothing_to_do_when_in_sync() -> None:
    assert plan(existing={"a", "b"}, running={"a", "b"}, established={"a", "b"}) == RoomPlan(
        frozenset(), frozenset()
    )


@given(existing=ROOMS, running=ROOMS, established=ROOMS, lost=ROOMS)
def test_plan_invariants(
    existing: frozenset[str], running: frozenset[str], established: frozenset[str], lost: frozenset[str]
) -> None:
    decided = plan(existing=existing, running=running, established=established, lost=lost)
    assert decided.join <= existing - running - lost  # never joins what runs or what is not there
    assert decided.leave <= running  # never leaves what is not running
    assert not decided.join & decided.leave
    assert not decided.leave & existing  # with every room owned, a listed room is never left
    # The next round (everything established by then) joins nothing more, and leaves only the rooms that
    # were still connecting this round and are not listed.
    after = (running | decided.join) - decided.leave
    again = plan(existing=existing, running=after, established=after, lost=lost)
    assert again.join == frozenset()
    assert again.leave == (running - established) - existing
