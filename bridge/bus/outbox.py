"""The bounded queue between the rooms and one bus, and the fan-out to every bus.

:class:`Outbox` holds at most ``capacity`` events for one :class:`~bridge.bus.base.Publisher` and owns ONE
background task that drains them in batches of up to ``max_batch`` per ``publish_batch`` call:

- a **retriable** failure (the bus is down) puts the batch back at the head of the queue, where it stays
  counted against ``capacity``, and the task tries again after a capped exponential backoff;
- a **non-retriable** failure (the broker refused the records) drops that batch: counted, logged, and
  reported through ``on_drop`` so the room can emit a ``gap`` event;
- when the queue is full, ``overflow="block"`` makes :meth:`Outbox.put` wait for room (the caller is a
  room's reader, which may block), and ``overflow="drop_oldest"`` evicts the oldest queued events at once,
  counts them and reports them through ``on_drop`` (never waits, so a dead bus cannot stall the room).

An outage is logged once when it starts and once when it ends (with how many events were delayed and
dropped), never once per event or per retry. Order: a batch that is retried goes back in front of
everything queued after it, so each room's events leave in the order they were put (delivery is
at-least-once across a retry: a batch that timed out may have reached the broker).

Pacing: batches start at most every ``batch_interval_s`` (a full batch of ``max_batch`` events goes at
once). Sending whatever is queued the moment the previous batch is confirmed would, at a few thousand
events per second, mean one broker request and one flush round trip per one or two events: CPU in the
bridge and in the broker that a 2-core host then lacks for everything else, latency included. A couple of
milliseconds of gathering is cheaper than that.

Pipelining: a publisher that can hand a batch over before it is confirmed (``submit_batch``, see
:class:`~bridge.bus.base.Pipelined`) gets up to ``max_in_flight`` batches in flight, handed over in order
and settled in order. Events that arrive while a batch waits for its acknowledgement then leave after the
next ``batch_interval_s`` instead of after that round trip. Once a batch has failed, nothing new is handed
over; the outbox waits for the batches before and after it, then puts the failed one and every later one
back at the head of the queue (they may have landed: at-least-once, in order) and retries with one batch in
flight until one succeeds. The publisher must keep overlapping batches in order and fail a batch whose
fate is unknown (core NATS: one connection, and a lost connection fails every unconfirmed PING). Kafka
and JetStream keep one batch in flight. A confirmed batch is settled in its confirmation's done callback
(:func:`~bridge.bus.base.confirmation`): on a loop busy with thousands of frames a second, each task
wake-up between the broker's answer and the bookkeeping is another pass through the ready queue, and the
next batch waits for it (5,000 events/s, five interleaved pairs: NATS put -> confirmed p99 median 7.9 ms
against 14.1).

Added latency: the outbox stamps each event (``time.monotonic()``, in a deque parallel to the queue, so the
CloudEvent is untouched) when it is put -- :class:`EventFanout` takes one stamp per event for every bus,
and a ``block`` put that has to wait keeps the stamp of its first attempt -- and, when the broker confirms
the batch, counts ``now - stamp`` per event into ``Outbox.latency``, a :class:`LatencyHistogram` of fixed
log-spaced buckets (counts only, no per-event growth). A retried batch keeps its stamps; dropped events
are not counted.

:class:`EventFanout` puts each event into every outbox; only ``block`` outboxes can make it wait, and only
until that bus has room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from bridge.bus.base import Pipelined, Publisher
from bridge.errors import BusError, BusUnavailable
from bridge.events.cloudevent import CloudEvent

__all__ = ["EventFanout", "LatencyHistogram", "Outbox", "OutboxClosed", "OutboxStats", "Overflow"]

Overflow = Literal["block", "drop_oldest"]
OnDrop = Callable[[str, list[CloudEvent]], None]

log = logging.getLogger("bridge.bus.outbox")

_JITTER: Final = 0.2  # backoff delays are scaled by a random factor in [0.8, 1.0]


class LatencyHistogram:
    """Durations (seconds) counted in fixed log-spaced buckets: bounded memory, O(1) per sample.

    Bucket 0 holds durations ``<= low_s``; bucket ``i`` holds ``(low_s * r**(i-1), low_s * r**i]`` with
    ``r = 10 ** (1 / per_decade)``; the last bucket also takes everything above ``high_s``. The defaults
    (1 µs .. 100 s, 20 per decade: 162 buckets) resolve a percentile to within +12 % (a bucket's upper
    bound is reported, capped at the largest duration seen: an over-estimate, never an under-estimate).
    """

    __slots__ = ("_counts", "_k", "_low", "_ratio", "count", "max_s", "total_s")

    def __init__(self, *, low_s: float = 1e-6, high_s: float = 100.0, per_decade: int = 20) -> None:
        if not 0 < low_s < high_s or per_decade < 1:
            raise ValueError("need 0 < low_s < high_s and per_decade >= 1")
        self._low = low_s
        self._k = per_decade / math.log(10)  # bucket index per unit of ln(d / low_s)
        self._ratio = 10 ** (1 / per_decade)
        self._counts = [0] * (math.ceil(math.log10(high_s / low_s) * per_decade) + 2)
        self.count = 0
        self.max_s = 0.0
        self.total_s = 0.0

    def record(self, seconds: float) -> None:
        self.record_since(seconds, (0.0,))

    def record_since(self, now: float, stamps: Iterable[float]) -> None:
        """Count ``now - t`` for every ``t`` in ``stamps`` (one call per published batch)."""
        counts, low, k, last, log = self._counts, self._low, self._k, len(self._counts) - 1, math.log
        n, total, top = 0, 0.0, self.max_s
        for t in stamps:
            d = now - t
            if d > low:
                i = int(log(d / low) * k) + 1
                counts[i if i < last else last] += 1
            else:
                counts[0] += 1
            total += d
            top = max(top, d)
            n += 1
        self.count += n
        self.total_s += total
        self.max_s = top

    def percentile(self, p: float) -> float:
        """The duration (seconds) that ``p`` % of the samples do not exceed; 0.0 with no samples."""
        if not 0 <= p <= 100:
            raise ValueError("p must be within [0, 100]")
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(p / 100 * self.count))  # the rank-th smallest sample (1-based)
        seen, last = 0, len(self._counts) - 1
        for i, c in enumerate(self._counts):
            seen += c
            if seen >= rank:
                return self.max_s if i == last else min(self.max_s, self._low * self._ratio**i)
        return self.max_s  # unreachable: the counts add up to count

    def cumulative(self, bounds: Sequence[float]) -> list[int]:
        """For each of the ascending ``bounds`` (seconds): how many samples fell in buckets that end at or
        below it (Prometheus ``le`` buckets). A bound inside a bucket leaves that bucket to the next bound,
        so a count may be low by one bucket's width (<12 %), never high."""
        out, seen, i, last = [], 0, 0, len(self._counts) - 1
        for bound in bounds:
            # Bucket i ends at low * ratio**i (the last one never ends); the epsilon absorbs rounding.
            while i < last and self._low * self._ratio**i <= bound * (1 + 1e-9):
                seen += self._counts[i]
                i += 1
            out.append(seen)
        return out

    @property
    def mean_s(self) -> float:
        return self.total_s / self.count if self.count else 0.0

    def reset(self) -> None:
        self._counts = [0] * len(self._counts)
        self.count = 0
        self.max_s = 0.0
        self.total_s = 0.0


@dataclass(slots=True)
class _Flight:
    """A batch handed to the publisher, and what settles it."""

    events: list[CloudEvent]
    stamps: list[float]
    confirmed: asyncio.Future[None]

    def failure(self, bus: str) -> BaseException | None:
        if self.confirmed.cancelled():
            return BusUnavailable(f"{bus}: publish cancelled")
        return self.confirmed.exception()


class OutboxClosed(BusError):
    """``put`` after ``aclose``: the bridge is shutting down."""


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """A snapshot of one outbox's counters (``queued`` includes the batches being published)."""

    bus: str
    queued: int
    capacity: int
    published: int
    dropped: int
    retries: int
    batches: int
    failed_batches: int
    outage: bool
    last_error: str | None
    latency_count: int  # events whose put -> broker-confirmed time was counted
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float


class Outbox:
    """A bounded queue in front of one publisher, drained by one owned background task.

    The outbox never starts or closes its publisher: whoever built the publisher owns it. A publisher that
    failed to start is fine: its ``publish_batch`` raises BusUnavailable and the outbox retries.
    """

    def __init__(
        self,
        publisher: Publisher,
        *,
        capacity: int,
        overflow: Overflow,
        on_drop: OnDrop,
        on_recover: Callable[[str], None] | None = None,
        max_batch: int = 500,
        batch_interval_s: float = 0.0,
        max_in_flight: int = 1,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        if capacity < 2:
            raise ValueError("capacity must be at least 2")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if overflow not in ("block", "drop_oldest"):
            raise ValueError("overflow must be 'block' or 'drop_oldest'")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if not 0 <= batch_interval_s <= 1:
            raise ValueError("batch_interval_s must be within [0, 1]")
        if not 0 < retry_initial_s <= retry_max_s:
            raise ValueError("need 0 < retry_initial_s <= retry_max_s")
        self.publisher = publisher
        self.bus = publisher.name
        self.capacity = capacity
        self.overflow: Overflow = overflow
        # A batch in flight is at most capacity - 1 events, so a full outbox always has a queued event that
        # drop_oldest can evict (events being published cannot be taken back).
        self.max_batch = min(max_batch, capacity - 1)
        self.batch_interval_s = batch_interval_s
        # A Pipelined publisher's batches are settled in their confirmation's done callback (no task per
        # batch); more than one in flight only where it keeps overlapping batches in order.
        pipelined = publisher if isinstance(publisher, Pipelined) else None
        self._submit = pipelined.submit_batch if pipelined is not None else None
        self.max_in_flight = max_in_flight if pipelined is not None and pipelined.pipelining else 1
        self._batch_started = -math.inf
        self._on_drop = on_drop
        # Called after a successful batch once the outbox is neither down nor overflowing: the moment
        # to report dropped events (reporting while full would evict more events, in a loop).
        self._on_recover = on_recover
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._log = logger if logger is not None else log

        self._queue: deque[CloudEvent] = deque()
        self._stamps: deque[float] = deque()  # time.monotonic() at put, parallel to _queue
        self.latency = LatencyHistogram()  # put -> broker-confirmed, per published event
        self._in_flight = 0  # events in self._flights
        # id(event) -> futures of settled(event); the event is referenced by the queue or a flight
        # while it is here, so its id cannot be reused before the futures are resolved.
        self._watchers: dict[int, list[asyncio.Future[None]]] = {}
        self._attempt = 0  # failed attempts in a row (the backoff's exponent); 0 after any success
        self._flights: deque[_Flight] = deque()  # oldest first
        self._handing: list[CloudEvent] = []  # the batch _launch is handing over (in no flight yet)
        self._not_full = asyncio.Event()
        self._not_full.set()
        self._closing = asyncio.Event()
        # Wakes the task: the queue stopped being empty or holds a full batch, a flight settled, closing.
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

        self.published = self.dropped = self.retries = self.batches = self.failed_batches = 0
        self.last_error: str | None = None
        # Outage bookkeeping, for the one log line at each end.
        self._outage_since: float | None = None
        self._outage_delayed = 0
        self._outage_dropped_before = 0
        self._overflowing = False
        self._overflow_dropped_before = 0

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background task (idempotent)."""
        if self._closed:
            raise OutboxClosed(f"{self.bus}: outbox is closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"outbox-{self.bus}")

    async def aclose(self, flush_deadline_s: float = 5.0) -> None:
        """Stop accepting events, publish what is queued until the deadline, then stop the task.

        Events still queued at the deadline are dropped: counted, logged and reported through ``on_drop``.
        """
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._wake.set()
        self._not_full.set()  # wake blocked putters: they raise OutboxClosed
        task, self._task = self._task, None
        if task is not None:
            try:
                async with asyncio.timeout(flush_deadline_s):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._queue:
            left = list(self._queue)
            self._queue.clear()
            self._stamps.clear()
            self._log.warning(
                "bus %s: %d events not published before the shutdown deadline; dropped", self.bus, len(left)
            )
            self._drop(left)

    # -- producing -----------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Events held: queued plus the batches being published."""
        return len(self._queue) + self._in_flight

    def put_nowait(self, event: CloudEvent, enqueued_at: float | None = None) -> bool:
        """Queue ``event`` if that needs no waiting; False only for a full ``block`` outbox.

        ``enqueued_at`` (``time.monotonic()``, default now) is where its added latency starts.
        """
        if self._closed:
            raise OutboxClosed(f"{self.bus}: outbox is closed")
        if self.size >= self.capacity:
            if self.overflow == "block":
                self._not_full.clear()
                return False
            self._evict(self.size - self.capacity + 1)
        queue = self._queue
        queue.append(event)
        self._stamps.append(time.monotonic() if enqueued_at is None else enqueued_at)
        if len(queue) == 1 or len(queue) == self.max_batch:
            self._wake.set()
        if self._outage_since is not None:
            self._outage_delayed += 1
        return True

    async def put(self, event: CloudEvent, enqueued_at: float | None = None) -> None:
        """Queue ``event``; with ``block`` wait while the outbox is full, with ``drop_oldest`` never wait.

        The time spent waiting counts as added latency (the stamp is taken before the first attempt).
        """
        if enqueued_at is None:
            enqueued_at = time.monotonic()
        while not self.put_nowait(event, enqueued_at):
            await self._not_full.wait()

    def settled(self, event: CloudEvent) -> asyncio.Future[None]:
        """Done once ``event`` has left this outbox for good: confirmed by the broker, or dropped (counted
        and reported). Done at once if it is not here (gone already). For the few events that something
        waits on (a command's result: its offset is committed only then); nothing is tracked otherwise."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Just put, it is near the tail: searched from there.
        if (
            any(e is event for e in reversed(self._queue))
            or any(e is event for e in self._handing)
            or any(e is event for f in self._flights for e in f.events)
        ):
            self._watchers.setdefault(id(event), []).append(done)
        else:
            done.set_result(None)
        return done

    def _release(self, events: list[CloudEvent]) -> None:
        """Resolve the ``settled`` futures of ``events`` (published or dropped)."""
        if not self._watchers:  # the usual case: nothing is waiting on any event
            return
        for event in events:
            for done in self._watchers.pop(id(event), ()):
                if not done.done():
                    done.set_result(None)

    def _evict(self, count: int) -> None:
        evicted = [self._queue.popleft() for _ in range(min(count, len(self._queue)))]
        for _ in evicted:
            self._stamps.popleft()
        if not self._overflowing:
            self._overflowing = True
            self._overflow_dropped_before = self.dropped
            self._log.warning(
                "bus %s: outbox full (%d events), dropping the oldest until it drains",
                self.bus,
                self.capacity,
            )
        self._drop(evicted)

    def _drop(self, events: list[CloudEvent]) -> None:
        if not events:
            return
        self.dropped += len(events)
        self._release(events)
        try:
            self._on_drop(self.bus, events)
        except Exception:  # noqa: BLE001 (logged with its traceback)
            # A broken callback must not take the outbox (and with it the room's reader) down.
            self._log.exception("bus %s: on_drop callback failed", self.bus)

    # -- draining ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                self._wake.clear()
                if self._flights and self._flights[0].confirmed.done():
                    await self._settle()
                    continue
                # After a failure, one batch at a time until one gets through.
                limit = self.max_in_flight if self._attempt == 0 else 1
                room = self.capacity - 1 - self._in_flight  # keeps one queued event evictable when full
                if self._queue and len(self._flights) < limit and room > 0 and not self._failing():
                    if len(self._queue) < self.max_batch and not self._closing.is_set():
                        wait = self._batch_started + self.batch_interval_s - time.monotonic()
                        if wait > 0:
                            with contextlib.suppress(TimeoutError):
                                async with asyncio.timeout(wait):
                                    await self._wake.wait()  # a full batch, a settled flight, closing
                            continue
                    await self._launch(min(self.max_batch, len(self._queue), room))
                    continue
                if self._closing.is_set() and not self._queue and not self._flights:
                    return
                await self._wake.wait()
        finally:
            # Cancelled (the shutdown deadline passed): what was in flight and not confirmed goes back to be
            # counted as dropped, once the publisher's part has unwound (it is closed next).
            self._settle_confirmed()
            for flight in self._flights:
                flight.confirmed.cancel()
            await asyncio.gather(*(f.confirmed for f in self._flights), return_exceptions=True)
            for flight in reversed(self._flights):
                self._put_back(flight.events, flight.stamps)
            self._flights.clear()
            self._in_flight = 0

    async def _launch(self, n: int) -> None:
        """Hand the next ``n`` queued events over as one batch (in order) and track its confirmation."""
        self._batch_started = time.monotonic()
        events = [self._queue.popleft() for _ in range(n)]
        stamps = [self._stamps.popleft() for _ in range(n)]
        self._in_flight += n
        confirmed: asyncio.Future[None]
        self._handing = events
        try:
            if self._submit is not None:
                confirmed = await self._submit(events)
            else:
                confirmed = asyncio.ensure_future(self.publisher.publish_batch(events))
        except asyncio.CancelledError:
            self._in_flight -= n
            self._put_back(events, stamps)
            raise
        except Exception as exc:  # noqa: BLE001 (the hand-over failed: settled like a failed confirmation)
            confirmed = asyncio.get_running_loop().create_future()
            confirmed.set_exception(exc)
        finally:
            self._handing = []
        confirmed.add_done_callback(self._flight_done)
        self._flights.append(_Flight(events, stamps, confirmed))

    def _flight_done(self, confirmed: asyncio.Future[None]) -> None:
        if not confirmed.cancelled():
            confirmed.exception()  # retrieved here; a later flight's failure is settled with the oldest's
        # Confirmed batches are settled right here: waking the task first would add a turn of a busy loop to
        # every batch's latency. Failures are the task's (they wait for the later flights, then back off).
        try:
            self._settle_confirmed()
        finally:
            self._wake.set()

    def _settle_confirmed(self) -> bool:
        """Settle the confirmed flights at the head, oldest first; True if there were any."""
        flights, settled = self._flights, False
        while flights and flights[0].confirmed.done() and flights[0].failure(self.bus) is None:
            flight = flights.popleft()
            self._in_flight -= len(flight.events)
            self._published(flight.stamps)
            self._release(flight.events)
            self._attempt = 0
            settled = True
        return settled

    def _failing(self) -> bool:
        """A flight failed and is not settled yet: nothing may be handed over behind it."""
        return any(f.confirmed.done() and f.failure(self.bus) is not None for f in self._flights)

    async def _settle(self) -> None:
        """Settle the oldest flight (done): confirmed, or failed and put back for a retry."""
        if self._settle_confirmed():
            return
        flight = self._flights[0]
        exc = flight.failure(self.bus)
        assert exc is not None
        # Every later flight settles first (they stay tracked meanwhile, for a cancel to give them back);
        # then they all go back in order, the failed one first.
        if len(self._flights) > 1:
            await asyncio.wait([f.confirmed for f in list(self._flights)[1:]])
        later = list(self._flights)[1:]
        self._flights.clear()
        self._in_flight = 0
        for f in reversed(later):
            self._put_back(f.events, f.stamps)
        if isinstance(exc, BusError):
            self.last_error = str(exc)
            if not exc.retriable:
                self.failed_batches += 1
                self._log.error(
                    "bus %s: batch of %d events refused, dropped: %s", self.bus, len(flight.events), exc
                )
                self._drop(flight.events)
                self._space_freed()
                return
        else:
            # A foreign exception is an adapter bug; keep the events and retry rather than lose them.
            self.last_error = f"{type(exc).__name__} (not translated by the {self.bus} adapter)"
            if self._outage_since is None:
                self._log.error("bus %s: publish raised an untranslated error", self.bus, exc_info=exc)
        self._put_back(flight.events, flight.stamps)
        await self._backoff(self._attempt, exc)
        self._attempt += 1

    def _put_back(self, events: list[CloudEvent], stamps: list[float]) -> None:
        """A batch that was not confirmed goes back to the head of the queue, in its order."""
        self._queue.extendleft(reversed(events))
        self._stamps.extendleft(reversed(stamps))

    def _published(self, stamps: list[float]) -> None:
        """Bookkeeping of a confirmed batch (``stamps``: its events' put times)."""
        self.latency.record_since(time.monotonic(), stamps)
        self.published += len(stamps)
        self.batches += 1
        if self._outage_since is not None:
            self._end_outage()
        self._space_freed()
        if self._on_recover is not None and not self._overflowing and self.size <= self.capacity // 2:
            try:
                self._on_recover(self.bus)
            except Exception:  # noqa: BLE001 (a callback bug must not stop publishing)
                self._log.exception("bus %s: on_recover callback failed", self.bus)

    def _space_freed(self) -> None:
        if self.size < self.capacity:
            self._not_full.set()
        if self._overflowing and self.size <= self.capacity // 2:
            self._overflowing = False
            self._log.warning(
                "bus %s: outbox drained; %d events were dropped while it was full",
                self.bus,
                self.dropped - self._overflow_dropped_before,
            )

    async def _backoff(self, attempt: int, exc: BaseException) -> None:
        self.retries += 1
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self._outage_delayed = self.size
            self._outage_dropped_before = self.dropped
            self._log.warning(
                "bus %s unavailable, holding events and retrying: %s (%d queued)",
                self.bus,
                self.last_error,
                self.size,
            )
        delay = min(self._retry_max_s, self._retry_initial_s * (2 ** min(attempt, 30)))
        delay *= 1 - _JITTER * random.random()  # noqa: S311 (jitter, not cryptography)
        if self._closing.is_set():
            # Shutting down: retry at the initial pace until aclose's deadline instead of sleeping past it.
            await asyncio.sleep(min(delay, self._retry_initial_s))
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._closing.wait()

    def _end_outage(self) -> None:
        assert self._outage_since is not None
        dropped = self.dropped - self._outage_dropped_before
        self._log.warning(
            "bus %s available again after %.1fs: %d events delayed, %d dropped",
            self.bus,
            time.monotonic() - self._outage_since,
            max(0, self._outage_delayed - dropped),
            dropped,
        )
        self._outage_since = None

    # -- observing -----------------------------------------------------------------------------------

    @property
    def outage(self) -> bool:
        return self._outage_since is not None

    def stats(self) -> OutboxStats:
        return OutboxStats(
            bus=self.bus,
            queued=self.size,
            capacity=self.capacity,
            published=self.published,
            dropped=self.dropped,
            retries=self.retries,
            batches=self.batches,
            failed_batches=self.failed_batches,
            outage=self.outage,
            last_error=self.last_error,
            latency_count=self.latency.count,
            latency_p50_ms=round(self.latency.percentile(50) * 1e3, 3),
            latency_p99_ms=round(self.latency.percentile(99) * 1e3, 3),
            latency_max_ms=round(self.latency.max_s * 1e3, 3),
        )


class EventFanout:
    """Puts every event into every outbox. A full ``drop_oldest`` outbox never makes ``emit`` wait."""

    def __init__(self, outboxes: Sequence[Outbox]) -> None:
        self.outboxes = tuple(outboxes)

    async def emit(self, event: CloudEvent) -> None:
        now = time.monotonic()  # one stamp for every bus: the added latency starts here
        for outbox in self.outboxes:
            # Fast path without a coroutine per bus; only a full block-outbox makes us await.
            if not outbox.put_nowait(event, now):
                await outbox.put(event, now)

    def settled(self, event: CloudEvent) -> asyncio.Future[list[None]]:
        """Done once every bus has confirmed ``event`` or given it up (see :meth:`Outbox.settled`)."""
        return asyncio.gather(*(o.settled(event) for o in self.outboxes))

    def start(self) -> None:
        for outbox in self.outboxes:
            outbox.start()

    async def aclose(self, flush_deadline_s: float = 5.0) -> None:
        """Close every outbox concurrently, sharing one deadline."""
        await asyncio.gather(*(o.aclose(flush_deadline_s) for o in self.outboxes))
