"""Forward received tracks as RTP over UDP (``bridge.forward_track`` / ``stop_forward``).

The encoded frames :class:`~bridge.media.peer.MediaPeer` taps from aiortc (a raw opus packet, a VP8
frame or an H.264 access unit in Annex B form, reassembled after NACK repair, with an RTP timestamp
counted from 0) are packetized again and sent from one UDP socket per forward (research
``media-aiortc.md`` §5.4: "forward reassembled frames and re-packetize"). No decoding, no encoding:

* opus: one frame per packet (RFC 7587), payload type 111 unless the command says otherwise;
* VP8: aiortc's own payloader (``Vp8Encoder.pack``: RFC 7741 descriptor with a picture id, packets of
  at most 1300 bytes, marker on the last packet of a frame), payload type 96; the forward starts on a
  keyframe and asks for one with a PLI, like a recording;
* H.264: aiortc's own payloader too (``H264Encoder.pack``: RFC 6184 packetization mode 1, small NAL
  units aggregated in STAP-A, large ones split in FU-A, packets of at most 1300 bytes), payload type
  102, marker on the last packet of a frame. It starts on an IDR picture with its SPS/PPS (put in
  front from earlier frames when the IDR lacks them), asking with a PLI like VP8. The SDP says
  ``packetization-mode=1``; it cannot carry ``sprop-parameter-sets`` because it is written before
  the first frame arrives, so receivers take the parameter sets in band.

Each forward has its own random SSRC, a sequence number that grows by one per packet (mod 2**16) and a
timestamp that is the received one plus a random offset (mod 2**32), so a receiver sees one unbroken
stream. :func:`sdp_for` describes it for ffmpeg / GStreamer / VLC (the command's response, and
optionally a file under ``media.recordings_dir``).

Safety: packets go only to hosts ``media.forward_allow`` lists (addresses, CIDR ranges, or host names,
which are resolved once when the forward starts); an empty list refuses every forward. Packets wait in
a bounded queue (``media.forward_queue_packets``) for the sender task; beyond it, and while the socket
is paused by the kernel's buffer, they are dropped and counted (``Forward.dropped`` and the per-kind
drop counter of the metrics). ICMP errors (nobody listening) are counted, not fatal.

A forward ends on ``stop_forward``, when the track's receiver stops, when the room session ends, or on
an error; whatever ended it, one ``ForwardFinished`` event follows, once its socket is closed.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import ipaddress
import logging
import secrets
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import av
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from bridge._proto import events_pb2
from bridge.errors import MediaRefused
from bridge.media.h264 import ParameterSets
from bridge.media.peer import RemoteTrack
from bridge.media.recorder import vp8_keyframe
from bridge.tasks import OwnedTasks, wait_all_set

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PAYLOAD_TYPES",
    "Forward",
    "ForwardStats",
    "Forwarder",
    "host_allowed",
    "rtp_header",
    "sdp_for",
]

DEFAULT_PAYLOAD_TYPES: Final = {"opus": 111, "vp8": 96, "h264": 102}
_KINDS: Final = {"opus": "audio", "vp8": "video", "h264": "video"}
KEYFRAME_ASK_EVERY: Final = 15  # while waiting for a keyframe: one PLI per this many skipped frames
CLOSE_TIMEOUT_S: Final = 2.0
_VIDEO_TIME_BASE: Final = fractions.Fraction(1, 90000)


def rtp_header(*, payload_type: int, marker: bool, sequence: int, timestamp: int, ssrc: int) -> bytes:
    """The fixed 12-byte RTP header (RFC 3550 §5.1): version 2, no padding, extension or CSRC."""
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | payload_type, sequence, timestamp, ssrc)


def host_allowed(address: str, host: str, allow: tuple[str, ...]) -> bool:
    """True when ``address`` (what ``host`` resolved to) is covered by an entry of ``allow``.

    A host-name entry allows exactly that name (as written in the command); address and CIDR entries
    allow the resolved address.
    """
    ip = ipaddress.ip_address(address)
    for entry in allow:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if entry.lower() == host.lower():
                return True
            continue
        if ip.version == network.version and ip in network:
            return True
    return False


def sdp_for(*, codec: str, address: str, port: int, payload_type: int, channels: int, track_sid: str) -> str:
    """An SDP description of one forwarded stream that ffmpeg / GStreamer / VLC can open."""
    family = "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    lines = [
        "v=0",
        f"o=- 0 0 IN {family} {address}",
        f"s=livekit-bridge {track_sid}",
        f"c=IN {family} {address}",
        "t=0 0",
    ]
    if codec == "opus":
        lines += [
            f"m=audio {port} RTP/AVP {payload_type}",
            f"a=rtpmap:{payload_type} opus/48000/2",
            f"a=fmtp:{payload_type} minptime=10;useinbandfec=1" + (";stereo=1" if channels == 2 else ""),
        ]
    elif codec == "h264":
        lines += [
            f"m=video {port} RTP/AVP {payload_type}",
            f"a=rtpmap:{payload_type} H264/90000",
            # Mode 1 (STAP-A / FU-A) is what the payloader produces; parameter sets come in band.
            f"a=fmtp:{payload_type} packetization-mode=1",
        ]
    else:
        lines += [f"m=video {port} RTP/AVP {payload_type}", f"a=rtpmap:{payload_type} VP8/90000"]
    lines.append("a=recvonly")
    return "\r\n".join(lines) + "\r\n"


class _Sender(asyncio.DatagramProtocol):
    """The UDP socket's protocol: tracks pause/resume and counts ICMP errors."""

    def __init__(self) -> None:
        self.paused = False
        self.resumed = asyncio.Event()
        self.resumed.set()
        self.errors = 0

    def pause_writing(self) -> None:
        self.paused = True
        self.resumed.clear()

    def resume_writing(self) -> None:
        self.paused = False
        self.resumed.set()

    def error_received(self, exc: Exception) -> None:
        self.errors += 1  # e.g. ECONNREFUSED: nobody listens on the port (yet)


@dataclass
class Forward:
    """One track being forwarded; its counters become the ``ForwardFinished`` event."""

    track_sid: str
    kind: str
    codec: str  # "opus" / "vp8" / "h264"
    address: str
    port: int
    payload_type: int
    capacity: int
    host: str = ""  # as the command named it (``address`` is what it resolved to)
    ssrc: int = field(default_factory=lambda: secrets.randbits(32))
    sequence: int = field(default_factory=lambda: secrets.randbits(16))
    timestamp_offset: int = field(default_factory=lambda: secrets.randbits(32))
    started: bool = False  # first frame sent (video: first keyframe seen)
    frames: int = 0
    packets: int = 0
    sent_bytes: int = 0
    dropped: int = 0  # packets the queue or a paused socket could not take
    skipped: int = 0  # video delta frames before the first keyframe
    reason: str = ""
    began: float = field(default_factory=time.monotonic)
    ended: float | None = None  # monotonic time its socket was closed
    queue: collections.deque[bytes] = field(default_factory=collections.deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # closed and reported
    _payloader: Any = field(default=None, repr=False)
    h264: ParameterSets = field(default_factory=ParameterSets, repr=False)  # latest SPS/PPS seen

    def packetize(self, codec: str, data: bytes, timestamp: int) -> list[bytes]:
        """RTP packets for one encoded frame; advances the sequence number."""
        ts = (timestamp + self.timestamp_offset) & 0xFFFFFFFF
        if codec == "opus":
            payloads = [data]
        else:
            if self._payloader is None:
                # Only their payloaders are used: no libvpx / libx264 context is ever opened.
                self._payloader = H264Encoder() if codec == "h264" else Vp8Encoder()
            packet = av.Packet(data)
            packet.pts = timestamp
            packet.time_base = _VIDEO_TIME_BASE
            payloads, _ = self._payloader.pack(packet)
        out = []
        last = len(payloads) - 1
        for i, payload in enumerate(payloads):
            marker = i == last if codec != "opus" else not self.started and i == 0
            header = rtp_header(
                payload_type=self.payload_type,
                marker=marker,
                sequence=self.sequence,
                timestamp=ts,
                ssrc=self.ssrc,
            )
            self.sequence = (self.sequence + 1) & 0xFFFF
            out.append(header + payload)
        return out

    def finished_event(self) -> events_pb2.ForwardFinished:
        ended = time.monotonic() if self.ended is None else self.ended
        return events_pb2.ForwardFinished(
            track_sid=self.track_sid,
            codec=self.codec,
            host=self.host,
            address=self.address,
            port=self.port,
            payload_type=self.payload_type,
            frames=self.frames,
            packets=self.packets,
            bytes=self.sent_bytes,
            dropped=self.dropped,
            skipped=self.skipped,
            duration_s=ended - self.began,
            reason=self.reason,
        )


@dataclass
class ForwardStats:
    """Cumulative counters of one room's forwards, per kind ("audio" / "video"), for the metrics."""

    started: int = 0
    frames_by_kind: dict[str, int] = field(default_factory=dict)
    packets_by_kind: dict[str, int] = field(default_factory=dict)  # RTP packets handed to the socket
    bytes_by_kind: dict[str, int] = field(default_factory=dict)  # their size, RTP headers included
    dropped_by_kind: dict[str, int] = field(default_factory=dict)  # RTP packets dropped (queue full)


def _add(counts: dict[str, int], kind: str, n: int) -> None:
    counts[kind] = counts.get(kind, 0) + n


class Forwarder:
    """The forwards of one room session (see the module docstring)."""

    def __init__(
        self,
        *,
        room: str,
        allow: tuple[str, ...],
        max_forwards: int,
        queue_packets: int,
        request_keyframe: Callable[[str], bool],
        count_dropped: Callable[[RemoteTrack, int], None],
        on_finished: Callable[[events_pb2.ForwardFinished], Awaitable[None]] | None = None,
    ) -> None:
        self._room = room
        self._allow = allow
        self._max = max_forwards
        self._queue_packets = queue_packets
        self._request_keyframe = request_keyframe
        self._count_dropped = count_dropped
        self._on_finished = on_finished
        self.forwards: dict[str, Forward] = {}  # track sid -> active forward
        self.stats = ForwardStats()
        self._transports: dict[str, Any] = {}
        self._tasks = OwnedTasks(log, f"forwarder room={room}")
        self._closed = False

    async def start(self, track_sid: str, host: str, port: int, codec: str, payload_type: int = 0) -> Forward:
        """Begin forwarding ``track_sid`` (its ``codec``: "opus" / "vp8" / "h264") to ``host``:``port``."""
        refusal = self._refusal(track_sid)
        if refusal is not None:
            raise refusal
        if not self._allow:
            raise MediaRefused("not_allowed", "forwarding is off: set media.forward_allow")
        if codec not in DEFAULT_PAYLOAD_TYPES:
            raise MediaRefused("unsupported", f"only opus, VP8 and H.264 can be forwarded, not {codec}")
        if not host or not 0 < port < 65536:
            raise MediaRefused("invalid_target", "host and a port between 1 and 65535 are required")
        if payload_type and not 96 <= payload_type <= 127:
            raise MediaRefused("invalid_target", "payload_type must be a dynamic type (96-127)")
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise MediaRefused("invalid_target", f"cannot resolve {host!r}: {exc}") from exc
        address = str(infos[0][4][0])
        if not host_allowed(address, host, self._allow):
            raise MediaRefused("not_allowed", f"{host} ({address}) is not in media.forward_allow")
        fwd = Forward(
            track_sid=track_sid,
            kind=_KINDS[codec],
            codec=codec,
            host=host,
            address=address,
            port=port,
            payload_type=payload_type or DEFAULT_PAYLOAD_TYPES[codec],
            capacity=self._queue_packets,
        )
        try:
            transport, protocol = await loop.create_datagram_endpoint(_Sender, remote_addr=(address, port))
        except OSError as exc:
            raise MediaRefused("invalid_target", f"cannot send to {address}:{port}: {exc}") from exc
        # The checks above were before two awaits: the session may have closed, or another start won.
        refusal = self._refusal(track_sid)
        if refusal is not None:
            transport.close()
            raise refusal
        self.forwards[track_sid] = fwd
        self._transports[track_sid] = transport
        self.stats.started += 1
        self._tasks.spawn(self._send(fwd, transport, protocol), name=f"forward:{track_sid}")
        if fwd.kind == "video":
            self._request_keyframe(track_sid)  # False until the track arrives: asked again on delta frames
        log.info("room=%s forwarding %s (%s) to %s:%d", self._room, track_sid, codec, address, port)
        return fwd

    def _refusal(self, track_sid: str) -> MediaRefused | None:
        if self._closed:
            return MediaRefused("unavailable", "the room session is closing")
        if track_sid in self.forwards:
            return MediaRefused("busy", f"track {track_sid} is being forwarded already")
        if len(self.forwards) >= self._max:
            return MediaRefused("limit", f"{self._max} forwards are running in this room")
        return None

    def stop(self, track_sid: str, reason: str = "stopped") -> Forward:
        fwd = self.forwards.get(track_sid)
        if fwd is None:
            raise MediaRefused("not_found", f"track {track_sid} is not being forwarded")
        self._finish(fwd, reason)
        return fwd

    def _finish(self, fwd: Forward, reason: str) -> None:
        if not fwd.reason:
            fwd.reason = reason
        fwd.wake.set()

    def on_encoded(self, remote: RemoteTrack, codec: Any, frame: Any) -> None:
        """MediaPeer's encoded-frame hook (event loop): packetize the frame for its forward, if any."""
        fwd = self.forwards.get(remote.track_id)
        if fwd is None or fwd.reason:
            return
        name = str(codec.name).lower()
        if name != fwd.codec:
            self._finish(fwd, f"error: the track carries {name}, not {fwd.codec}")
            return
        data = bytes(frame.data)
        if not fwd.started:
            first = _first_frame(fwd, name, data)
            if first is None:
                fwd.skipped += 1
                if fwd.skipped % KEYFRAME_ASK_EVERY == 1:
                    self._request_keyframe(remote.track_id)
                return
            data = first
        packets = fwd.packetize(name, data, int(frame.timestamp))
        fwd.started = True
        fwd.frames += 1
        _add(self.stats.frames_by_kind, fwd.kind, 1)
        room = fwd.capacity - len(fwd.queue)
        if len(packets) > room:
            fwd.dropped += len(packets)
            _add(self.stats.dropped_by_kind, fwd.kind, len(packets))
            self._count_dropped(remote, 1)
            return  # a partial video frame is useless: drop it whole
        fwd.queue.extend(packets)
        fwd.wake.set()

    def on_track_ended(self, remote: RemoteTrack) -> None:
        fwd = self.forwards.get(remote.track_id)
        if fwd is not None:
            self._finish(fwd, "track_ended")

    async def _send(self, fwd: Forward, transport: Any, protocol: _Sender) -> None:
        try:
            while True:
                await fwd.wake.wait()
                fwd.wake.clear()
                while fwd.queue:
                    if protocol.paused:  # the kernel's buffer is full: wait, the queue bounds the rest
                        await protocol.resumed.wait()
                    packet = fwd.queue.popleft()
                    transport.sendto(packet)
                    fwd.packets += 1
                    fwd.sent_bytes += len(packet)
                    _add(self.stats.packets_by_kind, fwd.kind, 1)
                    _add(self.stats.bytes_by_kind, fwd.kind, len(packet))
                if fwd.reason:
                    break
        except asyncio.CancelledError:
            # Only past aclose's wait: the session is going, the event is lost with this task.
            self._finish(fwd, "session_ended")
            fwd.finished.set()
            raise
        except Exception as exc:  # noqa: BLE001 (a socket error ends this forward, not the room's others)
            log.warning("room=%s forward %s failed: %s", self._room, fwd.track_sid, exc)
            self._finish(fwd, f"error: {type(exc).__name__}: {exc}")
        finally:
            transport.close()
            fwd.ended = time.monotonic()
            self._transports.pop(fwd.track_sid, None)
            if self.forwards.get(fwd.track_sid) is fwd:
                del self.forwards[fwd.track_sid]
            if not fwd.reason:
                fwd.reason = "session_ended"
            log.info(
                "room=%s forward %s ended (%s): %d frames, %d packets, %d dropped, %d ICMP errors",
                self._room,
                fwd.track_sid,
                fwd.reason,
                fwd.frames,
                fwd.packets,
                fwd.dropped,
                protocol.errors,
            )
        try:
            if self._on_finished is not None:
                await self._on_finished(fwd.finished_event())
        finally:
            fwd.finished.set()

    async def aclose(self) -> None:
        """End every forward, close its socket and report it, within ``CLOSE_TIMEOUT_S``."""
        self._closed = True
        waiting = list(self.forwards.values())
        for fwd in waiting:
            self._finish(fwd, "session_ended")
        if not await wait_all_set([fwd.finished for fwd in waiting], CLOSE_TIMEOUT_S):
            log.warning("room=%s forwards did not close within %.0fs", self._room, CLOSE_TIMEOUT_S)
        await self._tasks.aclose(CLOSE_TIMEOUT_S)
        for transport in list(self._transports.values()):
            transport.close()
        self._transports.clear()
        self.forwards.clear()


def _first_frame(fwd: Forward, codec: str, data: bytes) -> bytes | None:
    """What a forward may start with: a keyframe (H.264: an IDR with its SPS/PPS), else None."""
    if codec == "vp8":
        return data if vp8_keyframe(data) is not None else None
    if codec == "h264":
        return fwd.h264.complete(data)
    return data


def write_sdp(root: Path | None, path: str, text: str) -> Path:
    """Write ``text`` to ``path`` below ``root`` (``media.recordings_dir``); refuses anything else."""
    if root is None:
        raise MediaRefused("unsupported", "sdp_path needs media.recordings_dir")
    base = root.resolve()
    relative = Path(path)
    if relative.is_absolute():
        raise MediaRefused("invalid_path", "sdp_path must be relative to media.recordings_dir")
    target = (base / relative).resolve()
    if not target.is_relative_to(base) or target == base:
        raise MediaRefused("invalid_path", "sdp_path leaves media.recordings_dir")
    if target.suffix.lower() != ".sdp":
        raise MediaRefused("invalid_path", "sdp_path must end in .sdp")
    if target.exists():
        raise MediaRefused("exists", f"{path} exists already")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target
