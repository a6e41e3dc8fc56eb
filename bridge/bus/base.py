"""What every bus adapter is: the :class:`Publisher` protocol and the translation of foreign errors.

A publisher sends a batch of CloudEvents and returns only once the broker has acknowledged all of them
(Kafka acks, NATS flush/PONG, JetStream PubAcks). Anything else raises a :class:`~bridge.errors.BusError`:

- :class:`~bridge.errors.BusUnavailable` (retriable): the broker cannot be reached, or did not answer in
  time. The :class:`~bridge.bus.outbox.Outbox` keeps the batch and tries again.
- :class:`~bridge.errors.PublishFailed` with ``retriable=False``: the broker refused records as invalid
  (too large, bad topic). Trying again cannot help, so the outbox drops the batch and counts it.

Foreign exceptions (aiokafka, nats-py, OSError, timeouts) never cross this boundary: adapters raise
``... from exc`` and their messages name the bus and the failure class, never a credential.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol, runtime_checkable

from bridge.errors import BusError, BusUnavailable, PublishFailed
from bridge.events.cloudevent import CloudEvent

__all__ = ["Pipelined", "Publisher", "nothing_to_confirm", "rejected", "unavailable"]


@runtime_checkable
class Publisher(Protocol):
    """One bus. ``name`` is ``"kafka"``, ``"nats"`` or ``"memory"`` (used in logs, stats and ``on_drop``)."""

    name: str

    @property
    def connected(self) -> bool:
        """True while the client believes it can reach the broker (a hint for /readyz, not a promise)."""
        ...

    async def start(self) -> None:
        """Connect. Raises BusUnavailable if the broker cannot be reached (``publish_batch`` retries it)."""
        ...

    async def publish_batch(self, events: Sequence[CloudEvent]) -> None:
        """Deliver every event (in order per room) and wait for the broker's acknowledgements."""
        ...

    async def aclose(self) -> None:
        """Release the client; idempotent."""
        ...


@runtime_checkable
class Pipelined(Protocol):
    """A publisher that can hand a batch over before the previous one is confirmed (see the outbox).

    ``submit_batch`` returns once the batch is handed to the client in order (written to the socket, in
    the producer's queue); awaiting what it returns waits for the broker's acknowledgements. Both raise
    BusError only. ``pipelining`` is False where the order of overlapping batches is not kept (JetStream:
    a PubAck per message, and a failed one does not stop the next).
    """

    pipelining: bool

    async def submit_batch(self, events: Sequence[CloudEvent]) -> Awaitable[None]: ...


async def nothing_to_confirm() -> None:
    """What ``submit_batch`` returns for an empty batch."""


def unavailable(bus: str, what: str, exc: BaseException | None = None) -> BusUnavailable:
    """A retriable error whose message names the bus and the failure class, never the exception text.

    Foreign messages may quote connection URLs or server replies; the class name is enough to act on and
    the original stays reachable as ``__cause__`` for debugging.
    """
    cause = f" ({type(exc).__name__})" if exc is not None else ""
    return BusUnavailable(f"{bus}: {what}{cause}")


def rejected(bus: str, what: str, exc: BaseException | None = None) -> PublishFailed:
    """A non-retriable PublishFailed: the broker refused the records themselves."""
    cause = f" ({type(exc).__name__})" if exc is not None else ""
    err = PublishFailed(f"{bus}: {what}{cause}")
    err.retriable = False  # type: ignore[misc]  # the class default is retriable; this instance is not
    return err


def is_retriable(exc: BusError) -> bool:
    return bool(exc.retriable)
