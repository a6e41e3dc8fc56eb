"""An in-process command source with the :class:`~bridge.bus.command_source.CommandSource` contract.

For unit tests and the demo: ``submit_kafka`` / ``submit_nats`` hand a message to the handler as the real
sources would (Kafka record or NATS message, parsed by the same code) and return the delivery, whose
``finished`` event is set once it was settled; its ``reply`` and ``dead`` fields say how it was answered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bridge.bus.command_source import Handler
from bridge.commands.validate import RawCommand

__all__ = ["MemoryCommandSource", "MemoryDelivery"]


@dataclass(slots=True)
class MemoryDelivery:
    raw: RawCommand | None = None
    build: tuple[str, tuple[object, ...]] = ("", ())
    received_at: float = field(default_factory=time.monotonic)
    via: str = "memory"
    redelivers: bool = True  # like Kafka, unless submitted as NATS
    interrupted: bool = False
    stale: bool = False  # tests set it to act out a revoked partition
    reply_payload: bytes | None = None
    dead: tuple[str, str] | None = None
    settled: int = 0
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def parse(self) -> RawCommand:
        kind, args = self.build
        if kind == "kafka":
            return RawCommand.from_kafka(*args)  # type: ignore[arg-type]
        if kind == "nats":
            subject, payload, headers, prefix = args
            return RawCommand.from_nats(subject, payload, headers, prefix=prefix)  # type: ignore[arg-type]
        assert self.raw is not None
        return self.raw

    async def dead_letter(self, code: str, message: str) -> None:
        self.dead = (code, message)

    async def reply(self, payload: bytes) -> None:
        self.reply_payload = payload

    def settle(self) -> None:
        self.settled += 1
        self.finished.set()


class MemoryCommandSource:
    """Delivers what tests submit; counts nothing it does not see."""

    name = "memory"

    def __init__(self, *, prefix: str = "livekit") -> None:
        self._handler: Handler | None = None
        self._prefix = prefix
        self.deliveries: list[MemoryDelivery] = []

    @property
    def ready(self) -> bool:
        return self._handler is not None

    async def start(self, handler: Handler) -> None:
        self._handler = handler

    async def aclose(self, deadline_s: float) -> None:
        self._handler = None

    async def submit_kafka(
        self, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> MemoryDelivery:
        return await self._deliver(MemoryDelivery(build=("kafka", (key, value, list(headers)))))

    async def submit_nats(
        self, subject: str, payload: bytes, headers: Mapping[str, str] | None = None
    ) -> MemoryDelivery:
        return await self._deliver(
            MemoryDelivery(
                via="nats", redelivers=False, build=("nats", (subject, payload, headers, self._prefix))
            )
        )

    async def _deliver(self, delivery: MemoryDelivery) -> MemoryDelivery:
        if self._handler is None:
            raise RuntimeError("the source is not started")
        self.deliveries.append(delivery)
        await self._handler(delivery)
        return delivery
