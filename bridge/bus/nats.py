"""The NATS publisher: core NATS (structured or binary CloudEvents) or JetStream with deduplication.

- **Core** (default): each event is published on ``<prefix>.events.<room token>.<type token>``, then one
  ``flush()`` per batch (a PING/PONG round trip) confirms that the server has read all of it. Structured
  mode (JSON event format, ``Content-Type: application/cloudevents+json``) is the default; binary ``ce-``
  headers with ``settings.binary_mode``.
- **JetStream** (``settings.jetstream``): asynchronous publishes with ``Nats-Msg-Id`` = the event id, so a
  batch re-sent after a timeout is deduplicated by the stream, and the batch's PubAcks are awaited. A
  stream covering ``<prefix>.events.>`` is used if one exists, else created (:data:`STREAM_NAME`).

Bounded and prompt during an outage: publishing is refused with BusUnavailable while the client is
disconnected (so nats-py's own reconnect buffer is not filled with events the outbox will send again), that
buffer is capped at ``pending_size_bytes`` anyway, and every batch runs under ``publish_timeout_s``.
nats-py keeps reconnecting in the background for as long as the publisher lives.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck, StreamConfig

from bridge.bus.base import confirmation, nothing_to_confirm, rejected, translated, unavailable
from bridge.bus.bindings import (
    NATS_STRUCTURED_HEADERS,
    nats_binary_block,
    nats_binary_headers,
    nats_structured,
    nats_subject,
)
from bridge.bus.nats_wire import batch_frames, header_block, header_block_size
from bridge.config import NatsSettings
from bridge.errors import BusError
from bridge.events.cloudevent import CloudEvent

__all__ = ["STREAM_NAME", "NatsPublisher", "stream_name_for"]

#: The JetStream stream created for ``<prefix>.events.>`` when none covers it (prefix ``livekit``).
#: Wanted as a setting (``nats.stream``); other prefixes get ``LIVEKIT_EVENTS_<PREFIX>``.
STREAM_NAME: Final = "LIVEKIT_EVENTS"

log = logging.getLogger("bridge.bus.nats")

_MSG_ID: Final = "Nats-Msg-Id"  # JetStream deduplication within the duplicate window
_STRUCTURED_BLOCK: Final = header_block(NATS_STRUCTURED_HEADERS)
_PING: Final = b"PING\r\n"
_STREAM_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")
# JetStream API errors that mean "this record is wrong", not "try later" (message too large; subject
# not in any stream would be 503 no-responders instead).
_JS_REJECT_CODES: Final = frozenset({400, 413})


def auth_options(settings: NatsSettings) -> dict[str, Any]:
    """Servers and credentials every NATS client of the bridge connects with."""
    s = settings
    return {
        "servers": list(s.servers),
        "user": s.user,
        # Revealed only here, inside the client; never in a message or a log line.
        "password": s.password.reveal() if s.password is not None else None,
        "token": s.token.reveal() if s.token is not None else None,
        "user_credentials": str(s.creds_file) if s.creds_file is not None else None,
    }


def stream_name_for(prefix: str) -> str:
    """:data:`STREAM_NAME` for the default prefix, ``LIVEKIT_EVENTS_<PREFIX>`` for any other."""
    if prefix == "livekit":
        return STREAM_NAME
    return f"{STREAM_NAME}_{_STREAM_UNSAFE.sub('_', prefix).upper()}"


class NatsPublisher:
    """Publishes CloudEvents to NATS; see the module docstring for the modes."""

    name = "nats"

    def __init__(
        self,
        settings: NatsSettings,
        *,
        publish_timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        reconnect_time_wait_s: float = 1.0,
        pending_size_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._settings = settings
        self._prefix = settings.subject_prefix
        self._binary = settings.binary_mode
        self._jetstream = settings.jetstream
        # Core batches on one connection arrive in the order written; JetStream acks each message.
        self.pipelining = not settings.jetstream
        self._stream = stream_name_for(self._prefix)
        self._publish_timeout_s = publish_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._reconnect_time_wait_s = reconnect_time_wait_s
        self._pending_size_bytes = pending_size_bytes
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._stream_ready = False
        self._starting = asyncio.Lock()
        self._closed = False
        #: The stream events land in (JetStream mode), once known.
        self.stream: str | None = None
        self.duplicates = 0  # PubAcks that said "duplicate" (a re-sent batch)
        self._pongs: set[asyncio.Future[Any]] = set()  # our batches' PONGs still awaited

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (and, for JetStream, make sure the stream exists); BusUnavailable if that fails."""
        async with self._starting:
            if self._closed:
                raise unavailable(self.name, "publisher is closed")
            if self._nc is None:
                self._nc = await self._connect()
            if self._jetstream and not self._stream_ready:
                await self._ensure_stream()

    async def _connect(self) -> Client:
        s = self._settings
        try:
            return await nats.connect(
                name="livekit-bus-bridge",
                **auth_options(s),
                connect_timeout=self._connect_timeout_s,  # float seconds work
                reconnect_time_wait=self._reconnect_time_wait_s,
                max_reconnect_attempts=-1,  # the outbox holds events; the client keeps trying
                allow_reconnect=True,
                pending_size=self._pending_size_bytes,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise unavailable(self.name, "cannot connect", exc) from exc

    async def _ensure_stream(self) -> None:
        assert self._nc is not None
        js = self._js = self._nc.jetstream(timeout=self._publish_timeout_s)
        subjects = f"{self._prefix}.events.>"
        try:
            try:
                self.stream = await js.find_stream_name_by_subject(subjects)
            except nats.js.errors.NotFoundError:
                await js.add_stream(StreamConfig(name=self._stream, subjects=[subjects]))
                self.stream = self._stream
                log.info("nats: created JetStream stream %s for %s", self._stream, subjects)
        except nats.js.errors.APIError as exc:
            raise unavailable(self.name, f"cannot find or create a stream for {subjects}", exc) from exc
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise unavailable(self.name, "JetStream did not answer", exc) from exc
        self._stream_ready = True

    async def aclose(self) -> None:
        self._closed = True
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                log.debug("nats: error while closing: %s", type(exc).__name__)

    # nats-py calls these on its own task; the outbox logs the outage once, so these are debug only.
    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats: client error %s", type(exc).__name__)

    async def _on_disconnected(self) -> None:
        # Before any reconnect: the batches whose PING went down with the connection are unconfirmed, now,
        # so the outbox sends them again before anything goes out on the next connection.
        log.debug("nats: disconnected")
        for pong in list(self._pongs):
            if not pong.done():
                pong.set_exception(ConnectionResetError("nats: connection lost before the PONG"))

    async def _on_reconnected(self) -> None:
        log.debug("nats: reconnected")

    # -- publishing ----------------------------------------------------------------------------------

    async def publish_batch(self, events: Sequence[CloudEvent]) -> None:
        await (await self.submit_batch(events))

    async def submit_batch(self, events: Sequence[CloudEvent]) -> asyncio.Future[None]:
        """Core: write the batch and its flush PING now; the future is done when the PONG comes. JetStream:
        the future publishes and waits for the PubAcks (``pipelining`` is off there)."""
        if not events:
            return nothing_to_confirm()
        if self._nc is None or (self._jetstream and not self._stream_ready):
            await self.start()
        nc = self._nc
        assert nc is not None
        if not nc.is_connected:
            raise unavailable(self.name, "not connected")
        if self._jetstream:
            messages = self._encode(events)
            self._check_sizes(nc, ((header_block_size(h), payload) for _, payload, h in messages))
            return asyncio.ensure_future(self._jetstream_confirmed(messages))
        framed = self._frame(events)
        self._check_sizes(nc, ((len(block), payload) for _, block, payload in framed))
        pong = self._publish_core(nc, len(events), framed)
        return confirmation(self.name, (pong,), self._publish_timeout_s, self._translate)

    def _check_sizes(self, nc: Client, messages: Iterable[tuple[int, bytes]]) -> None:
        """Before anything is sent, so a refused batch was not half published. The server holds headers
        and payload together to ``max_payload``, and closes the connection of a client that sends more:
        every batch in flight would be lost with it, and this one retried forever."""
        limit = nc.max_payload
        for header_bytes, payload in messages:
            if header_bytes + len(payload) > limit:
                raise rejected(
                    self.name,
                    f"an event of {len(payload)} bytes and {header_bytes} bytes of headers exceeds the "
                    f"server's max_payload ({limit} bytes)",
                )

    async def _jetstream_confirmed(self, messages: list[tuple[str, bytes, dict[str, str]]]) -> None:
        with translated(self._translate):
            async with asyncio.timeout(self._publish_timeout_s):
                await self._publish_jetstream(messages)

    def _translate(self, exc: BaseException) -> BusError | None:
        if isinstance(exc, nats.errors.MaxPayloadError):
            return rejected(self.name, "an event exceeds the server's max_payload", exc)
        if isinstance(exc, nats.js.errors.APIError):
            if exc.code in _JS_REJECT_CODES:
                return rejected(self.name, f"JetStream refused a record (code {exc.code})", exc)
            if isinstance(exc, nats.js.errors.NoStreamResponseError):
                self._stream_ready = False  # the stream may be gone: look again before the retry
            return unavailable(self.name, f"JetStream error (code {exc.code})", exc)
        if isinstance(exc, (nats.errors.Error, OSError, TimeoutError, asyncio.CancelledError)):
            return unavailable(self.name, "publish not confirmed", exc)
        return None

    def _encode(self, events: Sequence[CloudEvent]) -> list[tuple[str, bytes, dict[str, str]]]:
        """``(subject, payload, headers)`` per event for nats-py's JetStream publish."""
        prefix = self._prefix
        if self._binary:
            out = [(nats_subject(prefix, e), e.data, nats_binary_headers(e)) for e in events]
            for (_, _, headers), e in zip(out, events, strict=True):
                headers[_MSG_ID] = e.id
            return out
        return [
            (nats_subject(prefix, e), nats_structured(e), {**NATS_STRUCTURED_HEADERS, _MSG_ID: e.id})
            for e in events
        ]

    def _frame(self, events: Sequence[CloudEvent]) -> list[tuple[str, bytes, bytes]]:
        """``(subject, header block, payload)`` per event for core NATS: the structured block is the same
        for every event; a binary one is joined from parts encoded once per session and type."""
        prefix = self._prefix
        if self._binary:
            return [(nats_subject(prefix, e), nats_binary_block(e), e.data) for e in events]
        return [(nats_subject(prefix, e), _STRUCTURED_BLOCK, nats_structured(e)) for e in events]

    def _publish_core(
        self, nc: Client, count: int, framed: list[tuple[str, bytes, bytes]]
    ) -> asyncio.Future[Any]:
        """Write the batch as one buffer of ``HPUB`` commands (:mod:`bridge.bus.nats_wire`) with a PING
        behind it; returns the future the PONG resolves, which confirms the server read all of it."""
        frames = batch_frames(framed)
        # Straight onto the socket with our own PING, registered where nats-py's reader resolves PONGs in
        # order. Not ``publish`` + ``flush()``: ``publish`` queues for a flusher task, which can put the
        # PING first (a PONG that confirms nothing), and ``flush()`` returns at once, confirming nothing,
        # when the connection's reader has just died. A reconnect drops registered PONG futures: the
        # caller's timeout then reports the batch unconfirmed. One write: one syscall per batch.
        transport = getattr(nc, "_transport", None)
        pongs = getattr(nc, "_pongs", None)
        if transport is None or not isinstance(pongs, list):
            raise unavailable(self.name, "not connected")
        pong: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pongs.append(pong)
        self._pongs.add(pong)  # ours only: nats-py's own keepalive PINGs are left alone
        pong.add_done_callback(self._pongs.discard)
        transport.write(frames + _PING)
        nc.stats["out_msgs"] += count
        nc.stats["out_bytes"] += sum(len(payload) for _, _, payload in framed)
        return pong

    async def _publish_jetstream(self, messages: list[tuple[str, bytes, dict[str, str]]]) -> None:
        js = self._js
        assert js is not None
        futures: list[asyncio.Future[PubAck]] = []
        try:
            for subject, payload, headers in messages:
                fut = await js.publish_async(
                    subject, payload, wait_stall=self._publish_timeout_s, headers=headers
                )
                futures.append(fut)
            acks = await asyncio.gather(*futures)
        finally:
            # On a timeout or error, pending futures would hold publish_async's semaphore forever.
            for fut in futures:
                if not fut.done():
                    fut.cancel()
        self.duplicates += sum(1 for ack in acks if getattr(ack, "duplicate", False))
