"""An in-process bus with the :class:`~bridge.bus.base.Publisher` contract, for unit tests and the demo.

Events are stored per topic (by default one topic, ``events``; ``topic_of`` can route by room or type)
in a bounded log (the oldest are forgotten beyond ``max_events`` and counted in ``evicted``). Tests wait
with :meth:`InMemoryBus.wait_for`; the demo reads with :meth:`InMemoryBus.subscribe`, whose queue is
bounded too (a slow reader loses the oldest events, counted in :attr:`Subscription.dropped`).

Failures are switchable so outbox tests need no broker: ``available = False`` makes every publish raise
:class:`~bridge.errors.BusUnavailable`; ``reject`` (a predicate) makes a batch holding a matching event
fail non-retriably, as a broker refusing an oversized record would.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Final

from bridge.bus.base import rejected, unavailable
from bridge.events.cloudevent import CloudEvent

__all__ = ["InMemoryBus", "Subscription"]

DEFAULT_TOPIC: Final = "events"


class Subscription:
    """A bounded async iterator over newly published events (drop-oldest, counted)."""

    def __init__(self, bus: InMemoryBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: deque[CloudEvent] = deque()
        self._maxsize = maxsize
        self._wakeup = asyncio.Event()
        self.dropped = 0
        self.closed = False

    def _offer(self, event: CloudEvent) -> None:
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)
        self._wakeup.set()

    async def get(self) -> CloudEvent:
        while not self._queue:
            if self.closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft()

    def __aiter__(self) -> AsyncIterator[CloudEvent]:
        return self

    async def __anext__(self) -> CloudEvent:
        return await self.get()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()
        self._bus._subscriptions.discard(self)


class InMemoryBus:
    """Stores what is published; ``name`` is ``"memory"`` unless given."""

    def __init__(
        self,
        name: str = "memory",
        *,
        max_events: int = 100_000,
        topic_of: Callable[[CloudEvent], str] | None = None,
    ) -> None:
        self.name = name
        self.available = True
        self.reject: Callable[[CloudEvent], bool] | None = None
        self.published = 0
        self.batches = 0
        self.evicted = 0
        self._max_events = max_events
        self._topic_of = topic_of
        self._topics: dict[str, deque[CloudEvent]] = {}
        self._all: deque[CloudEvent] = deque()
        self._changed = asyncio.Condition()
        self._subscriptions: set[Subscription] = set()
        self._started = False
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._started and not self._closed and self.available

    async def start(self) -> None:
        if not self.available:
            raise unavailable(self.name, "not available")
        self._started = True

    async def publish_batch(self, events: Sequence[CloudEvent]) -> None:
        if self._closed:
            raise unavailable(self.name, "closed")
        if not self.available:
            raise unavailable(self.name, "not available")
        if self.reject is not None and any(self.reject(e) for e in events):
            raise rejected(self.name, "record rejected")
        for event in events:
            self._store(DEFAULT_TOPIC if self._topic_of is None else self._topic_of(event), event)
        self.published += len(events)
        self.batches += 1
        async with self._changed:
            self._changed.notify_all()

    def _store(self, topic: str, event: CloudEvent) -> None:
        log = self._topics.get(topic)
        if log is None:
            log = self._topics[topic] = deque()
        if len(self._all) >= self._max_events:
            oldest = self._all.popleft()
            # The oldest overall is the oldest of its own topic too (both logs are in publish order).
            old_topic = DEFAULT_TOPIC if self._topic_of is None else self._topic_of(oldest)
            self._topics[old_topic].popleft()
            self.evicted += 1
        log.append(event)
        self._all.append(event)
        for sub in self._subscriptions:
            sub._offer(event)

    @property
    def events(self) -> list[CloudEvent]:
        """Every stored event, in publish order."""
        return list(self._all)

    def topic(self, topic: str = DEFAULT_TOPIC) -> list[CloudEvent]:
        return list(self._topics.get(topic, ()))

    @property
    def topics(self) -> list[str]:
        return list(self._topics)

    async def wait_for(self, count: int, timeout: float) -> list[CloudEvent]:  # noqa: ASYNC109
        """Wait until ``count`` events were published in total; TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.published >= count)
        return self.events

    def subscribe(self, maxsize: int = 10_000) -> Subscription:
        """Events published from now on; close the subscription when done."""
        sub = Subscription(self, maxsize)
        self._subscriptions.add(sub)
        return sub

    async def aclose(self) -> None:
        self._closed = True
        for sub in list(self._subscriptions):
            sub.close()
