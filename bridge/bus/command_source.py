"""What every command consumer is: the :class:`CommandSource` port and the :class:`Delivery` it hands over.

A source (Kafka consumer group, NATS queue subscription, in-memory) receives commands and calls the
handler once per message, in the order the transport delivered them. The handler (the
:class:`~bridge.rooms.commands.CommandRunner`) answers every delivery exactly once by one of:

- ``settle()`` after the command's result was handed to the buses (and, for a request, replied to);
- ``dead_letter(code, message)`` then ``settle()`` for input that is not a valid command.

Only settled deliveries are acknowledged to the broker (Kafka: the contiguous commit point), so a crash
redelivers whatever was not finished. ``dead_letter`` returns once the dead letter is stored, retrying a
broker outage itself; it raises :class:`~bridge.errors.BusError` only when the source is closing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from bridge.commands.validate import RawCommand


class Delivery(Protocol):
    """One message as a source received it."""

    via: str  # "kafka", "nats", "memory"
    received_at: float  # time.monotonic() when the source took it off the wire
    # A redelivery that an earlier process had started without publishing a result: it may have taken
    # effect, so it must not be applied again (the runner answers ``failed/interrupted``).
    interrupted: bool
    # The broker gives an unsettled message out again (Kafka): the runner then settles it only once its
    # result event is on the buses, so a crash in between redelivers it instead of losing the result.
    # Core NATS never redelivers: settling later would only hold intake back.
    redelivers: bool

    def parse(self) -> RawCommand:
        """The transport-neutral command; raises InvalidCommand for a message that is not one."""
        ...

    async def dead_letter(self, code: str, message: str) -> None:
        """Store the original message with the error (``bridgeerrorcode``, ``bridgeerror``)."""
        ...

    async def reply(self, payload: bytes) -> None:
        """Answer the sender when the transport has a reply address (NATS request); else nothing."""
        ...

    def settle(self) -> None:
        """Done with this message: the broker may forget it."""
        ...

    @property
    def stale(self) -> bool:
        """The broker will deliver this message again elsewhere (Kafka: its partition was revoked since):
        drop it without an answer rather than apply it or reject it here."""
        ...


Handler = Callable[[Delivery], Awaitable[None]]


@runtime_checkable
class CommandSource(Protocol):
    """One bus's command consumer. ``start`` subscribes; ``aclose`` stops fetching, waits up to
    ``deadline_s`` for started deliveries to settle, acknowledges what settled, and disconnects."""

    name: str

    @property
    def ready(self) -> bool:
        """Subscribed (and, for Kafka, partitions assigned): commands will be received."""
        ...

    async def start(self, handler: Handler) -> None: ...

    async def aclose(self, deadline_s: float) -> None: ...
