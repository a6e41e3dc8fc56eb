"""Outbox pipelining (``max_in_flight``): batches are handed over before the oldest is confirmed, settled in
order, and a failure puts the failed batch and every later one back, in order, before anything else."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from bridge.bus.base import Pipelined, rejected, unavailable
from bridge.bus.outbox import Outbox
from bridge.events.cloudevent import CloudEvent
from support.events import context, make_event
from support.waiting import eventually


def _events(n: int) -> list[CloudEvent]:
    ctx = context("room")
    return [make_event(ctx, i) for i in range(1, n + 1)]


class Manual:
    """A pipelined publisher whose confirmations the test resolves by hand."""

    name = "manual"
    connected = True

    def __init__(self, *, pipelining: bool = True) -> None:
        self.pipelining = pipelining
        self.refuse = False  # the next hand-overs raise BusUnavailable
        self.gate: asyncio.Event | None = None  # set: hand-overs wait for it (a slow client)
        self.waiting = 0  # hand-overs waiting at the gate
        self.refused = 0
        self.handed: list[list[int]] = []  # sequences of each batch, in hand-over order
        self.pending: list[asyncio.Future[None]] = []
        self.delivered: list[int] = []  # sequences of confirmed batches, in confirmation order

    async def start(self) -> None:
        pass

    async def submit_batch(self, events: Sequence[CloudEvent]) -> asyncio.Future[None]:
        if self.gate is not None:
            self.waiting += 1
            await self.gate.wait()
            self.waiting -= 1
        if self.refuse:
            self.refused += 1
            raise unavailable("manual", "not connected")
        batch = [e.sequence for e in events]
        self.handed.append(batch)
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(confirmed)

        def delivered(f: asyncio.Future[None]) -> None:
            if not f.cancelled() and f.exception() is None:
                self.delivered.extend(batch)

        confirmed.add_done_callback(delivered)
        return confirmed

    async def publish_batch(self, events: Sequence[CloudEvent]) -> None:
        await (await self.submit_batch(events))

    async def aclose(self) -> None:
        pass


def _equals(read: Callable[[], int], expected: int) -> Callable[[], bool]:
    return lambda: read() == expected


def _no_drops(bus: str, events: list[CloudEvent]) -> None:
    raise AssertionError(f"{bus}: {len(events)} events dropped")


def _outbox(
    publisher: Manual, *, max_in_flight: int = 3, capacity: int = 100, dropped: list[int] | None = None
) -> Outbox:
    """Batches of 2; ``dropped`` collects the sequences of dropped events (None: a drop fails the test)."""
    assert isinstance(publisher, Pipelined)
    on_drop = _no_drops if dropped is None else lambda _, events: dropped.extend(e.sequence for e in events)
    return Outbox(
        publisher,
        capacity=capacity,
        overflow="block",
        on_drop=on_drop,
        max_batch=2,
        max_in_flight=max_in_flight,
        retry_initial_s=0.01,
        retry_max_s=0.01,
    )


async def test_batches_overlap_up_to_the_limit_and_settle_in_order() -> None:
    publisher = Manual()
    outbox = _outbox(publisher)
    outbox.start()
    for event in _events(10):
        await outbox.put(event)
    await eventually(lambda: len(publisher.handed) == 3, within=2, what="three batches in flight")
    await asyncio.sleep(0.05)  # a fourth would be a bug: give it the chance to show
    assert publisher.handed == [[1, 2], [3, 4], [5, 6]]
    assert outbox.size == 10  # the ones in flight still count against the capacity

    # The second confirms first: nothing is counted before the oldest is.
    publisher.pending[1].set_result(None)
    await asyncio.sleep(0.05)
    assert outbox.published == 0
    publisher.pending[0].set_result(None)
    await eventually(lambda: outbox.published == 4, within=2, what="the first two batches counted")
    await eventually(lambda: len(publisher.handed) == 5, within=2, what="two more batches in flight")
    for future in publisher.pending:
        if not future.done():
            future.set_result(None)
    await eventually(lambda: outbox.published == 10, within=2, what="all published")
    await outbox.aclose(1)
    assert outbox.latency.count == 10


async def test_a_failed_batch_goes_back_with_every_later_one_in_order() -> None:
    publisher = Manual()
    outbox = _outbox(publisher)
    outbox.start()
    for event in _events(6):
        await outbox.put(event)
    await eventually(lambda: len(publisher.handed) == 3, within=2, what="three batches in flight")
    publisher.pending[0].set_exception(unavailable("manual", "connection lost"))
    publisher.pending[2].set_result(None)  # a later one landed: it is sent again anyway
    await asyncio.sleep(0.05)
    assert len(publisher.handed) == 3  # waits for the middle one before deciding
    publisher.pending[1].set_exception(unavailable("manual", "connection lost"))
    await eventually(lambda: len(publisher.handed) == 4, within=2, what="the retry")
    await asyncio.sleep(0.05)
    # After a failure: one batch at a time, starting from the failed one.
    assert publisher.handed[3] == [1, 2]
    assert len(publisher.handed) == 4
    assert outbox.outage
    assert outbox.retries == 1
    publisher.pending[3].set_result(None)
    await eventually(lambda: len(publisher.handed) >= 5, within=2, what="the next batch")
    while outbox.published < 6:
        for future in publisher.pending:
            if not future.done():
                future.set_result(None)
        await asyncio.sleep(0.005)
    await outbox.aclose(1)
    assert not outbox.outage
    assert publisher.handed[3:] == [[1, 2], [3, 4], [5, 6]]
    # Delivery is at-least-once: [5, 6] landed before the failure and again after, in order each time.
    assert publisher.delivered == [5, 6, 1, 2, 3, 4, 5, 6]


async def test_without_pipelining_one_batch_is_in_flight() -> None:
    publisher = Manual(pipelining=False)
    outbox = _outbox(publisher, max_in_flight=8)
    assert outbox.max_in_flight == 1
    outbox.start()
    for event in _events(6):
        await outbox.put(event)
    await eventually(lambda: len(publisher.handed) == 1, within=2, what="one batch in flight")
    await asyncio.sleep(0.05)
    assert len(publisher.handed) == 1
    for n in (1, 2, 3):
        assert sum(not f.done() for f in publisher.pending) == 1
        publisher.pending[n - 1].set_result(None)
        await eventually(_equals(lambda: outbox.published, 2 * n), within=2, what=f"batch {n} counted")
        await eventually(_equals(lambda: len(publisher.handed), min(n + 1, 3)), within=2, what="next batch")
    await outbox.aclose(1)
    assert publisher.delivered == [1, 2, 3, 4, 5, 6]


async def test_in_flight_events_past_the_shutdown_deadline_are_counted_as_dropped() -> None:
    publisher = Manual()
    dropped: list[int] = []
    outbox = _outbox(publisher, max_in_flight=2, dropped=dropped)
    outbox.start()
    for event in _events(5):
        await outbox.put(event)
    await eventually(lambda: len(publisher.handed) == 2, within=2, what="two batches in flight")
    await outbox.aclose(0.1)  # nothing is ever confirmed
    assert sorted(dropped) == [1, 2, 3, 4, 5]
    assert outbox.dropped == 5
    assert outbox.published == 0


async def test_the_flights_never_take_the_last_evictable_slot() -> None:
    publisher = Manual()
    outbox = Outbox(
        publisher,
        capacity=5,
        overflow="drop_oldest",
        on_drop=lambda *_: None,
        max_batch=2,
        max_in_flight=4,
    )
    outbox.start()
    for event in _events(5):
        await outbox.put(event)
    await eventually(lambda: len(publisher.handed) == 2, within=2, what="two batches in flight")
    await asyncio.sleep(0.05)
    # 4 events in flight, 1 queued: a third flight would leave nothing for drop_oldest to evict.
    assert len(publisher.handed) == 2
    assert outbox.size == 5
    await outbox.put(_events(6)[5])
    assert outbox.size == 5
    assert outbox.dropped == 1
    await outbox.aclose(0.05)


def test_max_in_flight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        Outbox(Manual(), capacity=10, overflow="block", on_drop=_no_drops, max_in_flight=0)


async def _confirm_all(publisher: Manual, outbox: Outbox, count: int) -> None:
    async def confirmed() -> None:
        while outbox.published < count:
            for future in publisher.pending:
                if not future.done():
                    future.set_result(None)
            await asyncio.sleep(0.005)  # polls the outbox; each round confirms what was handed over

    await asyncio.wait_for(confirmed(), 5)


async def test_nothing_is_handed_over_behind_a_failed_hand_over() -> None:
    publisher = Manual()
    outbox = _outbox(publisher)
    outbox.start()
    events = _events(6)
    for event in events[:2]:
        await outbox.put(event)
    await eventually(lambda: len(publisher.handed) == 1, within=2, what="the first batch in flight")
    publisher.refuse = True
    for event in events[2:4]:
        await outbox.put(event)
    await eventually(lambda: publisher.refused == 1, within=2, what="a refused hand-over")
    publisher.refuse = False
    for event in events[4:]:
        await outbox.put(event)
    await asyncio.sleep(0.05)  # a hand-over behind the failed one would be a bug: give it the chance
    assert len(publisher.handed) == 1
    await _confirm_all(publisher, outbox, 6)
    await outbox.aclose(1)
    assert publisher.delivered == [1, 2, 3, 4, 5, 6]


async def test_a_refused_batch_is_dropped_and_the_later_ones_are_sent_again() -> None:
    publisher = Manual()
    dropped: list[int] = []
    outbox = _outbox(publisher, max_in_flight=3, dropped=dropped)
    outbox.start()
    for event in _events(6):
        await outbox.put(event)
    await eventually(lambda: len(publisher.handed) == 3, within=2, what="three batches in flight")
    publisher.pending[0].set_exception(rejected("manual", "record too large"))
    publisher.pending[1].set_result(None)
    publisher.pending[2].set_result(None)
    await _confirm_all(publisher, outbox, 4)
    await outbox.aclose(1)
    assert dropped == [1, 2]
    assert outbox.failed_batches == 1
    assert not outbox.outage
    assert publisher.handed[3:] == [[3, 4], [5, 6]]


async def test_a_confirmed_batch_is_counted_in_the_turn_its_acknowledgement_comes() -> None:
    """On a busy loop each task wake-up is one more pass through the ready queue: the batch is settled in
    the confirmation's own callback, not after waking the outbox's task."""
    publisher = Manual()
    outbox = _outbox(publisher)
    outbox.start()
    for event in _events(2):
        await outbox.put(event)
    await eventually(lambda: len(publisher.handed) == 1, within=2, what="the batch handed over")
    publisher.pending[0].set_result(None)
    await asyncio.sleep(0)  # one turn of the loop: the future's done callbacks run
    assert outbox.published == 2
    assert outbox.size == 0
    await outbox.aclose(1)


async def test_settled_waits_for_the_confirmation_across_a_retry() -> None:
    publisher = Manual()
    outbox = _outbox(publisher)
    outbox.start()
    events = _events(2)
    for event in events:
        await outbox.put(event)
    watched = outbox.settled(events[1])
    await eventually(lambda: len(publisher.handed) == 1, within=2, what="the batch handed over")
    publisher.pending[0].set_exception(unavailable("manual", "connection lost"))
    await eventually(lambda: len(publisher.handed) == 2, within=2, what="the retry")
    assert not watched.done()  # put back, not published
    publisher.pending[1].set_result(None)
    await asyncio.wait_for(watched, 2)
    assert outbox.published == 2
    await outbox.aclose(1)


async def test_settled_when_dropped_or_not_held() -> None:
    publisher = Manual()
    outbox = Outbox(publisher, capacity=3, overflow="drop_oldest", on_drop=lambda *_: None, max_batch=2)
    events = _events(5)
    assert outbox.settled(events[0]).done()  # not here (yet, or any more): nothing to wait for
    for event in events[:3]:
        await outbox.put(event)
    watched = outbox.settled(events[0])
    assert not watched.done()
    await outbox.put(events[3])  # full: the oldest is evicted
    await asyncio.wait_for(watched, 2)
    assert outbox.dropped == 1
    await outbox.aclose(0.1)


async def test_settled_waits_for_a_batch_still_being_handed_over() -> None:
    """Between leaving the queue and becoming a flight, a batch is being handed to the client (which may
    wait: a producer reconnecting, a full buffer); its events are not gone."""
    publisher = Manual()
    publisher.gate = asyncio.Event()
    outbox = _outbox(publisher)
    outbox.start()
    event = _events(1)[0]
    await outbox.put(event)
    await eventually(lambda: publisher.waiting == 1, within=2, what="the hand-over waiting")
    watched = outbox.settled(event)
    assert not watched.done()
    publisher.refuse = True  # the hand-over fails: back to the queue
    publisher.gate.set()
    await eventually(lambda: outbox.retries >= 1, within=2, what="the retry")
    assert not watched.done()
    publisher.refuse = False
    await eventually(lambda: len(publisher.pending) == 1, within=2, what="handed over again")
    publisher.pending[0].set_result(None)
    await asyncio.wait_for(watched, 2)
    await outbox.aclose(1)
