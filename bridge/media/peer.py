"""The bridge's own WebRTC side: just enough to stay in a LiveKit room.

LiveKit removes a participant whose *primary* PeerConnection never connects (join verification,
~60 s; research ``livekit-signaling.md`` §9). The bridge joins on the v0 ``/rtc`` path with
``auto_subscribe=0``, so the primary PC is the *subscriber* PC: the server offers it (first a
data-channel-only offer carrying ``_reliable`` / ``_lossy`` / ``_data_track``, later one per
subscription change or ICE restart) and :class:`MediaPeer` answers (§3.3). There is no publisher
PC yet: trickle candidates for it are counted and dropped.

What shapes the implementation (research ``media-aiortc.md`` §1.4, §2, §5.1 to 5.3):

* ``RTCConfiguration(bundlePolicy=MAX_BUNDLE, iceServers=[...])`` always: aiortc's default BALANCED
  policy silently loses media of the 2nd+ m-line of a kind, and ``iceServers=None`` would make it
  add a public STUN server. The list comes from ``JoinResponse`` / ``ReconnectResponse`` and may be
  empty. TURN credentials are never logged (only URL counts are).
* Offers are handled one at a time (a FIFO lock) and the answer echoes the offer ``id``.
* Every offer is pre-checked (:mod:`bridge.media.sdp`): an audio/video m-line with no aiortc codec
  is neutralised (inactive) instead of failing the whole offer; see :meth:`MediaPeer.unsupported_tracks`.
* Remote trickle candidates wait until the remote description is set. aiortc never trickles its
  own candidates: they are in the answer SDP.
* aiortc decodes every received track into an unbounded queue. The bridge taps each receiver's
  encoded frames instead (:class:`_EncodedTap`, on aiortc's private decoder queue, pinned to aiortc
  1.16 and covered by tests): they are counted per track and per kind and handed to ``on_encoded``
  (the recorder), and reach the decoder only when an ``on_frame`` sink wants decoded frames. Each
  remote track still gets a draining task at once, so whatever is decoded is consumed.
* Nothing raised inside an aiortc event callback escapes: it is logged and counted.

Errors from aiortc while applying an offer surface as :class:`bridge.errors.NegotiationFailed`
from :meth:`MediaPeer.handle_offer`; the PC may then be half-configured and the caller should
:meth:`MediaPeer.reset` (full rejoin).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcicetransport import parse_stun_turn_uri
from livekit.protocol import rtc

from bridge.errors import NegotiationFailed
from bridge.media.sdp import OfferCheck, check_offer, restore_answer

log = logging.getLogger(__name__)

__all__ = ["MediaPeer", "MediaPeerStats", "RemoteTrack", "ice_servers_to_aiortc", "parse_trickle"]


@dataclass
class MediaPeerStats:
    """Counters of one :class:`MediaPeer` (cumulative across :meth:`MediaPeer.reset`)."""

    offers: int = 0
    answers: int = 0
    negotiation_failures: int = 0
    unsupported_media: int = 0  # neutralised m-lines, counted once per offer they appear in
    candidates_added: int = 0
    candidates_queued: int = 0
    candidates_invalid: int = 0
    publisher_candidates_ignored: int = 0
    end_of_candidates: int = 0
    data_messages: int = 0
    callback_errors: int = 0
    send_errors: int = 0
    tracks: int = 0
    frames_received: dict[str, int] = field(default_factory=dict)  # track id (or mid) -> frames
    # Per kind ("audio" / "video"): bounded label sets for the metrics endpoint.
    frames_by_kind: dict[str, int] = field(default_factory=dict)  # encoded frames received
    bytes_by_kind: dict[str, int] = field(default_factory=dict)  # encoded payload bytes received
    dropped_by_kind: dict[str, int] = field(default_factory=dict)  # frames a sink had to drop


@dataclass
class RemoteTrack:
    """A received track as the bridge knows it. ``track_id`` follows the m-line's latest mapping."""

    mid: str
    kind: str
    track_id: str
    frames: int = 0
    bytes: int = 0
    dropped: int = 0  # frames a sink (a recording) could not take
    codec: str = ""  # of the latest frame, e.g. "opus", "VP8"
    receiver: Any = field(default=None, repr=False)


def ice_servers_to_aiortc(servers: Sequence[rtc.ICEServer]) -> list[Any]:
    """LiveKit ``ICEServer`` list -> aiortc ``RTCIceServer`` list, dropping URLs aiortc cannot use.

    aiortc raises on a malformed URL when the PC gathers, which would kill the negotiation, so they
    are filtered here. Only the URL scheme and host are logged: the credential must never be.
    """
    converted: list[Any] = []
    for server in servers:
        urls: list[str] = []
        for url in server.urls:
            try:
                parsed = parse_stun_turn_uri(url)
            except ValueError:
                log.warning("ignoring unusable ICE server URL (scheme %r)", url.split(":", 1)[0])
                continue
            if parsed["scheme"] not in ("stun", "turn", "turns"):
                log.warning("ignoring ICE server URL with scheme %r", parsed["scheme"])
                continue
            urls.append(url)
        if urls:
            converted.append(
                RTCIceServer(
                    urls=urls, username=server.username or None, credential=server.credential or None
                )
            )
    return converted


def parse_trickle(candidate_init: str) -> Any | None:
    """``TrickleRequest.candidateInit`` (JSON RTCIceCandidateInit) -> aiortc ``RTCIceCandidate``.

    Returns None for an empty candidate (end-of-candidates). Raises ``ValueError`` (bad JSON or
    candidate) or ``TypeError`` (JSON that is not an object) when unparsable.
    """
    init = json.loads(candidate_init) if candidate_init.strip() else {}
    if not isinstance(init, dict):
        raise TypeError("candidateInit is not a JSON object")
    text = str(init.get("candidate") or "").strip().removeprefix("candidate:")
    if not text:
        return None
    try:
        candidate = aiortc_sdp.candidate_from_sdp(text)
    except (IndexError, KeyError, TypeError) as exc:
        raise ValueError(f"unparsable ICE candidate: {exc!r}") from exc
    mid = init.get("sdpMid")
    index = init.get("sdpMLineIndex")
    candidate.sdpMid = None if mid is None else str(mid)
    candidate.sdpMLineIndex = None if index is None else int(index)
    if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
        candidate.sdpMLineIndex = 0  # LiveKit bundles everything on the first m-line
    return candidate


class MediaPeer:
    """The subscriber PeerConnection of one room session (see the module docstring).

    ``send`` emits a ``SignalRequest`` (answers only, for now); it must not block.
    ``on_data(payload, label)`` is called for every message on a server-created data channel
    (``_reliable`` / ``_lossy`` / ``_data_track``); route by label, not by ``DataPacket.kind``.
    ``on_frame(track, frame)`` is the media-sink hook: called for every decoded frame of every
    received track (frames are dropped after it returns). Without it nothing is decoded.
    ``on_encoded(track, codec, frame)`` sees every encoded frame (aiortc ``RTCRtpCodecParameters`` and
    ``JitterFrame``: ``data``, ``timestamp`` from 0 in the codec's clock) as it is reassembled, and
    ``on_track_ended(track)`` when its receiver stops.
    """

    def __init__(
        self,
        *,
        send: Callable[[rtc.SignalRequest], None],
        room: str,
        on_data: Callable[[bytes, str], None] | None = None,
        on_frame: Callable[[RemoteTrack, Any], None] | None = None,
        on_encoded: Callable[[RemoteTrack, Any, Any], None] | None = None,
        on_track_ended: Callable[[RemoteTrack], None] | None = None,
    ) -> None:
        self._send = send
        self._room = room
        self._on_data = on_data
        self._on_frame = on_frame
        self._on_encoded = on_encoded
        self._on_track_ended = on_track_ended
        self._ice_servers: list[Any] = []
        self._pc: Any | None = None
        self._generation = 0  # bumped by reset(): work for an older PC is dropped
        self._lock = asyncio.Lock()  # one negotiation at a time (asyncio.Lock is FIFO)
        self._pending_candidates: list[Any] = []
        self._end_of_candidates = False
        self._connected = asyncio.Event()
        self._tracks: dict[str, RemoteTrack] = {}  # mid -> track
        self._mid_to_track: dict[str, str] = {}
        self._unsupported: dict[str, str] = {}  # mid -> track id (or "mid:<mid>") of the latest offer
        self._last_offer: rtc.SessionDescription | None = None
        self._last_answer: rtc.SessionDescription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.stats = MediaPeerStats()

    # ---------------------------------------------------------------------------- public API

    def set_ice_servers(self, servers: Sequence[rtc.ICEServer]) -> None:
        """Use these STUN/TURN servers for the next PeerConnection (aiortc fixes them per PC)."""
        self._ice_servers = ice_servers_to_aiortc(servers)
        log.debug("room=%s ice servers: %d usable", self._room, len(self._ice_servers))

    @property
    def connected(self) -> bool:
        return self._pc is not None and self._pc.connectionState == "connected"

    async def wait_connected(self, timeout_s: float) -> bool:
        """True once the subscriber PC is connected; False after ``timeout_s`` (or when closed)."""
        if self.connected:
            return True
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError:
            return False
        return self.connected

    def last_offer_answer(self) -> tuple[rtc.SessionDescription | None, rtc.SessionDescription | None]:
        """The last offer applied and the answer sent for it (what ``SyncState`` wants after a resume)."""
        return self._last_offer, self._last_answer

    def unsupported_tracks(self) -> list[str]:
        """Track ids of the m-lines of the latest offer that had no usable codec (sent inactive)."""
        return list(self._unsupported.values())

    def tracks(self) -> list[RemoteTrack]:
        return list(self._tracks.values())

    def track(self, track_id: str) -> RemoteTrack | None:
        return next((t for t in self._tracks.values() if t.track_id == track_id), None)

    def request_keyframe(self, track_id: str) -> bool:
        """Send a PLI for this video track (e.g. a recording wants to start); False if not receiving it."""
        remote = self.track(track_id)
        if remote is None or remote.kind != "video" or remote.receiver is None:
            return False
        sources = remote.receiver.getSynchronizationSources()
        if not sources:
            return False
        # aiortc has no public PLI call; the receiver's own (private) one is what its NACK path uses.
        self._spawn(remote.receiver._send_rtcp_pli(sources[0].source))
        return True

    async def handle_offer(self, offer: rtc.SessionDescription) -> None:
        """Apply a server offer to the subscriber PC and send the answer (``id`` echoed)."""
        async with self._lock:
            if self._closed:
                log.debug("room=%s offer %d after close, ignored", self._room, offer.id)
                return
            self.stats.offers += 1
            try:
                await self._negotiate(offer)
            except NegotiationFailed:
                self.stats.negotiation_failures += 1
                raise
            except Exception as exc:  # aiortc raises a variety of types; translate at the boundary
                if self._closed:
                    return  # closed under our feet: nothing to report
                self.stats.negotiation_failures += 1
                raise NegotiationFailed(f"offer {offer.id}: {type(exc).__name__}: {exc}") from exc

    async def handle_trickle(self, trickle: rtc.TrickleRequest) -> None:
        """A server ICE candidate. Only SUBSCRIBER-target ones apply (there is no publisher PC)."""
        if self._closed:
            return
        if trickle.target != rtc.SignalTarget.SUBSCRIBER:
            self.stats.publisher_candidates_ignored += 1
            return
        try:
            candidate = parse_trickle(trickle.candidateInit)
        except (ValueError, TypeError):
            self.stats.candidates_invalid += 1
            log.warning("room=%s unparsable trickle candidate ignored", self._room)
            candidate = None
            if not trickle.final:
                return
        pc = self._pc
        if pc is None or pc.remoteDescription is None:
            if candidate is not None:
                self._pending_candidates.append(candidate)
                self.stats.candidates_queued += 1
            self._end_of_candidates = self._end_of_candidates or trickle.final
            return
        if candidate is not None:
            await self._add_candidate(pc, candidate)
        if trickle.final:
            await self._add_candidate(pc, None)

    async def reset(self) -> None:
        """Forget the PC (full rejoin): the next offer starts a fresh subscriber PC."""
        async with self._lock:
            await self._teardown()

    async def aclose(self) -> None:
        """Close everything; idempotent. Does not wait for an in-flight negotiation's lock."""
        if self._closed:
            return
        self._closed = True
        await self._teardown()
        self._connected.set()  # wake waiters; ``connected`` is False now

    # ---------------------------------------------------------------------------- negotiation

    async def _negotiate(self, offer: rtc.SessionDescription) -> None:
        try:
            check = check_offer(offer.sdp, dict(offer.mid_to_track_id))
        except ValueError as exc:
            raise NegotiationFailed(f"offer {offer.id}: {exc}") from exc
        self._note_unsupported(offer, check)
        pc = self._ensure_pc()
        generation = self._generation
        self._mid_to_track.update(check.mid_to_track_id)
        for track in self._tracks.values():  # a reused m-line may now carry another track
            track.track_id = self._mid_to_track.get(track.mid, track.track_id)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=check.sdp, type="offer"))
        await self._flush_candidates(pc)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        if generation != self._generation or self._closed:
            return  # reset or closed meanwhile: this answer belongs to a dead PC
        sdp = restore_answer(pc.localDescription.sdp, check)
        reply = rtc.SessionDescription(type="answer", sdp=sdp, id=offer.id)
        self._last_offer = rtc.SessionDescription()
        self._last_offer.CopyFrom(offer)
        self._last_answer = reply
        self.stats.answers += 1
        self._emit(rtc.SignalRequest(answer=reply))

    def _note_unsupported(self, offer: rtc.SessionDescription, check: OfferCheck) -> None:
        self._unsupported = {item.mid: item.track_id or f"mid:{item.mid}" for item in check.unsupported}
        for item in check.unsupported:
            self.stats.unsupported_media += 1
            log.warning(
                "room=%s offer %d: %s m-line mid=%s track=%s has no usable codec (%s); answered inactive",
                self._room,
                offer.id,
                item.kind,
                item.mid,
                item.track_id,
                ", ".join(item.codecs) or "none",
            )

    async def _flush_candidates(self, pc: Any) -> None:
        queued, self._pending_candidates = self._pending_candidates, []
        for candidate in queued:
            await self._add_candidate(pc, candidate)
        if self._end_of_candidates:
            self._end_of_candidates = False
            await self._add_candidate(pc, None)

    async def _add_candidate(self, pc: Any, candidate: Any | None) -> None:
        try:
            await pc.addIceCandidate(candidate)
        except Exception:
            self.stats.candidates_invalid += 1
            log.exception("room=%s addIceCandidate failed", self._room)
            return
        if candidate is None:
            self.stats.end_of_candidates += 1
        else:
            self.stats.candidates_added += 1

    # ---------------------------------------------------------------------------- the PC

    def _ensure_pc(self) -> Any:
        if self._pc is not None:
            return self._pc
        config = RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE, iceServers=list(self._ice_servers))
        pc: Any = RTCPeerConnection(configuration=config)
        self._pc = pc
        generation = self._generation

        @pc.on("connectionstatechange")  # type: ignore[untyped-decorator]
        def _on_state() -> None:
            self._guard(self._state_changed, pc, generation)

        @pc.on("datachannel")  # type: ignore[untyped-decorator]
        def _on_channel(channel: Any) -> None:
            self._guard(self._listen, channel)

        @pc.on("track")  # type: ignore[untyped-decorator]
        def _on_track(track: Any) -> None:
            self._guard(self._remote_track, pc, track)

        return pc

    def _state_changed(self, pc: Any, generation: int) -> None:
        if generation != self._generation:
            return
        state = pc.connectionState
        log.info("room=%s subscriber pc %s", self._room, state)
        if state == "connected":
            self._connected.set()
        else:
            self._connected.clear()

    def _listen(self, channel: Any) -> None:
        label = str(channel.label)
        log.debug("room=%s data channel %s", self._room, label)

        @channel.on("message")  # type: ignore[untyped-decorator]
        def _on_message(message: bytes | str) -> None:
            payload = message.encode() if isinstance(message, str) else bytes(message)
            self.stats.data_messages += 1
            if self._on_data is not None:
                self._guard(self._on_data, payload, label)

    def _remote_track(self, pc: Any, track: Any) -> None:
        transceiver = next((t for t in pc.getTransceivers() if t.receiver.track is track), None)
        mid = str(transceiver.mid) if transceiver is not None else None
        key = mid if mid is not None else f"track:{track.id}"
        remote = RemoteTrack(
            mid=key,
            kind=str(track.kind),
            track_id=self._mid_to_track.get(key) or str(track.id or key),
            receiver=transceiver.receiver if transceiver is not None else None,
        )
        self._tracks[key] = remote
        self.stats.tracks += 1
        log.info("room=%s receiving %s track %s on mid %s", self._room, remote.kind, remote.track_id, mid)
        tapped = remote.receiver is not None and _EncodedTap.install(remote.receiver, self, remote)
        self._spawn(self._drain(remote, track, counted=tapped))

    def _encoded(self, remote: RemoteTrack, codec: Any, frame: Any) -> None:
        """One encoded frame of ``remote`` (called by its tap, on the event loop)."""
        size = len(frame.data)
        remote.frames += 1
        remote.bytes += size
        remote.codec = str(codec.name)
        stats = self.stats
        stats.frames_received[remote.track_id] = stats.frames_received.get(remote.track_id, 0) + 1
        stats.frames_by_kind[remote.kind] = stats.frames_by_kind.get(remote.kind, 0) + 1
        stats.bytes_by_kind[remote.kind] = stats.bytes_by_kind.get(remote.kind, 0) + size
        if self._on_encoded is not None:
            self._guard(self._on_encoded, remote, codec, frame)

    def count_dropped(self, remote: RemoteTrack, frames: int = 1) -> None:
        """A sink dropped ``frames`` of ``remote`` (its bounded queue was full)."""
        remote.dropped += frames
        self.stats.dropped_by_kind[remote.kind] = self.stats.dropped_by_kind.get(remote.kind, 0) + frames

    def wants_decoded(self) -> bool:
        return self._on_frame is not None

    async def _drain(self, remote: RemoteTrack, track: Any, *, counted: bool) -> None:
        """Consume every decoded frame: aiortc's per-track queue is unbounded."""
        frames = self.stats.frames_received
        try:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return  # track ended (PC closed)
                if not counted:  # no tap: count decoded frames instead
                    remote.frames += 1
                    frames[remote.track_id] = frames.get(remote.track_id, 0) + 1
                if self._on_frame is not None:
                    self._guard(self._on_frame, remote, frame)
        finally:
            if self._on_track_ended is not None:
                self._guard(self._on_track_ended, remote)

    # ---------------------------------------------------------------------------- plumbing

    def _emit(self, request: rtc.SignalRequest) -> None:
        try:
            self._send(request)
        except Exception:
            self.stats.send_errors += 1
            log.exception("room=%s send(%s) failed", self._room, request.WhichOneof("message"))

    def _guard(self, callback: Callable[..., None], *args: Any) -> None:
        # These run inside aiortc's event emitters: an exception there would break aiortc.
        try:
            callback(*args)
        except Exception:
            self.stats.callback_errors += 1
            log.exception("room=%s callback %s failed", self._room, getattr(callback, "__name__", callback))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.stats.callback_errors += 1
            log.error("room=%s media task failed", self._room, exc_info=task.exception())

    async def _teardown(self) -> None:
        self._generation += 1
        pc, self._pc = self._pc, None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if pc is not None:
            try:
                await pc.close()
            except Exception:
                log.exception("room=%s closing the subscriber pc failed", self._room)
        self._pending_candidates.clear()
        self._end_of_candidates = False
        self._connected.clear()
        self._tracks.clear()
        self._mid_to_track.clear()
        self._unsupported.clear()
        self._last_offer = self._last_answer = None


class _EncodedTap:
    """Stands in for an aiortc receiver's private decoder queue (aiortc 1.16).

    ``RTCRtpReceiver._handle_rtp_packet`` (on the event loop) puts each reassembled ``(codec,
    JitterFrame)`` into ``self.__decoder_queue``, read by its decoder thread; ``None`` stops the thread.
    The attribute is looked up at every put, and the thread is given it when the receiver starts, which
    may be before or after the tap is installed: the tap therefore reads from the queue it replaced too.
    It forwards ``None`` always and frames only when the peer wants decoded frames.
    """

    ATTRIBUTE: Final = "_RTCRtpReceiver__decoder_queue"

    def __init__(self, inner: Any, peer: MediaPeer, remote: RemoteTrack) -> None:
        self._inner = inner
        self._peer = peer
        self._remote = remote

    @classmethod
    def install(cls, receiver: Any, peer: MediaPeer, remote: RemoteTrack) -> bool:
        inner = getattr(receiver, cls.ATTRIBUTE, None)
        if inner is None or not hasattr(inner, "put"):
            log.warning("aiortc receiver has no %s: encoded frames are not tapped", cls.ATTRIBUTE)
            return False
        if isinstance(inner, _EncodedTap):
            inner._remote = remote  # a reused m-line: same receiver, new track
            return True
        setattr(receiver, cls.ATTRIBUTE, cls(inner, peer, remote))
        return True

    def get(self, *args: Any, **kwargs: Any) -> Any:
        """The decoder thread's side (when it starts after the tap was installed)."""
        return self._inner.get(*args, **kwargs)

    def put(self, item: Any) -> None:
        if item is None:
            self._inner.put(None)
            return
        codec, frame = item
        self._peer._encoded(self._remote, codec, frame)
        if self._peer.wants_decoded():
            self._inner.put(item)
