"""Which rooms to run beyond ``rooms.static``: LiveKit webhooks as the trigger, ListRooms as the truth.

Webhooks are quick but lossy (LiveKit drops them after 30 s or beyond a queue depth of 200), so a periodic
``ListRooms`` reconciliation (``discovery.list_rooms_interval_s``) catches what they missed, including
rooms created while the bridge was down. Both only act on rooms :func:`owns` says this process may run;
that hook is where room ownership (sharding) plugs in, and today it allows every room.

:func:`plan` is the decision, pure: given what LiveKit lists and what runs here, which rooms to join and
which to leave. :class:`RoomDiscovery` is the asyncio glue around it and the supervisor. Joins and leaves
are idempotent, so a webhook and a reconciliation that agree do no harm.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Set
from dataclasses import dataclass

from livekit.protocol.webhook import WebhookEvent

from bridge.config import DiscoverySettings, LiveKitSettings
from bridge.errors import ServerApiError
from bridge.rooms.server_api import ServerApi
from bridge.rooms.supervisor import RoomSupervisor
from bridge.signaling.protocol import SessionState
from bridge.tasks import OwnedTasks

__all__ = ["DiscoveryStats", "Owns", "RoomDiscovery", "RoomPlan", "owns_every_room", "plan"]

log = logging.getLogger(__name__)

Owns = Callable[[str], bool]
_LEAVING = (SessionState.LEAVING, SessionState.CLOSED)
ListRooms = Callable[[], Awaitable[list[str]]]


def owns_every_room(room: str) -> bool:
    """The ownership hook until sharding lands: one process may run every room."""
    return True


@dataclass(frozen=True, slots=True)
class RoomPlan:
    join: frozenset[str]
    leave: frozenset[str]


def plan(
    *,
    existing: Set[str],
    running: Set[str],
    established: Set[str],
    lost: Set[str] = frozenset(),
    owns: Owns = owns_every_room,
    auto_join: bool = True,
) -> RoomPlan:
    """The joins and leaves that make the rooms running here match the rooms LiveKit lists.

    - ``existing``: the rooms ListRooms returned;
    - ``running``: rooms with a live session here now;
    - ``established``: rooms whose session had joined *before* ListRooms was asked. Only these can be
      called gone: a session still connecting may be creating its room while the listing is taken;
    - ``lost``: rooms whose last session was evicted by another session with our identity (another
      owner); never rejoined from a listing, or two replicas would take the room from each other forever.

    Join: existing, owned, not running, not lost (only with ``auto_join``). Leave: established rooms
    that are no longer listed, and every running room this process does not own.
    """
    join = {r for r in existing - running - lost if owns(r)} if auto_join else set()
    gone = (established & running) - existing
    disowned = {r for r in running if not owns(r)}
    return RoomPlan(join=frozenset(join), leave=frozenset(gone | disowned))


@dataclass(slots=True)
class DiscoveryStats:
    reconciliations: int = 0
    reconcile_failures: int = 0
    joins: int = 0
    leaves: int = 0


class RoomDiscovery:
    """Applies webhooks and periodic reconciliations to the supervisor. ``start()``, then ``aclose()``
    before the supervisor closes (so nothing joins a room while the bridge is leaving them all)."""

    def __init__(
        self,
        settings: DiscoverySettings,
        supervisor: RoomSupervisor,
        *,
        livekit: LiveKitSettings,
        owns: Owns = owns_every_room,
        list_rooms: ListRooms | None = None,
    ) -> None:
        self._settings = settings
        self._supervisor = supervisor
        self.owns = owns
        self._api: ServerApi | None = None
        if list_rooms is None and settings.list_rooms_interval_s is not None:
            self._api = ServerApi(livekit)
            list_rooms = self._api.list_rooms
        self._list_rooms = list_rooms
        self.stats = DiscoveryStats()
        self._tasks = OwnedTasks(log, "room discovery")
        self._failing = False
        self.closed = False

    def start(self) -> None:
        if self._settings.list_rooms_interval_s is not None and self._list_rooms is not None:
            self._tasks.spawn(self._poll(self._settings.list_rooms_interval_s), name="discovery")

    async def aclose(self) -> None:
        self.closed = True
        await self._tasks.aclose(5.0)
        if self._api is not None:
            await self._api.aclose()

    # ------------------------------------------------------------------- webhooks

    def on_webhook(self, event: WebhookEvent) -> bool:
        """Act on a verified webhook. False while closing: the caller answers 503 so LiveKit retries
        (possibly on another replica)."""
        if self.closed:
            return False
        room = event.room.name
        if not room:
            return True
        if event.event == "room_started" and self._settings.auto_join and self.owns(room):
            if room not in self._running():
                log.info("discovery: joining room=%s (webhook room_started)", room)
                self._supervisor.join(room)
                self.stats.joins += 1
        elif event.event == "room_finished" and room in self._running():
            log.info("discovery: leaving room=%s (webhook room_finished)", room)
            self._supervisor.leave(room)
            self.stats.leaves += 1
        return True

    # ------------------------------------------------------------ reconciliation

    async def reconcile(self) -> RoomPlan | None:
        """One ListRooms round; the plan it applied, or None when LiveKit could not be asked."""
        assert self._list_rooms is not None
        established = {
            room for room, s in self._supervisor.sessions.items() if s.ended is None and s.participant_sid
        }
        try:
            existing = set(await self._list_rooms())
        except ServerApiError as exc:
            self.stats.reconcile_failures += 1
            if not self._failing:
                log.warning("discovery: ListRooms failed (%s); retrying every interval", exc)
            self._failing = True
            return None
        if self._failing:
            log.info("discovery: ListRooms answers again")
            self._failing = False
        if self.closed:
            return None
        sessions = self._supervisor.sessions
        lost = {room for room, s in sessions.items() if s.ended is not None and s.ended.ownership_lost}
        decided = plan(
            existing=existing,
            running=self._running(),
            established=established,
            lost=lost,
            owns=self.owns,
            auto_join=self._settings.auto_join,
        )
        for room in sorted(decided.join):
            log.info("discovery: joining room=%s (listed by LiveKit)", room)
            self._supervisor.join(room)
        for room in sorted(decided.leave):
            log.info("discovery: leaving room=%s (no longer listed, or not ours)", room)
            self._supervisor.leave(room)
        self.stats.reconciliations += 1
        self.stats.joins += len(decided.join)
        self.stats.leaves += len(decided.leave)
        return decided

    async def _poll(self, interval_s: float) -> None:
        while True:
            await self.reconcile()
            await asyncio.sleep(interval_s)

    def _running(self) -> set[str]:
        # A session already leaving counts as gone: the room may be joined again once it has left.
        return {
            room
            for room, s in self._supervisor.sessions.items()
            if s.ended is None and s.state not in _LEAVING
        }
