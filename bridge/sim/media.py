"""The simulator's WebRTC side: aiortc PeerConnections for one connected participant.

One :class:`ParticipantMedia` per client connection, seen from the server. The signaling layer
(``bridge/sim/session.py``) feeds it the client's offers, answers and trickle candidates and gets
offers, answers and ``media_sections_requirement`` back through ``send``.

Modes (research: ``media-aiortc.md`` §4, ``livekit-signaling.md`` §3.3):

* ``DUAL_PC`` (v0 ``/rtc``). The *publisher* PC is the client's: it offers, we answer (echoing the
  offer ``id``). The *subscriber* PC is ours: we offer (ids 1, 2, …) and apply the client's answer.
  With ``subscriber_primary`` :meth:`ParticipantMedia.start` creates the subscriber PC at once with
  the server-side ``_reliable`` / ``_lossy`` / ``_data_track`` channels and sends a data-only offer;
  downstream data uses those channels. Without it the publisher PC is primary, downstream data uses
  the channels the client created on it, and a subscriber PC exists only once a track is sent.
* ``SINGLE_PC`` (v1 ``/rtc/v1``). The client offers its one PC (possibly first via
  ``JoinRequest.publisher_offer``); we answer with ``mid_to_track_id`` for the m-lines we send on.
  Data in both directions uses the client-created channels.

Sending tracks to the client. Every sending transceiver carries a :class:`_SwitchTrack`, a
persistent track whose *source* can be swapped. aiortc's sender loop dies for good when its track
ends, and a transceiver (or, in v1, a client-provided recvonly slot) has to be reusable after an
unsubscribe or after the publisher left, so the sender only ever sees the switch. The msid is set on
the sender as ``<participant_sid>|<track_sid> <track_sid>`` (what the LiveKit SDKs parse). In v0 a
new transceiver (or an idle one of the same kind) goes into a fresh subscriber offer. In v1 the
track waits for a free recvonly slot in the client's next offer; :meth:`add_subscribed_track`
sends ``media_sections_requirement`` with the missing slot count, possibly ``0/0``: the Rust and JS
SDKs renegotiate on every requirement, so ``0/0`` is how the server asks for a re-offer when free
slots already exist.

Receiving tracks from the client. Each track aiortc reports becomes a
:class:`~bridge.sim.tracks.TrackSource` keyed by the msid track id of its m-line (for the LiveKit
SDKs that is the ``AddTrackRequest.cid``), started at once so the decoded frames are consumed and
counted (:attr:`ParticipantMedia.received_frames`), and handed to ``on_track``. Other participants'
:meth:`add_subscribed_track` accepts that ``TrackSource`` (each subscriber gets its own relay proxy)
or a plain aiortc track, which then belongs to that one subscriber.

Codecs. aiortc offers VP8 first, so a subscriber receives VP8 unless :meth:`add_subscribed_track` is
given the track's codec (its ``TrackInfo.mime_type``, e.g. ``video/H264``): the sending transceiver
then offers that codec only (``setCodecPreferences``, RTX kept), as LiveKit forwards the codec the
publisher chose. aiortc's default codec of a kind (VP8, opus), or one it does not have, leaves the
offer as it was.

Every PC uses ``MAX_BUNDLE`` (aiortc's default BALANCED drops media of the 2nd+ m-line of a kind)
and an empty ICE server list (aiortc otherwise adds a public STUN server). Negotiation on each PC
is serialised by a lock; trickle candidates wait until that PC has a remote description.

Two aiortc pitfalls shape the negotiation order:

* A PC whose data channel exists before its first transceiver must negotiate the data m-line
  first: if the first offer lists a transceiver ahead of it, aiortc's BUNDLE fix-up stops the
  transport they share. The subscriber offer is therefore always data-only first, like LiveKit's.
* aiortc starts a transceiver's sender/receiver only when DTLS is already connected at the time the
  description is applied. Server-initiated renegotiations (v0 offers, v1 re-offer requests) wait
  until the PC is connected; the pending one is sent from the ``connected`` state change.

Checked against the real LiveKit Python SDK (1.2.1) in both modes: connect, subscribed synthetic
audio and video, late subscriptions and unsubscriptions, published audio and video, data both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpHeaderExtensionParameters,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.codecs import HEADER_EXTENSIONS
from aiortc.mediastreams import MediaStreamError
from livekit.protocol import rtc

from bridge.sim.tracks import TrackSource

log = logging.getLogger(__name__)

__all__ = [
    "DATA_LABELS",
    "MediaMode",
    "ParticipantMedia",
    "TrackSource",
    "codec_preferences",
    "enable_simulcast_header_extensions",
    "parse_candidate_init",
    "rtc_configuration",
]

RELIABLE = "_reliable"
LOSSY = "_lossy"
DATA_TRACK = "_data_track"
DATA_LABELS = (RELIABLE, LOSSY, DATA_TRACK)

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
# Ids only matter in our own offers; answers reuse the client's ids.
_RID_EXTENSION_IDS = {RID_URI: 10, REPAIRED_RID_URI: 11}

_PUBLISHER = rtc.SignalTarget.PUBLISHER
_SUBSCRIBER = rtc.SignalTarget.SUBSCRIBER


class MediaMode(enum.Enum):
    DUAL_PC = "dual_pc"  # v0 /rtc: server offers the subscriber PC, answers publisher offers
    SINGLE_PC = "single_pc"  # v1 /rtc/v1: client offers its one PC; server answers


def enable_simulcast_header_extensions() -> None:
    """Let aiortc answer with the RID header extensions (idempotent, process-wide).

    libwebrtc publishes video with simulcast and rejects an answer that drops ``rtp-stream-id``
    ("negotiates simulcast but does not negotiate the RID RTP header extension"). With the
    extensions accepted but no ``a=simulcast`` in the answer, the client sends a single layer.
    """
    video = HEADER_EXTENSIONS["video"]
    present = {ext.uri for ext in video}
    for uri, ext_id in _RID_EXTENSION_IDS.items():
        if uri not in present:
            video.append(RTCRtpHeaderExtensionParameters(id=ext_id, uri=uri))


def rtc_configuration() -> Any:
    """MAX_BUNDLE and no ICE servers: the only configuration the simulator may use."""
    return RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE, iceServers=[])


def codec_preferences(kind: str, mime_type: str) -> list[Any]:
    """The codec capabilities a sending transceiver of ``kind`` should offer for ``mime_type``.

    Empty (aiortc's default order) for no codec, aiortc's first codec of the kind (what it prefers
    anyway) or a codec aiortc lacks; otherwise every profile of that codec followed by RTX.
    """
    codecs = RTCRtpSender.getCapabilities(kind).codecs
    wanted = mime_type.lower()
    chosen = [c for c in codecs if c.mimeType.lower() == wanted]
    if not chosen or codecs[0].mimeType.lower() == wanted:
        return []
    return chosen + [c for c in codecs if c.mimeType.lower().endswith("/rtx")]


def parse_candidate_init(candidate_init: str) -> Any | None:
    """``TrickleRequest.candidateInit`` (JSON RTCIceCandidateInit) -> ``RTCIceCandidate``.

    Returns None for end-of-candidates markers and for candidates that could not work here: mDNS
    ``.local`` hosts (resolving them would multicast off loopback) and TCP candidates.
    """
    try:
        init = json.loads(candidate_init)
    except ValueError:
        log.warning("unparsable candidateInit %r", candidate_init)
        return None
    if not isinstance(init, dict):
        return None
    text = str(init.get("candidate") or "")
    text = text.removeprefix("candidate:").strip()
    if not text:
        return None
    try:
        candidate = aiortc_sdp.candidate_from_sdp(text)
    except (ValueError, IndexError, KeyError):
        log.warning("unparsable ICE candidate %r", text)
        return None
    if str(candidate.protocol).lower() != "udp" or str(candidate.ip).endswith(".local"):
        return None
    mid = init.get("sdpMid")
    index = init.get("sdpMLineIndex")
    candidate.sdpMid = None if mid is None else str(mid)
    candidate.sdpMLineIndex = None if index is None else int(index)
    if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
        candidate.sdpMLineIndex = 0
    return candidate


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Drop a task whose result nobody wants, without 'exception was never retrieved' noise."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


class _SwitchTrack(MediaStreamTrack):
    """A sender's permanent track; forwards frames of whichever source is set (none: it idles).

    A source's ``recv()`` runs as a task raced against a source change, except for a source whose
    ``returns_promptly`` attribute is true (opt-in, :class:`~bridge.sim.tracks.EncodedToneTrack`):
    it is awaited directly, which saves a task and an ``asyncio.wait`` per frame.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._source: Any | None = None
        self._pending: asyncio.Future[Any] | None = None
        self._pending_source: Any | None = None
        self._changed: asyncio.Future[None] | None = None

    @property
    def source(self) -> Any | None:
        return self._source

    def set_source(self, source: Any | None) -> None:
        """Swap the source; the previous one is stopped (it belongs to this switch)."""
        old, self._source = self._source, source
        if old is not None and old is not source:
            old.stop()
        if self._pending is not None and self._pending_source is not source:
            _retrieve(self._pending)
            self._pending = self._pending_source = None
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    async def recv(self) -> Any:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self._changed is None or self._changed.done():
                self._changed = asyncio.get_running_loop().create_future()
            changed = self._changed
            source: Any = self._source
            if source is None:
                await changed
                continue
            if getattr(source, "returns_promptly", False) and self._pending is None:
                # Such a source (e.g. the pre-encoded tone) returns or ends within one frame period
                # even after being swapped out and stopped, so it is awaited directly: no task and
                # no asyncio.wait per frame. A frame of a source swapped meanwhile is dropped.
                try:
                    frame = await source.recv()
                except MediaStreamError:
                    if source is self._source:  # ended: idle until the next source
                        self.set_source(None)
                    continue
                if source is self._source:
                    return frame
                continue
            if self._pending is None:
                self._pending = asyncio.ensure_future(source.recv())
                self._pending_source = source
            pending = self._pending
            await asyncio.wait((pending, changed), return_when=asyncio.FIRST_COMPLETED)
            if not pending.done() or pending is not self._pending:
                continue  # the source was swapped while we waited
            self._pending = self._pending_source = None
            if pending.cancelled():
                continue
            error = pending.exception()
            if error is None:
                return pending.result()
            if not isinstance(error, MediaStreamError):
                log.warning("forwarded %s track failed: %r", self.kind, error)
            if source is self._source:  # ended: idle until the next source
                self._source = None
                if source is not None:
                    source.stop()

    def stop(self) -> None:
        super().stop()
        self.set_source(None)


@dataclass
class _Subscription:
    participant_sid: str
    track_sid: str
    kind: str
    track: Any  # this subscriber's own track (a relay proxy or a dedicated track)
    transceiver: Any | None = None  # None: v1, still waiting for a recvonly slot
    codec: str = ""  # mime type to prefer when offering (v0 only); "": aiortc's default


@dataclass
class _Peer:
    """One RTCPeerConnection and its negotiation state."""

    role: str  # "publisher" (also the single PC) or "subscriber"
    pc: Any
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    server_channels: dict[str, Any] = field(default_factory=dict)
    client_channels: dict[str, Any] = field(default_factory=dict)
    remote_media: dict[str, Any] = field(default_factory=dict)  # mid -> aiortc sdp.MediaDescription
    offer_id: int = 0
    renegotiate: bool = False  # subscriber: an offer is due once possible
    reoffer_wanted: bool = False  # single PC: ask the client to re-offer once connected


def _msid_track_id(media: Any) -> str | None:
    """The track id of an m-line's ``a=msid:<stream> <track>`` (or of its ``a=ssrc … msid:``)."""
    candidates = [media.msid] + [ssrc.msid for ssrc in media.ssrc]
    for msid in candidates:
        if msid:
            parts = str(msid).split()
            if len(parts) >= 2 and parts[1] != "-":
                return parts[1]
    return None


class ParticipantMedia:
    """aiortc PeerConnections of one participant connection, seen from the server side.

    ``send`` emits a SignalResponse (offer / answer / media_sections_requirement) to the client.
    ``on_data(payload, label)`` is called for every data-channel message the client sends.
    ``on_track(track_id, source)`` is called for each track the client publishes: ``track_id`` is
    the msid track id, i.e. the AddTrackRequest ``cid``; ``source`` is a started
    :class:`~bridge.sim.tracks.TrackSource` (pass it to other participants' ``add_subscribed_track``).
    ``on_connected()`` is called once, when the primary PeerConnection reaches ``connected``.
    """

    def __init__(
        self,
        *,
        mode: MediaMode,
        subscriber_primary: bool,
        send: Callable[[rtc.SignalResponse], None],
        on_data: Callable[[bytes, str], None],
        on_track: Callable[[str, Any], None],
        on_connected: Callable[[], None],
    ) -> None:
        self.mode = mode
        # Single-PC has no subscriber PC, whatever the caller passes.
        self.subscriber_primary = subscriber_primary and mode is MediaMode.DUAL_PC
        self._send = send
        self._on_data = on_data
        self._on_track = on_track
        self._on_connected = on_connected
        self._pub: _Peer | None = None
        self._sub: _Peer | None = None
        self._queued: dict[str, list[Any]] = {"publisher": [], "subscriber": []}
        self._sources: dict[str, TrackSource] = {}
        self._source_by_mid: dict[str, TrackSource] = {}
        self._subs: dict[str, _Subscription] = {}
        self._requested = {"audio": 0, "video": 0}  # v1 slots asked for since the last offer
        self._sub_offer_id = 0
        self._connected_fired = False
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ stats

    @property
    def sources(self) -> dict[str, TrackSource]:
        """The client's published tracks by msid track id."""
        return dict(self._sources)

    @property
    def received_frames(self) -> dict[str, int]:
        return {track_id: source.frames for track_id, source in self._sources.items()}

    @property
    def received_bytes(self) -> dict[str, int]:
        return {track_id: source.bytes for track_id, source in self._sources.items()}

    @property
    def subscribed_track_sids(self) -> list[str]:
        return list(self._subs)

    @property
    def connected(self) -> bool:
        peer = self._primary()
        return peer is not None and peer.pc.connectionState == "connected"

    # ------------------------------------------------------------------ negotiation

    async def start(self) -> None:
        """Dual-PC subscriber-primary: build the subscriber PC and send the first offer."""
        if not self.subscriber_primary:
            return
        peer = self._ensure_sub()
        if peer.offer_id == 0:
            await self._negotiate_subscriber()

    async def handle_offer(self, offer: rtc.SessionDescription) -> None:
        """A client offer (publisher PC, or the single PC): answer it, echoing ``id``."""
        peer = self._ensure_pub()
        async with peer.lock:
            parsed = aiortc_sdp.SessionDescription.parse(offer.sdp)
            peer.remote_media = {str(m.rtp.muxId): m for m in parsed.media}
            await peer.pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            await self._flush_candidates(peer)
            self._rekey_sources(peer)
            if self.mode is MediaMode.SINGLE_PC:
                self._requested = {"audio": 0, "video": 0}
                self._fill_slots(peer)
            answer = await peer.pc.createAnswer()
            await peer.pc.setLocalDescription(answer)
            self._emit(
                rtc.SignalResponse(
                    answer=rtc.SessionDescription(
                        type="answer",
                        sdp=peer.pc.localDescription.sdp,
                        id=offer.id,
                        mid_to_track_id=self._mid_to_track_id(peer),
                    )
                )
            )
            if self.mode is MediaMode.SINGLE_PC and self._pending():
                if peer.pc.connectionState == "connected":
                    self._request_slots(peer)
                else:
                    peer.reoffer_wanted = True

    async def handle_answer(self, answer: rtc.SessionDescription) -> None:
        """The client's answer to our subscriber offer."""
        peer = self._sub
        if peer is None:
            log.warning("answer without a subscriber PeerConnection, ignored")
            return
        async with peer.lock:
            if peer.pc.signalingState != "have-local-offer":
                log.warning("answer %d in state %s, ignored", answer.id, peer.pc.signalingState)
                return
            # Several SDKs always send id 0; a non-zero mismatch is a stale answer (e.g. to an
            # offer re-sent after a resume) that must not be applied to the newer offer.
            if answer.id and answer.id != peer.offer_id:
                log.info("stale answer %d (waiting for %d), ignored", answer.id, peer.offer_id)
                return
            await peer.pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
            await self._flush_candidates(peer)
            if peer.renegotiate:
                await self._offer_locked(peer)

    async def handle_trickle(self, trickle: rtc.TrickleRequest) -> None:
        candidate = parse_candidate_init(trickle.candidateInit)
        if candidate is None:
            return
        role = (
            "subscriber" if self.mode is MediaMode.DUAL_PC and trickle.target == _SUBSCRIBER else "publisher"
        )
        peer = self._sub if role == "subscriber" else self._pub
        if peer is None:
            self._queued[role].append(candidate)
            return
        async with peer.lock:
            if peer.pc.remoteDescription is None:
                self._queued[role].append(candidate)
            else:
                await self._add_candidate(peer, candidate)

    async def renegotiate(self) -> None:
        """After a resume: a fresh subscriber offer (dual-PC); in single-PC, ask for a re-offer."""
        if self.mode is MediaMode.SINGLE_PC:
            if self._pub is not None:
                self._ask_reoffer(self._pub, force=True)
            return
        peer = self._sub
        if peer is None:
            return
        async with peer.lock:
            if peer.pc.signalingState == "have-local-offer":
                # The client may have lost the outstanding offer with the old connection.
                self._send_offer(peer)
            else:
                await self._offer_locked(peer, force=True)

    # ------------------------------------------------------------------ data

    def send_data(self, payload: bytes, label: str) -> bool:
        """Send on the server->client channel with this label; False when it is not open."""
        if self.subscriber_primary:
            channel = self._sub.server_channels.get(label) if self._sub else None
        else:
            channel = self._pub.client_channels.get(label) if self._pub else None
        if channel is None or channel.readyState != "open":
            return False
        channel.send(payload)
        return True

    # ------------------------------------------------------------------ outgoing tracks

    async def add_subscribed_track(
        self, participant_sid: str, track_sid: str, track: Any, *, codec: str = ""
    ) -> None:
        """Send ``track`` (a :class:`TrackSource` or an aiortc track owned from now on) to the client;
        ``codec``: the mime type to send it in (v0; see the module docstring), else aiortc's default."""
        if self._closed:
            return
        if track_sid in self._subs:
            await self.remove_subscribed_track(track_sid)
        own = track.subscribe() if isinstance(track, TrackSource) else track
        sub = _Subscription(participant_sid, track_sid, str(own.kind), own, codec=codec)
        self._subs[track_sid] = sub
        if self.mode is MediaMode.SINGLE_PC:
            peer = self._pub
            if peer is None:
                return  # the client's first offer will find it pending
            async with peer.lock:
                if peer.remote_media:
                    self._ask_reoffer(peer)
            return
        peer = self._ensure_sub()
        async with peer.lock:
            if self.subscriber_primary and peer.offer_id == 0:
                # The data m-line must be negotiated first (as LiveKit does). If the first offer
                # put a transceiver ahead of the pre-created SCTP transport, aiortc's BUNDLE
                # fix-up would stop the transport both share and the PC would never connect.
                await self._offer_locked(peer)
            transceiver = self._idle_transceiver(peer, sub.kind)
            if transceiver is None:
                transceiver = peer.pc.addTransceiver(_SwitchTrack(sub.kind), direction="sendonly")
            self._attach(sub, transceiver)
            await self._offer_locked(peer)

    async def remove_subscribed_track(self, track_sid: str) -> None:
        sub = self._subs.pop(track_sid, None)
        if sub is None:
            return
        if sub.transceiver is None:
            sub.track.stop()
            return
        self._detach(sub)
        if self._closed:
            return
        if self.mode is MediaMode.SINGLE_PC:
            # Only a client offer can turn the m-line inactive; 0/0 asks for one.
            if self._pub is not None:
                self._ask_reoffer(self._pub)
            return
        if self._sub is not None:
            async with self._sub.lock:
                await self._offer_locked(self._sub)

    # ------------------------------------------------------------------ shutdown

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sub in list(self._subs.values()):
            if sub.transceiver is None:
                sub.track.stop()
            else:
                self._detach(sub)
        self._subs.clear()
        for peer in (self._sub, self._pub):
            if peer is None:
                continue
            switches = [t.sender.track for t in peer.pc.getTransceivers()]
            with contextlib.suppress(Exception):
                await peer.pc.close()
            for switch in switches:
                if isinstance(switch, _SwitchTrack):
                    switch.stop()
        for source in list(self._sources.values()):
            await source.aclose()
        self._source_by_mid.clear()

    # ------------------------------------------------------------------ internals

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("media task failed", exc_info=task.exception())

    def _primary(self) -> _Peer | None:
        return self._sub if self.subscriber_primary else self._pub

    def _emit(self, response: rtc.SignalResponse) -> None:
        if self._closed:
            return
        try:
            self._send(response)
        except Exception:
            log.exception("send(%s) failed", response.WhichOneof("message"))

    def _new_peer(self, role: str) -> _Peer:
        peer = _Peer(role=role, pc=RTCPeerConnection(configuration=rtc_configuration()))
        pc = peer.pc

        @pc.on("connectionstatechange")  # type: ignore[untyped-decorator]
        def _on_state() -> None:
            state = pc.connectionState
            log.debug("%s pc %s", role, state)
            if state != "connected":
                return
            if peer is self._primary() and not self._connected_fired:
                self._connected_fired = True
                self._call(self._on_connected)
            if peer.renegotiate and peer.role == "subscriber":
                self._spawn(self._negotiate_subscriber())
            elif peer.reoffer_wanted:
                self._ask_reoffer(peer)

        @pc.on("datachannel")  # type: ignore[untyped-decorator]
        def _on_channel(channel: Any) -> None:
            peer.client_channels[str(channel.label)] = channel
            self._listen(channel)

        @pc.on("track")  # type: ignore[untyped-decorator]
        def _on_track(track: Any) -> None:
            self._remote_track(peer, track)

        return peer

    def _ensure_pub(self) -> _Peer:
        if self._pub is None:
            self._pub = self._new_peer("publisher")
        return self._pub

    def _ensure_sub(self) -> _Peer:
        if self._sub is None:
            peer = self._sub = self._new_peer("subscriber")
            if self.subscriber_primary:
                for label in DATA_LABELS:
                    options: dict[str, Any] = (
                        {"ordered": True} if label == RELIABLE else {"ordered": False, "maxRetransmits": 0}
                    )
                    channel = peer.pc.createDataChannel(label, **options)
                    peer.server_channels[label] = channel
                    self._listen(channel)
        return self._sub

    def _listen(self, channel: Any) -> None:
        label = str(channel.label)

        @channel.on("message")  # type: ignore[untyped-decorator]
        def _on_message(message: bytes | str) -> None:
            payload = message.encode() if isinstance(message, str) else bytes(message)
            self._call(self._on_data, payload, label)

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        # Callbacks run inside aiortc's event emitters: an exception there would break aiortc.
        try:
            callback(*args)
        except Exception:
            log.exception("callback %s failed", getattr(callback, "__name__", callback))

    async def _negotiate_subscriber(self) -> None:
        peer = self._ensure_sub()
        async with peer.lock:
            await self._offer_locked(peer)

    async def _offer_locked(self, peer: _Peer, *, force: bool = False) -> None:
        if self._closed:
            return
        if peer.pc.signalingState != "stable":
            peer.renegotiate = True  # one offer at a time: re-offer once the answer is in
            return
        if peer.offer_id and not force and peer.pc.connectionState != "connected":
            # aiortc starts a new transceiver's sender/receiver only if DTLS is already up when
            # the description is applied, so renegotiating mid-handshake leaves it dead.
            peer.renegotiate = True
            return
        peer.renegotiate = False
        offer = await peer.pc.createOffer()
        await peer.pc.setLocalDescription(offer)
        self._send_offer(peer)

    def _send_offer(self, peer: _Peer) -> None:
        self._sub_offer_id += 1
        peer.offer_id = self._sub_offer_id
        self._emit(
            rtc.SignalResponse(
                offer=rtc.SessionDescription(
                    type="offer",
                    sdp=peer.pc.localDescription.sdp,
                    id=peer.offer_id,
                    mid_to_track_id=self._mid_to_track_id(peer),
                )
            )
        )

    def _mid_to_track_id(self, peer: _Peer) -> dict[str, str]:
        transceivers = peer.pc.getTransceivers()
        return {
            str(sub.transceiver.mid): sub.track_sid
            for sub in self._subs.values()
            if sub.transceiver is not None and sub.transceiver in transceivers and sub.transceiver.mid
        }

    async def _flush_candidates(self, peer: _Peer) -> None:
        queued, self._queued[peer.role] = self._queued[peer.role], []
        for candidate in queued:
            await self._add_candidate(peer, candidate)

    @staticmethod
    async def _add_candidate(peer: _Peer, candidate: Any) -> None:
        try:
            await peer.pc.addIceCandidate(candidate)
        except Exception:
            log.exception("addIceCandidate(%s) failed on the %s pc", candidate, peer.role)

    # -- incoming tracks

    def _remote_track(self, peer: _Peer, track: Any) -> None:
        mid = next((str(t.mid) for t in peer.pc.getTransceivers() if t.receiver.track is track), None)
        media = peer.remote_media.get(mid) if mid is not None else None
        track_id = (_msid_track_id(media) if media is not None else None) or str(track.id)
        source = TrackSource(track_id, track)
        source.start()
        self._sources[track_id] = source
        if mid is not None:
            self._source_by_mid[mid] = source
        log.debug("client track %s (%s) on mid %s", track_id, track.kind, mid)
        self._call(self._on_track, track_id, source)

    def _rekey_sources(self, peer: _Peer) -> None:
        """aiortc fires ``track`` once per m-line; a reused m-line only changes its msid."""
        for mid, source in list(self._source_by_mid.items()):
            media = peer.remote_media.get(mid)
            if media is None or media.direction not in ("sendonly", "sendrecv"):
                continue
            track_id = _msid_track_id(media)
            if track_id and track_id != source.track_id:
                self._sources.pop(source.track_id, None)
                source.track_id = track_id
                self._sources[track_id] = source
                self._call(self._on_track, track_id, source)

    # -- outgoing tracks

    def _attach(self, sub: _Subscription, transceiver: Any) -> None:
        switch = transceiver.sender.track
        if not isinstance(switch, _SwitchTrack):
            switch = _SwitchTrack(sub.kind)
            transceiver.sender.replaceTrack(switch)
        switch.set_source(sub.track)
        if self.mode is MediaMode.DUAL_PC:
            # Our own offer: the transceiver's preferences shape it (an idle one may carry old ones).
            transceiver.setCodecPreferences(codec_preferences(sub.kind, sub.codec))
        # aiortc has no API for stream/track ids; its SDP writer reads these sender fields.
        transceiver.sender._stream_id = f"{sub.participant_sid}|{sub.track_sid}"
        transceiver.sender._track_id = sub.track_sid
        transceiver.direction = "sendonly"
        sub.transceiver = transceiver

    def _detach(self, sub: _Subscription) -> None:
        transceiver, sub.transceiver = sub.transceiver, None
        if transceiver is None:
            return
        switch = transceiver.sender.track
        if isinstance(switch, _SwitchTrack):
            switch.set_source(None)
        else:
            sub.track.stop()
        transceiver.direction = "inactive"

    def _busy(self) -> set[int]:
        return {id(sub.transceiver) for sub in self._subs.values() if sub.transceiver is not None}

    def _idle_transceiver(self, peer: _Peer, kind: str) -> Any | None:
        """v0: a negotiated sending transceiver of this kind that no subscription uses."""
        busy = self._busy()
        for transceiver in peer.pc.getTransceivers():
            if (
                transceiver.kind == kind
                and transceiver.mid is not None
                and isinstance(transceiver.sender.track, _SwitchTrack)
                and id(transceiver) not in busy
            ):
                return transceiver
        return None

    def _free_slots(self, peer: _Peer) -> list[Any]:
        """v1: transceivers on the client's recvonly m-lines that carry nothing yet."""
        busy = self._busy()
        return [
            transceiver
            for transceiver in peer.pc.getTransceivers()
            if transceiver.mid is not None
            and id(transceiver) not in busy
            and getattr(peer.remote_media.get(str(transceiver.mid)), "direction", None) == "recvonly"
        ]

    def _pending(self) -> list[_Subscription]:
        return [sub for sub in self._subs.values() if sub.transceiver is None]

    def _fill_slots(self, peer: _Peer) -> None:
        slots = self._free_slots(peer)
        for sub in self._pending():
            slot = next((t for t in slots if t.kind == sub.kind), None)
            if slot is not None:
                slots.remove(slot)
                self._attach(sub, slot)

    def _request_slots(self, peer: _Peer, *, always: bool = False) -> None:
        """v1: ask for the recvonly m-lines still missing (``always``: even 0/0, to get a re-offer)."""
        pending = self._pending()
        if not pending:
            return
        free = self._free_slots(peer)
        missing: dict[str, int] = {}
        for kind in ("audio", "video"):
            want = sum(1 for sub in pending if sub.kind == kind)
            have = sum(1 for t in free if t.kind == kind) + self._requested[kind]
            missing[kind] = max(0, want - have)
            self._requested[kind] += missing[kind]
        if always or missing["audio"] or missing["video"]:
            self._emit(
                rtc.SignalResponse(
                    media_sections_requirement=rtc.MediaSectionsRequirement(
                        num_audios=missing["audio"], num_videos=missing["video"]
                    )
                )
            )

    def _ask_reoffer(self, peer: _Peer, *, force: bool = False) -> None:
        """v1: get a client offer (for pending tracks or a removal), once the PC is connected.

        The Rust and JS SDKs renegotiate on every ``media_sections_requirement``, so ``0/0`` is a
        plain re-offer request. The deferral has the same reason as in :meth:`_offer_locked`.
        """
        if not force and peer.pc.connectionState != "connected":
            peer.reoffer_wanted = True
            return
        peer.reoffer_wanted = False
        if self._pending():
            self._request_slots(peer, always=True)
        else:
            self._emit(rtc.SignalResponse(media_sections_requirement=rtc.MediaSectionsRequirement()))
