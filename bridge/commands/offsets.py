"""Which Kafka offset may be committed: the lowest one not yet settled, per partition.

Pure. Commands of one partition are applied concurrently (one lane per room), so they settle out of
order; committing offset N says "everything below N is done", so the commit point only moves over a
contiguous run of settled offsets. A crash then redelivers every command that was not settled, and
nothing that was.
"""

from __future__ import annotations

from collections import deque


class PartitionOffsets:
    """Offsets delivered and settled on one partition, in delivery (= offset) order."""

    __slots__ = ("_committed", "_done", "_next", "_open")

    def __init__(self) -> None:
        self._open: deque[int] = deque()
        self._done: set[int] = set()
        self._next: int | None = None  # one past the newest delivered offset
        self._committed: int | None = None

    @property
    def pending(self) -> int:
        """Delivered but not yet settled."""
        return len(self._open) - len(self._done)

    def delivered(self, offset: int) -> bool:
        """Record a delivery; False (and nothing recorded) for an offset at or below one already seen,
        which a fetch can return again after a seek or a rebalance."""
        if self._next is not None and offset < self._next:
            return False
        self._open.append(offset)
        self._next = offset + 1
        return True

    def settled(self, offset: int) -> None:
        """Mark a delivered offset done (applied, rejected or dead-lettered); unknown offsets raise."""
        if not self._open or offset < self._open[0] or offset >= (self._next or 0):
            raise ValueError(f"offset {offset} was not delivered or is already committed")
        self._done.add(offset)

    def commit_point(self) -> int | None:
        """The offset to commit now (one past the contiguous settled run), or None if nothing new."""
        while self._open and self._open[0] in self._done:
            self._done.discard(self._open.popleft())
        point = self._open[0] if self._open else self._next
        if point is None or point == self._committed:
            return None
        return point

    def committed(self, offset: int) -> None:
        """Record that ``offset`` was committed (so :meth:`commit_point` only reports progress)."""
        self._committed = offset
