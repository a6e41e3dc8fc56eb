"""Room ownership at run time: the asyncio glue between an ownership engine and the room supervisor.

:class:`Ownership` is what the rest of the bridge sees: ``owns(room)`` (the command runner checks it
right before applying a command, discovery before joining), ``consider(room)`` (discovery offers the rooms
LiveKit lists: they become candidates), ``settled`` (``/readyz``), ``handover()`` (SIGTERM: give the
rooms up and wait until their new owners' joins evict us) and :meth:`report` (``/rooms``).

- :class:`StaticOwnership`: every room is ours.
- :class:`KafkaOwnership`: fed by the Kafka command source's assignment callback; the decisions are
  :func:`bridge.rooms.ownership.rooms_in` and :func:`~bridge.rooms.ownership.handover`.
- ``NatsLeaseOwnership`` (:mod:`bridge.bus.nats_leases`): JetStream KV leases.

Gained rooms are joined at once; a lost room keeps its socket until the new owner's join evicts it
(LiveKit's duplicate-identity rule: the session ends with ``ownership_lost``) or
``ownership.handover_timeout_s`` passes, then it is left. A room evicted while we still own it is joined
again, at most every ``REJOIN_AFTER_S``, so the replica that really holds it ends up in it and two that
both believe they own it cannot evict each other in a tight loop. Each change is logged once at INFO
(``ownership acquired`` / ``released``) and, given a :class:`~bridge.rooms.room_events.RoomEvents`,
published as one ``ownership_changed`` event per room (static mode never changes, so it publishes none).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

from bridge._proto import events_pb2
from bridge.config import Settings
from bridge.rooms import ownership
from bridge.rooms.room_events import RoomEvents
from bridge.rooms.session import RoomSession
from bridge.rooms.supervisor import RoomSupervisor
from bridge.signaling.protocol import SessionState

__all__ = [
    "AssignmentCallback",
    "KafkaOwnership",
    "Ownership",
    "StaticOwnership",
    "build_ownership",
    "default_replica_id",
]

log = logging.getLogger("bridge.rooms.sharding")

_GONE: Final = (SessionState.LEAVING, SessionState.CLOSED)
MAX_ROOMS_LOGGED: Final = 20
RECONCILE_INTERVAL_S: Final = 1.0
REJOIN_AFTER_S: Final = 3.0  # an evicted room we still own is joined again at most this often
EVENTS_FLUSH_S: Final = 5.0  # at handover / close: how long queued ownership events may take to go out

# (partitions of the commands topic assigned here, the topic's partition count)
AssignmentCallback = Callable[[frozenset[int], int], Awaitable[None]]


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _names(rooms: Iterable[str]) -> str:
    ordered = sorted(rooms)
    more = f" ... (+{len(ordered) - MAX_ROOMS_LOGGED})" if len(ordered) > MAX_ROOMS_LOGGED else ""
    return ",".join(ordered[:MAX_ROOMS_LOGGED]) + more


class Ownership:
    """Base: the rooms this replica owns and the sessions that follow them. Subclasses decide ``owned``."""

    mode = "static"
    # Kafka mode: what the command source calls after every assignment and revocation.
    assignment_handler: AssignmentCallback | None = None

    def __init__(
        self,
        supervisor: RoomSupervisor,
        *,
        candidates: Iterable[str],
        handover_timeout_s: float,
        replica: str | None = None,
        events: RoomEvents | None = None,
    ):
        self._supervisor = supervisor
        self.replica = replica or default_replica_id()
        self.events = events  # None: changes are only logged
        self.candidates: set[str] = set(candidates)
        self.handover_timeout_s = handover_timeout_s
        self.owned: frozenset[str] = frozenset()
        self.settled = False
        self.closing = False
        self._pending: set[str] = set()  # gained, not joined yet
        self._rejoined_at: dict[str, float] = {}
        self._leaving: dict[str, asyncio.TimerHandle] = {}
        self._reconciler: asyncio.Task[None] | None = None
        self.changes = 0
        self.acquired = 0
        self.released = 0
        # ownership_changed events not published yet, in change order; one task publishes them, so a
        # room's acquisition and release cannot overtake each other.
        self._outgoing: collections.deque[tuple[RoomSession | None, events_pb2.OwnershipChanged]]
        self._outgoing = collections.deque()
        self._announcer: asyncio.Task[None] | None = None

    # -- the hooks the bridge calls ---------------------------------------------------------------

    def owns(self, room: str) -> bool:
        return room in self.owned

    def owner_of(self, room: str) -> str | None:
        """The replica id that owns ``room`` as far as this replica knows; None: unknown or nobody."""
        return self.replica if self.owns(room) else None

    def consider(self, room: str) -> bool:
        """Discovery's hook: ``room`` exists in LiveKit, so it is a candidate; True if it is ours."""
        if not self.closing:
            self.candidates.add(room)
        return self.owns(room)

    def start(self) -> None:
        self._reconciler = asyncio.create_task(self._reconcile_loop(), name="ownership-reconcile")

    async def handover(self) -> None:
        """SIGTERM: stop owning; wait until the rooms' new owners evict us, at most the handover timeout."""
        self.closing = True
        await self._stop_reconciler()
        await self.release_all()
        await self.flush_events(EVENTS_FLUSH_S)  # the releases go out before the sessions end
        await self.wait_evicted(self.handover_timeout_s)

    async def release_all(self) -> None:
        """Give every room up explicitly (the engine's part of a handover)."""

    async def aclose(self) -> None:
        self.closing = True
        await self._stop_reconciler()
        await self.flush_events(EVENTS_FLUSH_S)
        announcer, self._announcer = self._announcer, None
        if announcer is not None and not announcer.done():  # flush timed out: the buses are stuck
            announcer.cancel()
            await asyncio.gather(announcer, return_exceptions=True)
        for handle in self._leaving.values():
            handle.cancel()
        self._leaving.clear()

    def report(self) -> dict[str, Any]:
        """What ``/rooms`` answers: ``owned`` (ours now), ``sessions`` (running here, perhaps handing over),
        ``joined`` (sessions that have joined LiveKit and not ended)."""
        return {
            "mode": self.mode,
            "settled": self.settled,
            "owned": sorted(self.owned),
            "sessions": sorted(self.live_sessions()),
            "joined": sorted(
                room for room, s in self._supervisor.sessions.items() if s.ended is None and s.participant_sid
            ),
        }

    # -- shared machinery ------------------------------------------------------------------------

    def live_sessions(self) -> set[str]:
        """Rooms with a session here that has not ended and is not leaving."""
        return {
            room for room, s in self._supervisor.sessions.items() if s.ended is None and s.state not in _GONE
        }

    async def wait_evicted(self, deadline_s: float) -> None:
        await self._supervisor.wait_rooms(self.live_sessions(), deadline_s)
        if live := self.live_sessions():
            log.info("ownership: %d rooms not taken over within %.1fs; leaving them", len(live), deadline_s)
        else:
            log.info("ownership: every room taken over by another replica")

    def change(self, owned: frozenset[str], why: str) -> None:
        """Ownership moved to ``owned``: join what was gained, schedule leaving what was lost."""
        moved = ownership.handover(self.owned, owned)
        self.owned = owned
        if not moved.gained and not moved.lost:
            return
        self.changes += 1
        self.acquired += len(moved.gained)
        self.released += len(moved.lost)
        if moved.gained:
            log.info("ownership acquired (%s): %d rooms: %s", why, len(moved.gained), _names(moved.gained))
        if moved.lost:
            log.info("ownership released (%s): %d rooms: %s", why, len(moved.lost), _names(moved.lost))
        # Before the joins below: an acquired room's event is numbered in the session running now, if any.
        self._announce(moved.lost, acquired=False, why=why)
        self._announce(moved.gained, acquired=True, why=why)
        for room in moved.gained:
            self._pending.add(room)
            handle = self._leaving.pop(room, None)
            if handle is not None:
                handle.cancel()
        for room in moved.lost:
            if room in self._supervisor.sessions and room not in self._leaving:
                self._leaving[room] = asyncio.get_running_loop().call_later(
                    self.handover_timeout_s, self._leave_if_not_ours, room
                )
        if not self.closing:
            self.join_pending()

    def token_of(self, room: str) -> int:
        """The fencing token that goes into ``room``'s ownership events; 0: the mode has none."""
        return 0

    def _announce(self, rooms: Iterable[str], *, acquired: bool, why: str) -> None:
        if self.events is None:
            return
        for room in sorted(rooms):
            message = events_pb2.OwnershipChanged(
                room=room,
                acquired=acquired,
                mode=self.mode,
                replica=self.replica,
                fencing_token=self.token_of(room),
                reason=why,
            )
            self._outgoing.append((self._supervisor.sessions.get(room), message))
        if self._outgoing and (self._announcer is None or self._announcer.done()):
            self._announcer = asyncio.create_task(self._publish_changes(), name="ownership-events")

    async def _publish_changes(self) -> None:
        events = self.events
        assert events is not None
        while self._outgoing:
            session, message = self._outgoing.popleft()
            try:
                await events.emit(message.room, "ownership_changed", message, session=session)
            except Exception:  # one event's failure must not strand the rest
                log.exception("ownership: event for room=%s not published", message.room)

    async def flush_events(self, deadline_s: float) -> None:
        """Wait until the queued ownership events are handed to the buses, at most ``deadline_s``."""
        task = self._announcer
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), deadline_s)
        except TimeoutError:
            log.warning("ownership: %d events not published within %.1fs", len(self._outgoing), deadline_s)

    def join_pending(self) -> None:
        """Join the rooms gained since the last call (one still leaving waits for a later round)."""
        for room in sorted(self._pending):
            session = self._supervisor.sessions.get(room)
            if room not in self.owned or room not in self.candidates:
                self._pending.discard(room)
            elif session is not None and session.ended is None and session.state in _GONE:
                continue  # still leaving (handed over, then regained): join once it has left
            else:
                self._pending.discard(room)
                self._supervisor.join(room)  # a no-op for a session still running

    def _leave_if_not_ours(self, room: str) -> None:
        self._leaving.pop(room, None)
        if room in self.owned:
            return
        session = self._supervisor.sessions.get(room)
        if session is not None and session.ended is None and session.state not in _GONE:
            log.info("ownership: room=%s not taken over within %.1fs; leaving", room, self.handover_timeout_s)
            self._supervisor.leave(room)

    async def _reconcile_loop(self) -> None:
        while not self.closing:
            await asyncio.sleep(RECONCILE_INTERVAL_S)  # the reconcile cadence itself
            self.join_pending()
            self.rejoin_evicted(time.monotonic())

    def rejoin_evicted(self, now: float) -> None:
        """Join again a room we still own whose session another replica evicted (during a handover both
        may briefly believe they own it; the one that lost the lease or partition lets go). At most once
        per ``REJOIN_AFTER_S`` per room, so two replicas can never evict each other in a tight loop."""
        for room in sorted(self.owned & self.candidates):
            session = self._supervisor.sessions.get(room)
            if session is None or session.ended is None or not session.ended.ownership_lost:
                continue
            if now - self._rejoined_at.get(room, -REJOIN_AFTER_S) < REJOIN_AFTER_S or not self.owns(room):
                continue
            self._rejoined_at[room] = now
            log.info("ownership: room=%s evicted while still ours; joining again", room)
            self._supervisor.join(room)

    async def _stop_reconciler(self) -> None:
        task, self._reconciler = self._reconciler, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class StaticOwnership(Ownership):
    """Every room is ours (the behaviour without sharding); joins stay with the supervisor and discovery."""

    mode = "static"

    def __init__(self, supervisor: RoomSupervisor, *, candidates: Iterable[str]) -> None:
        super().__init__(supervisor, candidates=candidates, handover_timeout_s=0.0)
        self.settled = True

    def owns(self, room: str) -> bool:
        return True

    def start(self) -> None:
        return None

    async def handover(self) -> None:
        self.closing = True

    def report(self) -> dict[str, Any]:
        out = super().report()
        out["owned"] = out["sessions"]
        return out


class KafkaOwnership(Ownership):
    """Rooms follow the consumer group's assignment of ``kafka.commands_topic`` partitions.

    A revocation empties :attr:`owned` for commands at once but leaves the sockets alone (aiokafka's
    eager protocol revokes everything before every rebalance; most partitions come straight back). The
    following assignment decides: rooms gained are joined, rooms lost are handed over.
    """

    mode = "kafka"

    def __init__(
        self,
        supervisor: RoomSupervisor,
        *,
        candidates: Iterable[str],
        handover_timeout_s: float,
        partition_of: ownership.PartitionOf,
        replica: str | None = None,
        events: RoomEvents | None = None,
    ) -> None:
        super().__init__(
            supervisor,
            candidates=candidates,
            handover_timeout_s=handover_timeout_s,
            replica=replica,
            events=events,
        )
        self._partition_of = partition_of
        self.partitions: frozenset[int] = frozenset()
        self.partition_count = 0
        self.assignment_handler = self.on_assignment

    def owns(self, room: str) -> bool:
        # Commands: the partition must be assigned right now (not just before the last revocation).
        return self.partition_count > 0 and self._partition_of(room, self.partition_count) in self.partitions

    async def on_assignment(self, partitions: frozenset[int], partition_count: int) -> None:
        """``KafkaCommandSource``'s callback, after every assignment and revocation."""
        # aiokafka's protocol is eager: a revocation takes partitions away (all of them), and the
        # assignment that follows starts from none. So fewer than before is a revocation.
        revocation = bool(self.partitions) and partitions < self.partitions
        self.partitions, self.partition_count = partitions, partition_count
        if self.closing:
            return
        if revocation:
            # Stop acting on those rooms' commands (``owns``), but keep their sockets until the assignment
            # that follows says where they go: most come straight back.
            self.settled = False
            return
        now = ownership.rooms_in(self.candidates, partitions, partition_count, self._partition_of)
        self.change(now, f"kafka partitions {sorted(partitions)} of {partition_count}")
        self.settled = True

    def consider(self, room: str) -> bool:
        ours = super().consider(room)
        if ours and self.settled and room not in self.owned:
            self.owned |= {room}  # discovery joins it: it asked because the room is not running here
            self.acquired += 1
            log.info("ownership acquired (discovered in an assigned partition): room=%s", room)
            self._announce((room,), acquired=True, why="discovered in an assigned partition")
        return ours

    async def release_all(self) -> None:
        # The command source has left the group by now (it closes first): these rooms are not ours.
        self.change(frozenset(), "shutting down")

    def report(self) -> dict[str, Any]:
        out = super().report()
        out["partitions"] = sorted(self.partitions)
        out["partition_count"] = self.partition_count
        return out


def kafka_partition_of() -> Callable[[str, int], int]:
    """room -> partition with Kafka's default partitioner (imported here: aiokafka is optional)."""
    from bridge.bus.kafka import partition_for

    def partition_of(room: str, count: int) -> int:
        return partition_for(room.encode(), range(count))

    return partition_of


def build_ownership(
    settings: Settings, supervisor: RoomSupervisor, *, events: RoomEvents | None = None
) -> Ownership:
    """The engine ``ownership.mode`` names; candidates start as ``rooms.static``, discovery adds more.
    ``events``: where ownership changes are published (static mode has none)."""
    o = settings.ownership
    if o.mode == "kafka":
        return KafkaOwnership(
            supervisor,
            candidates=settings.rooms.static,
            handover_timeout_s=o.handover_timeout_s,
            partition_of=kafka_partition_of(),
            replica=o.replica_id,
            events=events,
        )
    if o.mode == "nats":
        assert settings.nats is not None  # checked by Settings
        from bridge.bus.nats_leases import NatsLeaseOwnership

        return NatsLeaseOwnership(
            supervisor,
            nats_settings=settings.nats,
            settings=o,
            candidates=settings.rooms.static,
            events=events,
        )
    return StaticOwnership(supervisor, candidates=settings.rooms.static)
