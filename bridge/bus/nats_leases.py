"""Room ownership with JetStream KV leases (``ownership.mode: nats``).

One bucket (``ownership.bucket``: ``history=1``, ``ttl`` = ``ownership.lease_ttl_s``, limit markers on),
two kinds of keys:

- ``room.<room>``: a room's lease. The value is the holder's replica id; the KV revision of the holder's
  last write is the **fencing token**. Claimed with a compare-and-set write on the revision last seen
  (0 for a key never written; the revision of the delete or expiry marker otherwise: nats-py's
  ``create()`` does not recognise the server's MaxAge marker), renewed every TTL/3 with a
  compare-and-set update, released with a compare-and-set delete. A refused renewal means another
  replica holds the room now: the room is handed over at once.
- ``member.<replica>``: presence, rewritten every renewal; the live members set the fair share
  (:func:`bridge.rooms.ownership.fair_share`).

A watcher on the whole bucket keeps the local view current, so an expired lease (the server writes a
marker about TTL + 0.25 s after the last renewal) is claimed as soon as it is seen, not at the next
tick. Claims wait one renewal interval after start, so replicas starting together see each other
before taking rooms.

nats-py exceptions stop here: a broker that does not answer is retried every interval (``BusUnavailable``
is logged once per outage); a lease that could not be renewed for its whole TTL counts as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from bridge.bus.base import unavailable
from bridge.bus.nats import auth_options
from bridge.config import NatsSettings, OwnershipSettings
from bridge.errors import BusError, OwnershipLost
from bridge.rooms import ownership as pure
from bridge.rooms.ownership import Lease, LeaseEvent, LeaseState
from bridge.rooms.room_events import RoomEvents
from bridge.rooms.sharding import Ownership, default_replica_id
from bridge.rooms.supervisor import RoomSupervisor

__all__ = ["NatsLeaseOwnership", "default_replica_id"]

log = logging.getLogger("bridge.bus.nats_leases")

_NATS_ERRORS: Final = (nats.errors.Error, OSError, TimeoutError)
_DELETED: Final = ("DEL", "PURGE")
RETRY_S: Final = 1.0
STALE_TTLS: Final = 1.2  # leases without a renewal after which a holder counts as gone


class NatsLeaseOwnership(Ownership):
    """See the module docstring."""

    mode = "nats"

    def __init__(
        self,
        supervisor: RoomSupervisor,
        *,
        nats_settings: NatsSettings,
        settings: OwnershipSettings,
        candidates: Iterable[str],
        events: RoomEvents | None = None,
    ) -> None:
        super().__init__(
            supervisor,
            candidates=candidates,
            handover_timeout_s=settings.handover_timeout_s,
            replica=settings.replica_id,
            events=events,
        )
        self._nats = nats_settings
        self._settings = settings
        self.ttl_s = settings.lease_ttl_s
        self.renew_interval_s = self.ttl_s / 3
        self.leases: dict[str, Lease] = {}
        # The bucket as the watcher last saw it: key -> (holder or None when free, revision).
        self._view: dict[str, tuple[str | None, int]] = {}
        # When each key was last written, by our clock: a holder that has not renewed for longer than
        # STALE_TTLS leases is treated as gone even if the server's expiry marker has not reached us
        # (a claim is still a compare-and-set on the revision we saw, so a live holder wins).
        self._written_at: dict[str, float] = {}
        self._nc: Any = None  # nats-py is untyped at this boundary
        self._kv: KeyValue | None = None
        self._watcher: Any = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._started_at = 0.0
        self._failing = False

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        super().start()
        self._task = asyncio.create_task(self._run(), name="nats-leases")

    async def release_all(self) -> None:
        """SIGTERM: stop claiming, delete our leases and presence so others claim at once."""
        await self._cancel(self._task)
        self._task = None
        held = [lease for lease in self.leases.values() if lease.held]
        for lease in held:
            await self._release(lease)
        self.change(frozenset(), "shutting down")
        if self._kv is not None:
            with contextlib.suppress(*_NATS_ERRORS):
                await self._kv.delete(pure.member_key(self.replica))
        if held:
            log.info("nats leases: released %d leases for handover", len(held))

    async def aclose(self) -> None:
        await super().aclose()
        await self._cancel(self._task)
        await self._cancel(self._watch_task)
        self._task = self._watch_task = None
        if self._watcher is not None:
            with contextlib.suppress(*_NATS_ERRORS):
                await self._watcher.stop()
        nc, self._nc, self._kv = self._nc, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(*_NATS_ERRORS):
                await nc.close()

    def report(self) -> dict[str, Any]:
        out = super().report()
        out["replica"] = self.replica
        out["tokens"] = {room: lease.revision for room, lease in self.leases.items() if lease.held}
        return out

    def owns(self, room: str) -> bool:
        lease = self.leases.get(room)
        return lease is not None and lease.held and time.monotonic() < lease.expires_at

    def owner_of(self, room: str) -> str | None:
        """The replica holding ``room``'s lease: this one while :meth:`owns`, else the holder the bucket
        watcher last saw, if that write is fresh (within STALE_TTLS leases); None: no live holder known."""
        if self.owns(room):
            return self.replica
        key = pure.lease_key(room)
        holder, _ = self._view.get(key, (None, 0))
        if holder is None or holder == self.replica:
            return None  # free, or our own lease that we no longer hold
        now = time.monotonic()
        if self._written_at.get(key, now) < now - STALE_TTLS * self.ttl_s:
            return None
        return holder

    def consider(self, room: str) -> bool:
        new = room not in self.candidates
        ours = super().consider(room)
        if new and not self.closing:
            self._wake.set()  # a new candidate: plan claims now rather than at the next renewal
        return ours

    def fencing_token(self, room: str) -> int:
        """The revision of our lease on ``room``; OwnershipLost if we do not hold it."""
        if not self.owns(room):
            raise OwnershipLost(f"room {room!r}: no lease held by {self.replica}")
        return self.leases[room].revision

    def token_of(self, room: str) -> int:
        # Also after a release or loss: the lease keeps the revision it last had (our last write).
        lease = self.leases.get(room)
        return lease.revision if lease is not None else 0

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self.closing:
            # Cleared before the tick, not after: a wake-up that arrives while the tick runs (a lease
            # expiring mid-tick) must start the next tick at once, not be lost for a renewal interval.
            self._wake.clear()
            try:
                if self._kv is None:
                    await self._connect()
                    self._started_at = time.monotonic()
                await self._tick()
                if self._failing:
                    log.info("nats leases: the bucket answers again")
                    self._failing = False
            except BusError as exc:
                if not self._failing:
                    log.warning("nats leases: %s; retrying every %.1fs", exc, RETRY_S)
                self._failing = True
                self._expire(time.monotonic())
            with contextlib.suppress(TimeoutError):
                delay = RETRY_S if self._failing else min(self.renew_interval_s, self._until_stale())
                await asyncio.wait_for(self._wake.wait(), delay)

    def _until_stale(self) -> float:
        """Seconds until another replica's key turns stale (then its rooms may be claimed), at least 50 ms:
        a dead holder is noticed then, not up to a renewal interval later."""
        horizon = STALE_TTLS * self.ttl_s
        now = time.monotonic()
        pending = [
            written + horizon - now
            for key, written in self._written_at.items()
            if (holder := self._view.get(key, (None, 0))[0]) is not None and holder != self.replica
        ]
        future = [left for left in pending if left > 0]
        return max(0.05, min(future, default=self.renew_interval_s))

    async def _connect(self) -> None:
        s = self._nats
        try:
            nc = await nats.connect(
                name="livekit-bus-bridge-ownership",
                **auth_options(s),
                connect_timeout=5.0,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
            )
        except _NATS_ERRORS as exc:
            raise unavailable("nats", "ownership: cannot connect", exc) from exc
        try:
            js = nc.jetstream(timeout=5.0)
            bucket = self._settings.bucket
            try:
                kv = await js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                kv = await js.create_key_value(
                    KeyValueConfig(bucket=bucket, history=1, ttl=self.ttl_s, limit_marker_ttl=self.ttl_s)
                )
                log.info("nats leases: created bucket %s (lease ttl %.1fs)", bucket, self.ttl_s)
            self._watcher = await kv.watchall()
        except _NATS_ERRORS as exc:
            with contextlib.suppress(*_NATS_ERRORS):
                await nc.close()
            raise unavailable("nats", "ownership: cannot open the lease bucket", exc) from exc
        self._nc, self._kv = nc, kv
        self._watch_task = asyncio.create_task(self._watch(), name="nats-leases-watch")
        log.info("nats leases: replica %s on bucket %s", self.replica, self._settings.bucket)

    async def _watch(self) -> None:
        async for entry in self._watcher:
            if entry is None:
                continue  # the end of the initial values
            holder = None if entry.operation in _DELETED or not entry.value else entry.value.decode()
            self._view[entry.key] = (holder, entry.revision or 0)
            self._written_at[entry.key] = time.monotonic()
            room = pure.room_of_lease_key(entry.key)
            lease = self.leases.get(room) if room is not None else None
            if (
                lease is not None
                and lease.held
                and holder != self.replica
                and entry.revision > lease.revision
            ):
                self._lost(lease, "the lease was written by another replica or expired")
            if holder is None and not self.closing:
                self._wake.set()  # a room or a member gone: claim now, not at the next tick

    async def _tick(self) -> None:
        kv = self._kv
        assert kv is not None
        now = time.monotonic()
        await self._call(kv.put(pure.member_key(self.replica), self.replica.encode()), "presence")
        for lease in list(self.leases.values()):
            if lease.renew_due(now, self.renew_interval_s * 0.9):
                await self._renew(lease)
        self._expire(time.monotonic())
        if now - self._started_at < self.renew_interval_s:
            return  # let replicas starting together see each other first
        held = {room for room, lease in self.leases.items() if lease.state is not LeaseState.FREE}
        live = self._live_view(time.monotonic())
        taken = {
            room
            for key, holder in live.items()
            if holder != self.replica and (room := pure.room_of_lease_key(key))
        }
        members = {holder for key, holder in live.items() if key.startswith(pure.MEMBER_PREFIX)}
        plan = pure.plan_claims(
            replica=self.replica,
            candidates=self.candidates,
            held=held,
            taken=taken,
            members=len(members | {self.replica}),
            capacity=self._settings.capacity,
        )
        for room in plan.release:
            await self._release(self.leases[room])
        for room in plan.claim:
            await self._claim(room)
        self._publish("lease change")
        self.settled = True

    def _live_view(self, now: float) -> dict[str, str]:
        """Key -> holder for every key written within STALE_TTLS leases (others are expired or dying)."""
        horizon = now - STALE_TTLS * self.ttl_s
        return {
            key: holder
            for key, (holder, _) in self._view.items()
            if holder is not None and self._written_at.get(key, now) >= horizon
        }

    # -- one lease -----------------------------------------------------------------------------

    async def _claim(self, room: str, *, retry: bool = True) -> None:
        kv = self._kv
        assert kv is not None
        lease = self.leases.setdefault(room, Lease(room))
        key = pure.lease_key(room)
        _, last = self._view.get(key, (None, 0))
        lease.apply(LeaseEvent.CLAIM)
        try:
            revision = await self._call(kv.update(key, self.replica.encode(), last=last), "claim")
        except BusError:
            lease.apply(LeaseEvent.CLAIM_FAILED)
            raise
        except nats.js.errors.KeyWrongLastSequenceError:
            lease.apply(LeaseEvent.CLAIM_FAILED)
            await self._refresh(key)
            if retry and self._view.get(key, (None, 0))[0] is None:
                # The expiry marker was newer than our view (it had not reached the watcher yet): the
                # room is free, so claim it now rather than a renewal interval later.
                await self._claim(room, retry=False)
            elif not self.closing:
                self._wake.set()  # another replica won it: claim another room now, not at the next tick
            return
        lease.apply(LeaseEvent.CLAIMED, now=time.monotonic(), revision=revision, ttl_s=self.ttl_s)
        log.debug("nats leases: claimed room=%s token=%d", room, revision)

    async def _renew(self, lease: Lease) -> None:
        kv = self._kv
        assert kv is not None
        lease.apply(LeaseEvent.RENEW)
        started = time.monotonic()
        try:
            revision = await self._call(
                kv.update(pure.lease_key(lease.room), self.replica.encode(), last=lease.revision), "renew"
            )
        except BusError:
            lease.apply(LeaseEvent.RENEW_FAILED)
            raise
        except nats.js.errors.KeyWrongLastSequenceError:
            self._lost(lease, "renewal refused: another replica holds it")
            return
        if lease.state is LeaseState.RENEWING:
            lease.apply(LeaseEvent.RENEWED, now=started, revision=revision, ttl_s=self.ttl_s)

    async def _release(self, lease: Lease) -> None:
        kv = self._kv
        if kv is None or not lease.held:
            return
        if lease.state is LeaseState.RENEWING:
            lease.apply(LeaseEvent.RENEW_FAILED)
        lease.apply(LeaseEvent.RELEASE)
        # On failure it expires on its own, or somebody else holds it already.
        with contextlib.suppress(BusError, nats.js.errors.KeyWrongLastSequenceError):
            await self._call(kv.delete(pure.lease_key(lease.room), last=lease.revision), "release")
        if lease.state is LeaseState.RELEASING:
            lease.apply(LeaseEvent.RELEASED)

    async def _refresh(self, key: str) -> None:
        """After a refused claim: learn the key's real revision (its marker may have been removed)."""
        kv = self._kv
        assert kv is not None
        try:
            entry = await self._call(kv.get(key), "read")
        except nats.js.errors.KeyNotFoundError as exc:
            found = exc.entry
            self._view[key] = (None, found.revision if found is not None else 0)
            return
        holder = entry.value.decode() if entry.value else None
        self._view[key] = (holder, entry.revision or 0)
        self._written_at[key] = time.monotonic()

    def _lost(self, lease: Lease, why: str) -> None:
        if lease.held or lease.state is LeaseState.RELEASING:
            lease.apply(LeaseEvent.LOST)
            log.info("nats leases: lost room=%s (%s)", lease.room, why)
            self._publish("lease lost")
            if not self.closing:
                self._wake.set()  # short of the fair share now (a claim race): plan again at once

    def _expire(self, now: float) -> None:
        for lease in self.leases.values():
            if lease.expired(now):
                self._lost(lease, "not renewed within its ttl")

    def _publish(self, why: str) -> None:
        self.change(frozenset(room for room, lease in self.leases.items() if lease.held), why)

    async def _call(self, op: Any, what: str) -> Any:
        try:
            return await op
        except nats.js.errors.KeyWrongLastSequenceError:
            raise
        except nats.js.errors.KeyNotFoundError:
            raise
        except _NATS_ERRORS as exc:
            raise unavailable("nats", f"ownership {what} failed", exc) from exc

    @staticmethod
    async def _cancel(task: asyncio.Task[None] | None) -> None:
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
