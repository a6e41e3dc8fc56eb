"""The NATS command source: a queue subscription on ``<prefix>.commands.*`` with request/reply.

Replicas subscribe in one queue group (``nats.queue_group``), so each command reaches one of them. A
command sent as a request gets its ``command_result`` CloudEvent (structured JSON) as the reply; a dead
letter's reply is ``{"error": {"code", "message"}}``.

Core NATS delivers at most once: a command published while no bridge is subscribed, or dropped by the
client because the bridge fell behind (``slow_consumers`` counts it, logged once per episode), is gone;
a requester sees no reply and may send it again with the same id (the dedup window answers it without
applying it twice while the bridge that saw it runs).

Dead letters go to ``nats.dead_letter_subject`` (default ``<prefix>.dlq.commands``) with the original
payload and headers plus ``ce-bridgeerrorcode``, ``ce-bridgeerror`` (percent-encoded) and
``bridge-original-subject``.

Forwarding (``ownership.mode: nats``, :meth:`NatsCommandSource.forward_to_owners`): the queue group hands a
command to any replica, but only the lease holder may apply it. Each replica also subscribes, outside the
queue group, to ``<prefix>.replica.<replica id token>.commands``. A replica that receives a command for a
room whose live lease another replica holds re-publishes the message unchanged (payload, headers, and
the requester's reply subject, so the owner answers the requester directly) to the owner's subject, with
two headers added: ``bridge-forwarded`` (the forwarding replica) and ``bridge-forwarded-subject`` (the
original subject). It then drops the message: no delivery, no result. A forwarded message is never
forwarded again; the owner strips the two headers and handles it like any other command (deduplicated by
id, applied in its room's lane in arrival order). A room with no known live owner is handled locally.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bridge.bus.base import unavailable
from bridge.bus.bindings import percent_encode, room_from_token, room_token
from bridge.bus.command_source import Handler
from bridge.bus.nats import auth_options
from bridge.commands.validate import RawCommand
from bridge.config import NatsSettings

__all__ = ["FORWARDED_HEADER", "FORWARDED_SUBJECT_HEADER", "NatsCommandSource", "replica_subject"]

log = logging.getLogger("bridge.bus.nats_commands")

ERROR_TEXT_MAX: Final = 1000
PENDING_MSGS_LIMIT: Final = 65_536  # nats-py's client-side buffer per subscription (its overflow is counted)
FORWARDED_HEADER: Final = "bridge-forwarded"  # the replica that forwarded the message to its room's owner
FORWARDED_SUBJECT_HEADER: Final = "bridge-forwarded-subject"  # the subject the command was sent on

OwnerOf = Callable[[str], str | None]  # room -> the replica id holding its lease, None: nobody known


def replica_subject(prefix: str, replica: str) -> str:
    """Where commands forwarded to ``replica`` go: ``<prefix>.replica.<replica id token>.commands``."""
    return f"{prefix}.replica.{room_token(replica)}.commands"


@dataclass(slots=True)
class NatsDelivery:
    source: NatsCommandSource
    msg: Msg
    received_at: float
    # The command's own subject and headers: for a forwarded message, the original subject and the
    # headers without the forwarding ones.
    subject: str = ""
    headers: dict[str, str] | None = None
    via: str = "nats"
    interrupted: bool = False  # core NATS never redelivers
    redelivers: bool = False

    def parse(self) -> RawCommand:
        return RawCommand.from_nats(
            self.subject or self.msg.subject, self.msg.data, self.headers, prefix=self.source.prefix
        )

    async def dead_letter(self, code: str, message: str) -> None:
        await self.source.dead_letter(
            self.msg, code, message, subject=self.subject or None, headers=self.headers
        )

    async def reply(self, payload: bytes) -> None:
        await self.source.reply(self.msg, payload)

    @property
    def stale(self) -> bool:
        return False  # core NATS never redelivers

    def settle(self) -> None:
        self.source.settle()


class NatsCommandSource:
    """See the module docstring."""

    name = "nats"

    def __init__(
        self,
        settings: NatsSettings,
        *,
        max_in_flight: int = 1000,
        connect_timeout_s: float = 2.0,
        reconnect_time_wait_s: float = 1.0,
    ) -> None:
        self._settings = settings
        self.prefix = settings.subject_prefix
        self.subject = f"{self.prefix}.commands.*"
        self.dlq_subject = settings.dlq_subject
        self._max_in_flight = max_in_flight
        self._connect_timeout_s = connect_timeout_s
        self._reconnect_time_wait_s = reconnect_time_wait_s
        self._nc: Client | None = None
        self._sub: Subscription | None = None
        self._own_sub: Subscription | None = None  # forwarding: this replica's own subject
        self._replica: str | None = None
        self._owner_of: OwnerOf | None = None
        self.replica_subject: str | None = None
        self.forwarded = 0  # commands handed to their room's owner
        self._subscribed = False
        self._handler: Handler | None = None
        self._in_flight = 0
        self._room = asyncio.Event()
        self._room.set()
        self._settled = asyncio.Event()
        self._connecting: asyncio.Task[None] | None = None
        self._closing = False
        self.dead_lettered = 0
        self.slow_consumers = 0
        self._slow_logged = False

    def forward_to_owners(self, replica: str, owner_of: OwnerOf) -> None:
        """Before :meth:`start`: forward commands for rooms another replica owns (module docstring)."""
        self._replica = replica
        self._owner_of = owner_of
        self.replica_subject = replica_subject(self.prefix, replica)

    @property
    def ready(self) -> bool:
        return self._subscribed and self._nc is not None and self._nc.is_connected

    async def start(self, handler: Handler) -> None:
        """Connect and subscribe; if the server is down, keep trying in the background."""
        self._handler = handler
        try:
            await self._subscribe()
        except Exception as exc:  # noqa: BLE001 (logged by class; retried below)
            log.warning("nats: command subscription not ready (%s); retrying", type(exc).__name__)
            self._connecting = asyncio.create_task(self._retry(), name="nats-commands-connect")

    async def _retry(self) -> None:
        delay = 0.2
        while not self._closing and self._sub is None:
            await asyncio.sleep(delay)  # backoff between attempts
            try:
                await self._subscribe()
            except Exception as exc:  # noqa: BLE001
                log.debug("nats: command subscription retry failed (%s)", type(exc).__name__)
                delay = min(delay * 2, 5.0)

    async def _subscribe(self) -> None:
        s = self._settings
        if self._nc is None:
            try:
                self._nc = await nats.connect(
                    name="livekit-bus-bridge-commands",
                    **auth_options(s),
                    connect_timeout=self._connect_timeout_s,  # float seconds work
                    reconnect_time_wait=self._reconnect_time_wait_s,
                    max_reconnect_attempts=-1,
                    allow_reconnect=True,
                    error_cb=self._on_error,
                )
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                raise unavailable(self.name, "cannot connect", exc) from exc
        if self.replica_subject is not None and self._own_sub is None:
            # Before the queue subscription: once commands arrive here, forwarded ones can too.
            self._own_sub = await self._nc.subscribe(
                self.replica_subject, cb=self._on_msg, pending_msgs_limit=PENDING_MSGS_LIMIT
            )
        self._sub = await self._nc.subscribe(
            self.subject, queue=s.queue_group, cb=self._on_msg, pending_msgs_limit=PENDING_MSGS_LIMIT
        )
        await self._nc.flush()  # the subscription is registered on the server once this returns
        self._subscribed = True
        log.info("nats: consuming commands from %s in queue group %s", self.subject, s.queue_group)
        if self.replica_subject is not None:
            log.info(
                "nats: commands for rooms owned elsewhere are forwarded; ours arrive on %s",
                self.replica_subject,
            )

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            self.slow_consumers += 1
            if not self._slow_logged:
                self._slow_logged = True
                log.warning("nats: commands dropped by the client: the bridge is behind (slow consumer)")
            return
        log.debug("nats: command client error %s", type(exc).__name__)

    async def _on_msg(self, msg: Msg) -> None:
        if self._closing:
            return  # not taken: a requester times out and may retry elsewhere
        received_at = time.monotonic()
        subject, headers = msg.subject, msg.headers
        if headers and FORWARDED_HEADER in headers:
            subject = headers.get(FORWARDED_SUBJECT_HEADER) or subject
            headers = {
                k: v for k, v in headers.items() if k not in {FORWARDED_HEADER, FORWARDED_SUBJECT_HEADER}
            } or None
        elif self._owner_of is not None and await self._forward(msg):
            return
        await self._room.wait()
        self._in_flight += 1
        if self._in_flight >= self._max_in_flight:
            self._room.clear()
        assert self._handler is not None
        await self._handler(NatsDelivery(self, msg, received_at, subject=subject, headers=headers))

    async def _forward(self, msg: Msg) -> bool:
        """Hand ``msg`` to its room's owner if another replica holds it; False: handle it here."""
        assert self._owner_of is not None
        head = f"{self.prefix}.commands."
        token = msg.subject[len(head) :] if msg.subject.startswith(head) else ""
        if not token or "." in token:
            return False  # not a command subject: handled (dead-lettered) here
        try:
            room = room_from_token(token)
        except ValueError:
            return False
        owner = self._owner_of(room)
        nc = self._nc
        if owner is None or owner == self._replica or nc is None:
            return False
        headers = dict(msg.headers or {})
        headers[FORWARDED_HEADER] = self._replica or ""
        headers[FORWARDED_SUBJECT_HEADER] = msg.subject
        try:
            await nc.publish(replica_subject(self.prefix, owner), msg.data, reply=msg.reply, headers=headers)
        except (nats.errors.Error, OSError) as exc:
            log.debug("nats: forwarding to %s failed (%s); handled here", owner, type(exc).__name__)
            return False
        self.forwarded += 1
        return True

    def settle(self) -> None:
        self._in_flight -= 1
        self._settled.set()
        if self._in_flight < self._max_in_flight:
            self._room.set()
            self._slow_logged = False

    async def reply(self, msg: Msg, payload: bytes) -> None:
        nc = self._nc
        if not msg.reply or nc is None or not payload:
            return
        try:
            await nc.publish(msg.reply, payload)
        except (nats.errors.Error, OSError) as exc:
            log.debug("nats: reply not sent (%s)", type(exc).__name__)

    async def dead_letter(
        self,
        msg: Msg,
        code: str,
        message: str,
        *,
        subject: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        original = headers if subject is not None else msg.headers
        headers = dict(original or {})
        headers["ce-bridgeerrorcode"] = code
        headers["ce-bridgeerror"] = percent_encode(message[:ERROR_TEXT_MAX])
        headers["bridge-original-subject"] = subject or msg.subject
        delay = 0.2
        while True:
            nc = self._nc
            try:
                if nc is None:
                    raise unavailable(self.name, "not connected")
                await nc.publish(self.dlq_subject, msg.data, headers=headers)
                await nc.flush(timeout=5)
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                if self._closing:
                    raise unavailable(
                        self.name, f"dead letter to {self.dlq_subject} not stored", exc
                    ) from exc
                log.warning("nats: dead letter failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)  # backoff while the server is away
                delay = min(delay * 2, 5.0)
                continue
            self.dead_lettered += 1
            return

    async def aclose(self, deadline_s: float) -> None:
        """Unsubscribe (no new commands), let started ones settle within ``deadline_s``, disconnect."""
        self._closing = True
        self._room.set()
        if self._connecting is not None:
            self._connecting.cancel()
        subs = (self._sub, self._own_sub)
        self._sub = self._own_sub = None
        self._subscribed = False
        for sub in subs:
            if sub is None:
                continue
            try:
                await sub.unsubscribe()
            except (nats.errors.Error, OSError) as exc:
                log.debug("nats: unsubscribe failed (%s)", type(exc).__name__)
        end = time.monotonic() + deadline_s
        while self._in_flight and time.monotonic() < end:
            self._settled.clear()
            try:
                await asyncio.wait_for(self._settled.wait(), end - time.monotonic())
            except TimeoutError:
                break
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.drain()
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                log.debug("nats: error while closing (%s)", type(exc).__name__)
