"""Remember which command ids were seen, so a redelivered command is answered, never applied twice.

Pure: time comes in as ``now`` (seconds, any monotonic clock). An entry lives ``window_s`` after it was
first seen; the window also holds at most ``max_ids`` entries, the oldest forgotten first (counted in
``evicted``, since forgetting an id early weakens the guarantee and operators should know).

An entry is *in flight* until :meth:`DedupWindow.finish` stores its result; a duplicate that arrives
meanwhile is told to wait for the first delivery's outcome instead of running again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

R = TypeVar("R")


@dataclass(slots=True)
class Seen(Generic[R]):
    """What the window knows about one id: when it was first seen and, once finished, its result."""

    first_seen: float
    result: R | None = None

    @property
    def in_flight(self) -> bool:
        return self.result is None


class DedupWindow(Generic[R]):
    """Command id -> :class:`Seen`, bounded by age and by count."""

    def __init__(self, *, window_s: float, max_ids: int) -> None:
        if window_s <= 0 or max_ids <= 0:
            raise ValueError("window_s and max_ids must be positive")
        self.window_s = window_s
        self.max_ids = max_ids
        self._seen: OrderedDict[str, Seen[R]] = OrderedDict()
        self.evicted = 0  # forgotten before their window ended, because of max_ids

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, command_id: str, now: float) -> Seen[R] | None:
        """The entry for ``command_id`` if it is still remembered, else None."""
        self._expire(now)
        return self._seen.get(command_id)

    def begin(self, command_id: str, now: float) -> Seen[R]:
        """Record a first delivery (in flight). Raises ValueError if the id is already remembered."""
        self._expire(now)
        if command_id in self._seen:
            raise ValueError(f"command id {command_id!r} is already in the window")
        entry: Seen[R] = Seen(now)
        self._add(command_id, entry)
        return entry

    def finish(self, command_id: str, result: R, now: float) -> None:
        """Store the outcome of a delivery (also for an id learnt from elsewhere, e.g. recovered results)."""
        entry = self._seen.get(command_id)
        if entry is None:
            self._expire(now)
            self._add(command_id, Seen(now, result))
        else:
            entry.result = result

    def forget(self, command_id: str) -> None:
        """Drop an id (a delivery let go unanswered, to be delivered again)."""
        self._seen.pop(command_id, None)

    def _add(self, command_id: str, entry: Seen[R]) -> None:
        while len(self._seen) >= self.max_ids:
            self._seen.popitem(last=False)
            self.evicted += 1
        self._seen[command_id] = entry

    def _expire(self, now: float) -> None:
        # Entries are in insertion order, which is first-seen order: stop at the first young one.
        horizon = now - self.window_s
        seen = self._seen
        while seen:
            oldest = next(iter(seen.values()))
            if oldest.first_seen > horizon or oldest.in_flight:
                break
            seen.popitem(last=False)
