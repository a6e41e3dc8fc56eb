"""The bridge's publisher PeerConnection: how the bridge *sends* into a room.

On the v0 ``/rtc`` path a client sends data (and media) on its own, client-offered PeerConnection;
the server-offered subscriber PC (:mod:`bridge.media.peer`) only receives. :class:`PublisherPeer`
creates that publisher PC the first time something has to be sent (research ``media-aiortc.md``
§5.1): ``MAX_BUNDLE`` and the session's explicit ICE server list, its own ``_reliable`` (ordered) and
``_lossy`` (unordered, no retransmits) channels, an ``offer`` request with a fresh ``id``, and the
``answer`` response LiveKit sends back (matched by that ``id``). PUBLISHER-target trickle candidates
wait, in a bounded list, until the answer is applied.

Tracks (:meth:`PublisherPeer.add_track`) are added to the connected PC and announced by a re-offer
on the same PC; removing one turns its m-line inactive. If the PC fails or closes it is dropped and
the next send builds a new one; a send that cannot get an open channel within its deadline raises
:class:`~bridge.errors.NegotiationFailed` (the caller may fall back to the server API).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from livekit.protocol import rtc

from bridge.errors import MediaError, NegotiationFailed
from bridge.media.peer import ice_servers_to_aiortc, parse_trickle

log = logging.getLogger(__name__)

__all__ = ["PublisherPeer", "PublisherStats", "codec_preferences"]

RELIABLE: Final = "_reliable"
LOSSY: Final = "_lossy"
PENDING_CANDIDATES: Final = 64  # server candidates kept until the answer is applied
MAX_BUFFERED_BYTES: Final = 4 * 1024 * 1024  # per channel: beyond it a send is refused (backpressure)


def codec_preferences(kind: str, mime_type: str) -> list[Any]:
    """aiortc's codecs of ``mime_type`` (H.264: packetization-mode 1 only) plus RTX, for an m-line."""
    chosen = [
        codec
        for codec in RTCRtpSender.getCapabilities(kind).codecs
        if codec.mimeType.lower() == mime_type.lower()
        and codec.parameters.get("packetization-mode", "1") == "1"
    ]
    if not chosen:
        raise MediaError(f"aiortc cannot send {mime_type}")
    rtx = [
        codec
        for codec in RTCRtpSender.getCapabilities(kind).codecs
        if codec.mimeType.lower().endswith("/rtx")
    ]
    return chosen + rtx


@dataclass
class PublisherStats:
    """Counters of one :class:`PublisherPeer` (cumulative across PCs)."""

    pcs_created: int = 0
    offers: int = 0
    answers: int = 0
    stale_answers: int = 0
    negotiation_failures: int = 0
    candidates_added: int = 0
    candidates_dropped: int = 0  # invalid, or beyond PENDING_CANDIDATES
    data_sent: int = 0
    data_bytes_sent: int = 0
    send_refused: int = 0  # channel buffer full, or the channel closed under us
    renegotiations: int = 0  # offers after the first one on a PC (tracks added or removed)


class PublisherPeer:
    """See the module docstring. ``send`` emits a ``SignalRequest`` (offers and nothing else)."""

    def __init__(self, *, send: Callable[[rtc.SignalRequest], None], room: str) -> None:
        self._send = send
        self._room = room
        self._ice_servers: list[Any] = []
        self._pc: Any | None = None
        self._channels: dict[str, Any] = {}
        self._open = asyncio.Event()
        self._answer: asyncio.Future[rtc.SessionDescription] | None = None
        self._offer_id = 0
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._pending: list[Any] = []
        self._transceivers: dict[str, Any] = {}  # AddTrackRequest cid -> sending transceiver
        self._closed = False
        self.stats = PublisherStats()

    def set_ice_servers(self, servers: Sequence[rtc.ICEServer]) -> None:
        """STUN/TURN servers for the next PC (the current one keeps its own)."""
        self._ice_servers = ice_servers_to_aiortc(servers)

    @property
    def ready(self) -> bool:
        """True when the PC is connected and both data channels are open."""
        return (
            self._pc is not None
            and self._pc.connectionState == "connected"
            and all(c.readyState == "open" for c in self._channels.values())
            and len(self._channels) == 2
        )

    async def send_data(self, payload: bytes, *, reliable: bool, timeout_s: float) -> None:
        """Send one serialized ``DataPacket``, setting the PC up first if needed.

        Raises :class:`NegotiationFailed` when no open channel was available within ``timeout_s`` and
        :class:`MediaError` when the channel refused the message (buffer full, or it closed).
        """
        await self.ensure_ready(timeout_s)
        channel = self._channels.get(RELIABLE if reliable else LOSSY)
        if channel is None or channel.readyState != "open":
            self.stats.send_refused += 1
            raise MediaError("the bridge's data channel closed before the message was sent")
        if channel.bufferedAmount > MAX_BUFFERED_BYTES:
            self.stats.send_refused += 1
            raise MediaError(f"the bridge's {channel.label} channel is full ({MAX_BUFFERED_BYTES} B queued)")
        try:
            channel.send(payload)
        except Exception as exc:  # aiortc raises ValueError/InvalidStateError variants
            self.stats.send_refused += 1
            raise MediaError(f"data channel send failed: {type(exc).__name__}: {exc}") from exc
        self.stats.data_sent += 1
        self.stats.data_bytes_sent += len(payload)

    async def ensure_ready(self, timeout_s: float) -> None:
        """Negotiate the publisher PC unless it is usable already; see :meth:`send_data`."""
        if self.ready:
            return
        try:
            await asyncio.wait_for(self._negotiate_once(), timeout_s)
        except TimeoutError:
            self.stats.negotiation_failures += 1
            await self._drop_pc()  # a half-negotiated PC is useless: start over next time
            raise NegotiationFailed(
                f"the publisher PeerConnection did not open its data channels within {timeout_s:g}s"
            ) from None

    def handle_answer(self, answer: rtc.SessionDescription) -> None:
        """LiveKit's answer to our offer (SignalResponse ``answer``); others are stale and dropped."""
        waiting = self._answer
        if waiting is None or waiting.done() or (answer.id and answer.id != self._offer_id):
            self.stats.stale_answers += 1
            log.debug("room=%s stale publisher answer %d ignored", self._room, answer.id)
            return
        waiting.set_result(answer)

    async def handle_trickle(self, trickle: rtc.TrickleRequest) -> None:
        """A server candidate for the publisher PC (``target`` PUBLISHER)."""
        if self._closed:
            return
        try:
            candidate = parse_trickle(trickle.candidateInit)
        except (ValueError, TypeError):
            self.stats.candidates_dropped += 1
            return
        pc = self._pc
        if pc is None or pc.remoteDescription is None:
            if candidate is not None:
                if len(self._pending) >= PENDING_CANDIDATES:
                    self.stats.candidates_dropped += 1
                else:
                    self._pending.append(candidate)
            return
        await self._add_candidate(pc, candidate)
        if trickle.final:
            await self._add_candidate(pc, None)

    async def reset(self) -> None:
        """Forget the PC (full rejoin): the next send negotiates a new one."""
        async with self._lock:
            await self._drop_pc()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._drop_pc()

    # ------------------------------------------------------------------ internals

    async def _negotiate_once(self) -> None:
        async with self._lock:  # one negotiation at a time; a waiter finds it done
            if self._closed:
                raise NegotiationFailed("the room session is closing")
            if self.ready:
                return
            if self._pc is not None and self._pc.connectionState in ("failed", "closed"):
                await self._drop_pc()
            if self._pc is None:
                await self._offer()
            await self._open.wait()

    async def _offer(self) -> None:
        config = RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE, iceServers=list(self._ice_servers))
        pc: Any = RTCPeerConnection(configuration=config)
        self._pc = pc
        self.stats.pcs_created += 1
        self._open.clear()
        self._channels = {
            RELIABLE: pc.createDataChannel(RELIABLE, ordered=True),
            LOSSY: pc.createDataChannel(LOSSY, ordered=False, maxRetransmits=0),
        }
        for channel in self._channels.values():
            channel.on("open", self._channel_opened)
            channel.on("close", self._channel_closed)

        @pc.on("connectionstatechange")  # type: ignore[untyped-decorator]
        def _on_state() -> None:
            log.info("room=%s publisher pc %s", self._room, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                self._open.clear()

        await self._exchange(pc)

    async def _exchange(self, pc: Any) -> None:
        """One offer/answer round on ``pc`` (the first one, or a renegotiation after a track change)."""
        await pc.setLocalDescription(await pc.createOffer())
        self._offer_id = next(self._ids)
        waiting = self._answer = asyncio.get_running_loop().create_future()
        self.stats.offers += 1
        offer = rtc.SessionDescription(type="offer", sdp=pc.localDescription.sdp, id=self._offer_id)
        self._send(rtc.SignalRequest(offer=offer))
        try:
            answer = await waiting
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled ourselves
            raise NegotiationFailed("the publisher PC was reset before LiveKit answered") from None
        self.stats.answers += 1
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
        except Exception as exc:  # aiortc raises a variety of types; translate at the boundary
            self.stats.negotiation_failures += 1
            await self._drop_pc()
            raise NegotiationFailed(f"publisher answer {answer.id}: {type(exc).__name__}: {exc}") from exc
        pending, self._pending = self._pending, []
        for candidate in pending:
            await self._add_candidate(pc, candidate)

    async def add_track(self, track: Any, *, cid: str, timeout_s: float, mime_type: str = "") -> None:
        """Send ``track`` on the publisher PC (set up first if needed) and renegotiate.

        ``cid`` is the ``AddTrackRequest.cid`` LiveKit already answered with ``track_published``: it goes
        into the m-line's msid, which is how LiveKit ties the m-line to the announced track. A
        ``mime_type`` (``video/H264``...) restricts the m-line to that codec: a track that yields encoded
        packets must be sent with the codec they are in. Raises :class:`NegotiationFailed` when the PC
        could not be set up or renegotiated within ``timeout_s``.
        """
        await self.ensure_ready(timeout_s)
        async with self._lock:
            pc = self._pc
            if pc is None or self._closed:
                raise NegotiationFailed("the publisher PeerConnection closed before the track was added")
            transceiver = pc.addTransceiver(track, direction="sendonly")
            if mime_type:
                transceiver.setCodecPreferences(codec_preferences(track.kind, mime_type))
            # aiortc has no API for the msid track id; its SDP writer reads this sender field.
            transceiver.sender._track_id = cid
            self._transceivers[cid] = transceiver
            await self._renegotiate(pc, timeout_s)

    def sending_codec(self, cid: str) -> str:
        """The codec LiveKit's answer chose for the track added as ``cid`` (``video/H264``...); "" if none."""
        transceiver = self._transceivers.get(cid)
        pc = self._pc
        if transceiver is None or pc is None or pc.remoteDescription is None:
            return ""
        for media in aiortc_sdp.SessionDescription.parse(pc.remoteDescription.sdp).media:
            if media.rtp.muxId == transceiver.mid:
                codecs = [c for c in media.rtp.codecs if not c.mimeType.lower().endswith("/rtx")]
                return str(codecs[0].mimeType) if codecs else ""
        return ""

    async def remove_track(self, cid: str, *, timeout_s: float) -> None:
        """Stop sending the track added as ``cid``: its m-line goes inactive (aiortc cannot remove it)."""
        async with self._lock:
            transceiver = self._transceivers.pop(cid, None)
            pc = self._pc
            if transceiver is None or pc is None or pc.connectionState != "connected":
                return  # nothing to renegotiate: the PC (and the track with it) is gone
            transceiver.direction = "inactive"
            await self._renegotiate(pc, timeout_s)

    async def _renegotiate(self, pc: Any, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self._exchange(pc), timeout_s)
        except TimeoutError:
            self.stats.negotiation_failures += 1
            raise NegotiationFailed(
                f"LiveKit did not answer the publisher re-offer within {timeout_s:g}s"
            ) from None
        self.stats.renegotiations += 1

    def _channel_opened(self) -> None:
        if all(c.readyState == "open" for c in self._channels.values()):
            self._open.set()

    def _channel_closed(self) -> None:
        self._open.clear()

    async def _add_candidate(self, pc: Any, candidate: Any | None) -> None:
        try:
            await pc.addIceCandidate(candidate)
        except Exception:
            self.stats.candidates_dropped += 1
            log.warning("room=%s publisher addIceCandidate failed", self._room, exc_info=True)
            return
        if candidate is not None:
            self.stats.candidates_added += 1

    async def _drop_pc(self) -> None:
        pc, self._pc = self._pc, None
        self._channels = {}
        self._transceivers.clear()
        self._open.clear()
        self._pending.clear()
        if self._answer is not None and not self._answer.done():
            self._answer.cancel()
        self._answer = None
        if pc is not None:
            with contextlib.suppress(Exception):
                await pc.close()
