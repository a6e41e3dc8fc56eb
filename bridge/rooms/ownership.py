"""Which rooms this replica runs when several share the work: the decisions, pure.

Three modes (``ownership.mode``):

- ``static``: every configured or discovered room is ours (one replica, or rooms split by hand).
- ``kafka``: the consumer group of the commands topic decides. A room belongs to the partition Kafka's
  default partitioner (murmur2 of the room name) picks, and a replica owns the rooms of the partitions it
  is assigned. :func:`rooms_in` filters candidates by assignment; :func:`handover` says what an assignment
  change means for the rooms running here.
- ``nats``: one JetStream KV lease per room. :class:`Lease` is the per-room state machine (one
  :class:`LeaseState` enum, one transition table, illegal transitions raise
  :class:`~bridge.errors.InvalidState`); the lease's KV revision is its fencing token. :func:`plan_claims`
  decides which free rooms to claim and which held ones to give back, bounded by a fair share of the
  candidates over the live replicas and by ``ownership.capacity``.

In every mode LiveKit's duplicate-identity rule is the last fence: the newest join with our identity
evicts the older session, whose room then ends with ``ownership_lost``. So a handover is
make-before-break: the new owner joins first, and the old owner keeps its socket until that join evicts
it (or ``ownership.handover_timeout_s`` passes).

Nothing here touches asyncio, sockets, clocks or brokers: time comes in as ``now`` arguments, and the
partition function is passed in (the Kafka adapter supplies murmur2).
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass
from typing import Final

from bridge.errors import InvalidState

__all__ = [
    "Claims",
    "Handover",
    "Lease",
    "LeaseEvent",
    "LeaseState",
    "fair_share",
    "handover",
    "lease_key",
    "member_key",
    "plan_claims",
    "preference",
    "room_of_lease_key",
    "rooms_in",
]

PartitionOf = Callable[[str, int], int]  # (room, partition count) -> partition

LEASE_PREFIX: Final = "room."
MEMBER_PREFIX: Final = "member."
_KEY_SAFE: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


# ---------------------------------------------------------------------------------------------- kafka


def rooms_in(
    candidates: Iterable[str], partitions: Set[int], partition_count: int, partition_of: PartitionOf
) -> frozenset[str]:
    """The candidate rooms whose partition is in ``partitions`` (none while the topic has no partitions)."""
    if partition_count <= 0 or not partitions:
        return frozenset()
    return frozenset(r for r in candidates if partition_of(r, partition_count) in partitions)


@dataclass(frozen=True, slots=True)
class Handover:
    """What an ownership change means here: join ``gained`` now; ``lost`` rooms keep their socket until
    the new owner's join evicts them, or the handover timeout passes."""

    gained: frozenset[str]
    lost: frozenset[str]


def handover(before: Set[str], after: Set[str]) -> Handover:
    return Handover(gained=frozenset(after - before), lost=frozenset(before - after))


# ----------------------------------------------------------------------------------------------- nats


def lease_key(room: str) -> str:
    """The KV key of a room's lease: ``room.`` plus the name, every byte outside ``[A-Za-z0-9_-]`` written
    ``=XX`` (KV keys allow ``=`` but not ``%``, and a ``.`` would split the key into tokens)."""
    encoded = "".join(ch if ch in _KEY_SAFE else "".join(f"={b:02X}" for b in ch.encode()) for ch in room)
    return LEASE_PREFIX + encoded


def room_of_lease_key(key: str) -> str | None:
    """The inverse of :func:`lease_key`; None for a key that is not a room lease."""
    if not key.startswith(LEASE_PREFIX):
        return None
    raw = key[len(LEASE_PREFIX) :]
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == "=":
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out += raw[i].encode()
            i += 1
    return out.decode()


def member_key(replica: str) -> str:
    """The KV key a live replica renews to be counted in the fair share."""
    return MEMBER_PREFIX + lease_key(replica)[len(LEASE_PREFIX) :]


class LeaseState(enum.Enum):
    FREE = "free"  # not ours (nobody's, or another replica's)
    CLAIMING = "claiming"  # compare-and-set create in flight
    HELD = "held"  # ours; ``revision`` is the fencing token
    RENEWING = "renewing"  # compare-and-set update in flight
    RELEASING = "releasing"  # compare-and-set delete in flight


class LeaseEvent(enum.Enum):
    CLAIM = "claim"
    CLAIMED = "claimed"  # the CAS won
    CLAIM_FAILED = "claim_failed"  # somebody else won, or the broker failed
    RENEW = "renew"
    RENEWED = "renewed"
    RENEW_FAILED = "renew_failed"  # the broker did not answer: still ours until the lease would expire
    LOST = "lost"  # a renewal CAS was refused, the key expired, or another owner wrote it
    RELEASE = "release"
    RELEASED = "released"


_S, _E = LeaseState, LeaseEvent
TRANSITIONS: Final[Mapping[LeaseState, Mapping[LeaseEvent, LeaseState]]] = {
    _S.FREE: {_E.CLAIM: _S.CLAIMING},
    _S.CLAIMING: {_E.CLAIMED: _S.HELD, _E.CLAIM_FAILED: _S.FREE},
    _S.HELD: {_E.RENEW: _S.RENEWING, _E.RELEASE: _S.RELEASING, _E.LOST: _S.FREE},
    _S.RENEWING: {_E.RENEWED: _S.HELD, _E.RENEW_FAILED: _S.HELD, _E.LOST: _S.FREE},
    _S.RELEASING: {_E.RELEASED: _S.FREE, _E.LOST: _S.FREE},
}


class Lease:
    """One room's lease as this replica sees it. Feed it events with :meth:`apply`; ``now`` is seconds on
    any monotonic clock."""

    __slots__ = ("expires_at", "renewed_at", "revision", "room", "state")

    def __init__(self, room: str) -> None:
        self.room = room
        self.state = LeaseState.FREE
        self.revision = 0  # the fencing token while held; the last revision seen otherwise
        self.renewed_at = 0.0
        self.expires_at = 0.0

    @property
    def held(self) -> bool:
        """Ours for commands and sessions: held, or held while a renewal is in flight."""
        return self.state in (LeaseState.HELD, LeaseState.RENEWING)

    def apply(self, event: LeaseEvent, *, now: float = 0.0, revision: int = 0, ttl_s: float = 0.0) -> None:
        """Move to the next state; ``revision`` and ``ttl_s`` come with CLAIMED and RENEWED."""
        nxt = TRANSITIONS[self.state].get(event)
        if nxt is None:
            raise InvalidState(f"lease {self.room!r}: {event.value} not allowed in state {self.state.value}")
        if event in (LeaseEvent.CLAIMED, LeaseEvent.RENEWED):
            self.revision = revision
            self.renewed_at = now
            self.expires_at = now + ttl_s
        self.state = nxt

    def renew_due(self, now: float, interval_s: float) -> bool:
        return self.state is LeaseState.HELD and now - self.renewed_at >= interval_s

    def expired(self, now: float) -> bool:
        """True once a held lease has gone unrenewed for its whole TTL: the server may have handed it on."""
        return self.held and now >= self.expires_at


def fair_share(candidates: int, members: int, capacity: int | None = None) -> int:
    """How many rooms one replica should hold: ceil(candidates / members), at most ``capacity``."""
    share = math.ceil(candidates / max(1, members))
    return share if capacity is None else min(share, capacity)


def preference(replica: str, room: str) -> int:
    """Rendezvous score: each replica prefers different free rooms, so claims rarely race."""
    return int.from_bytes(hashlib.blake2b(f"{replica}\x00{room}".encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class Claims:
    claim: tuple[str, ...]
    release: tuple[str, ...]


def plan_claims(
    *,
    replica: str,
    candidates: Set[str],
    held: Set[str],
    taken: Set[str],
    members: int,
    capacity: int | None = None,
) -> Claims:
    """Which free rooms to claim and which held rooms to give back.

    - ``candidates``: the rooms that should run somewhere;
    - ``held``: the rooms whose lease this replica holds (or is claiming);
    - ``taken``: rooms whose lease another replica holds;
    - ``members``: live replicas, this one included.

    Claim free candidates, in this replica's rendezvous order, up to the fair share. Release held rooms
    beyond the fair share (a new replica arrived), the least preferred first, and held rooms that are no
    longer candidates.
    """
    target = fair_share(len(candidates), members, capacity)
    gone = sorted(held - candidates)
    keep = held & candidates
    free = sorted(candidates - held - taken, key=lambda r: preference(replica, r), reverse=True)
    claim = tuple(free[: max(0, target - len(keep))])
    release = list(gone)
    if len(keep) > target:
        release += sorted(keep, key=lambda r: preference(replica, r))[: len(keep) - target]
    return Claims(claim=claim, release=tuple(release))
