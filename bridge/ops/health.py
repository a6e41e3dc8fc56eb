"""What ``/readyz`` says: is this bridge doing its job right now, and if not, what is missing.

Ready means all of:

- every configured bus publisher is connected (``Publisher.connected``);
- every command source is ready (subscribed; for Kafka, partitions assigned);
- the start-up joins have settled: each ``rooms.static`` room has joined once or has ended. This one
  latches: once settled, a room that later reconnects does not make the bridge unready (its own events
  say so), and a room that is gone for good does not either;
- room ownership has settled (``ownership.mode`` kafka: a partition assignment is in place, not a
  rebalance; nats: the first claim round is done);
- the bridge is not stopping.

``/livez`` needs nothing from here: answering at all proves the event loop runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol

from bridge.bus.base import Publisher
from bridge.bus.command_source import CommandSource
from bridge.rooms.supervisor import RoomSupervisor

__all__ = ["Readiness"]

MAX_ROOMS_NAMED: Final = 5  # a /readyz body names a few waiting rooms, not thousands


class OwnershipState(Protocol):
    @property
    def mode(self) -> str: ...
    @property
    def settled(self) -> bool: ...


class Readiness:
    """The readiness checks over the bridge's live objects; :meth:`problems` is empty when ready."""

    def __init__(
        self,
        *,
        publishers: Sequence[Publisher],
        command_sources: Sequence[CommandSource],
        supervisor: RoomSupervisor,
        static_rooms: Sequence[str],
        ownership: OwnershipState | None = None,
    ) -> None:
        self._ownership = ownership
        self._publishers = publishers
        self._sources = command_sources
        self._supervisor = supervisor
        self._static = tuple(static_rooms)
        self._rooms_settled = not self._static
        self.stopping = False

    def problems(self) -> list[str]:
        out: list[str] = []
        if self.stopping:
            out.append("stopping")
        out += [f"bus {p.name}: not connected" for p in self._publishers if not p.connected]
        out += [f"commands {s.name}: not subscribed" for s in self._sources if not s.ready]
        if self._ownership is not None and not self._ownership.settled:
            out.append(f"ownership ({self._ownership.mode}): not settled")
        if not self._rooms_settled:
            waiting = [room for room in self._static if not self._settled(room)]
            if waiting:
                named = ", ".join(waiting[:MAX_ROOMS_NAMED]) + (
                    " ..." if len(waiting) > MAX_ROOMS_NAMED else ""
                )
                out.append(
                    f"rooms: {len(waiting)} of {len(self._static)} static rooms not joined yet ({named})"
                )
            else:
                self._rooms_settled = True
        return out

    def _settled(self, room: str) -> bool:
        session = self._supervisor.sessions.get(room)
        if session is None:
            return False
        return bool(session.participant_sid) or session.ended is not None or room in self._supervisor.outcomes
