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

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from bridge.errors import BusError, BusUnavailable, PublishFailed
from bridge.events.cloudevent import CloudEvent

__all__ = [
    "Pipelined",
    "Publisher",
    "Translate",
    "confirmation",
    "nothing_to_confirm",
    "rejected",
    "translated",
    "unavailable",
]


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
    """A publisher that hands a batch over and confirms it separately (see the outbox).

    ``submit_batch`` returns once the batch is handed to the client in order (written to the socket, in
    the producer's queue); the future it returns is done when the broker has acknowledged every event,
    or failed with a BusError (after the publisher's own timeout at the latest). The outbox never awaits
    it in a task of its own: it settles the batch in the future's done callback. ``pipelining`` is False
    where the order of overlapping batches is not kept (JetStream: a PubAck per message, and a failed one
    does not stop the next): the outbox then keeps one batch in flight.
    """

    pipelining: bool

    async def submit_batch(self, events: Sequence[CloudEvent]) -> asyncio.Future[None]: ...


# A client's exception -> the BusError it means, or None for one the adapter does not know (a bug: the
# outbox keeps the events and retries).
Translate = Callable[[BaseException], BusError | None]


def _translation(exc: BaseException, translate: Translate) -> BaseException:
    """The BusError a client's ``exc`` means (with ``exc`` as its cause), or ``exc`` itself: a BusError
    already, or one ``translate`` does not know."""
    if isinstance(exc, BusError):
        return exc
    err = translate(exc)
    if err is None:
        return exc
    err.__cause__ = exc
    return err


@contextlib.contextmanager
def translated(translate: Translate) -> Iterator[None]:
    """Raise what ``translate`` makes of a client's exception (``from`` it); BusErrors and exceptions it
    does not know pass unchanged."""
    try:
        yield
    except Exception as exc:
        err = _translation(exc, translate)
        if err is exc:
            raise
        raise err from exc


def nothing_to_confirm() -> asyncio.Future[None]:
    """What ``submit_batch`` returns for an empty batch: already confirmed."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


def confirmation(
    bus: str, acks: Sequence[asyncio.Future[Any]], timeout_s: float, translate: Translate
) -> asyncio.Future[None]:
    """A future done when every one of a client's ``acks`` is; failed with the first failure (translated),
    or BusUnavailable once ``timeout_s`` has passed.

    It is resolved in the acks' done callbacks, not by a task that awaits them: on a busy event loop every
    task wake-up is one more turn through the ready queue before the batch counts as confirmed, and that
    turn is what the next batch waits for. The acks are never cancelled: a client may still resolve them
    after the timeout (nats-py's reader dies resolving a cancelled PONG future).
    """
    loop = asyncio.get_running_loop()
    out: asyncio.Future[None] = loop.create_future()
    pending = len(acks)

    def fail(exc: BaseException) -> None:
        try:
            out.set_exception(_translation(exc, translate))
        except Exception as bug:  # noqa: BLE001 (a translation bug fails the batch now, not at the timer)
            out.set_exception(bug)

    def acked(ack: asyncio.Future[Any]) -> None:
        nonlocal pending
        exc = asyncio.CancelledError() if ack.cancelled() else ack.exception()  # always retrieved
        if out.done():
            return
        if exc is not None:
            fail(exc)
            return
        pending -= 1
        if pending == 0:
            out.set_result(None)

    def expired() -> None:
        if not out.done():
            fail(TimeoutError(f"{bus}: no acknowledgement within {timeout_s:g} s"))

    if not acks:
        out.set_result(None)
        return out
    timer = loop.call_later(timeout_s, expired)
    out.add_done_callback(lambda _: timer.cancel())
    for ack in acks:
        ack.add_done_callback(acked)
    return out


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
