"""Record received tracks to files without transcoding (``bridge.record_track`` / ``stop_recording``).

The encoded frames :class:`~bridge.media.peer.MediaPeer` taps from aiortc (a raw opus packet, a VP8
frame, or an H.264 access unit as Annex B NAL units, with an RTP timestamp counted from 0) are muxed
into a container with PyAV as they are: no decoding, no encoding (research ``media-aiortc.md`` §2,
§5.4). A recording

* starts on a keyframe: video frames are skipped until one arrives, and a PLI is sent to ask for it.
  For H.264 that is an IDR picture with its SPS/PPS (put in front from earlier frames if it lacks
  them, :class:`~bridge.media.h264.ParameterSets`); the stream's extradata and picture size come from
  them. FFmpeg's Matroska and MP4 muxers turn the Annex B packets into length-prefixed ones with an
  ``avcC`` record; a ``.h264`` file is the raw Annex B stream (it has no timestamps: players assume
  a frame rate);
* ends after ``duration_s`` seconds of media (timestamps, not wall time), on ``stop_recording``, when
  the track's receiver stops or the track leaves the room, or when the room session ends; a
  ``RecordingFinished`` event follows;
* has a bounded frame queue (``media.recording_queue_frames``): frames beyond it are dropped and
  counted (``RecordingFinished.dropped`` and the per-kind drop counter of the metrics).

Files go below ``media.recordings_dir``; the command's ``path`` is relative and may not leave it, may
not exist yet, and its extension picks the container (:data:`CONTAINERS`). Muxing runs in a worker
thread, one batch at a time per recording.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import av

from bridge._proto import events_pb2
from bridge.errors import RecordingRefused
from bridge.media.h264 import ParameterSets, nal_units
from bridge.media.peer import RemoteTrack
from bridge.tasks import OwnedTasks, wait_all_set

log = logging.getLogger(__name__)

__all__ = ["CONTAINERS", "Recorder", "Recording"]

# Extension -> codecs (aiortc's names, lower case) that container takes.
CONTAINERS: Final[dict[str, frozenset[str]]] = {
    ".ogg": frozenset({"opus"}),
    ".opus": frozenset({"opus"}),
    ".mka": frozenset({"opus"}),
    ".webm": frozenset({"opus", "vp8"}),
    ".mkv": frozenset({"opus", "vp8", "h264"}),
    ".mp4": frozenset({"h264"}),
    ".ivf": frozenset({"vp8"}),
    ".h264": frozenset({"h264"}),
}
_KINDS: Final = {"opus": "audio", "vp8": "video", "h264": "video"}
CLOSE_TIMEOUT_S: Final = 5.0
KEYFRAME_ASK_EVERY: Final = 15  # while waiting for a keyframe: one PLI per this many skipped frames


def opus_head(channels: int, sample_rate: int = 48000) -> bytes:
    """RFC 7845 identification header: what Ogg and Matroska need as the opus stream's extradata."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 312, sample_rate, 0, 0)


def vp8_keyframe(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` when ``data`` is a VP8 keyframe (RFC 6386 §9.1), else None."""
    if len(data) < 10 or data[0] & 0x01 or data[3:6] != b"\x9d\x01\x2a":
        return None
    width = (data[6] | data[7] << 8) & 0x3FFF
    height = (data[8] | data[9] << 8) & 0x3FFF
    return width, height


@dataclass
class Recording:
    """One track being recorded; its counters become the ``RecordingFinished`` event."""

    track_sid: str
    path: str  # as given, relative to the recordings directory
    file: Path
    duration_s: float  # 0: no limit
    capacity: int
    codec: str = ""
    clock_rate: int = 0
    channels: int = 0
    first_ts: int | None = None
    last_ts: int = 0
    frames: int = 0
    size: int = 0  # encoded bytes written
    dropped: int = 0
    skipped: int = 0  # delta frames before the first keyframe
    reason: str = ""  # set once it should end
    queue: collections.deque[tuple[int, bytes, bool]] = field(default_factory=collections.deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    h264: ParameterSets = field(default_factory=ParameterSets)  # latest SPS/PPS (H.264 only)
    _container: Any = None
    _stream: Any = None
    _time_base: fractions.Fraction | None = None

    @property
    def media_seconds(self) -> float:
        if self.first_ts is None or not self.clock_rate:
            return 0.0
        return (self.last_ts - self.first_ts) / self.clock_rate

    def finish(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason
        self.wake.set()

    # -- worker thread side: only the writer task calls these, one at a time

    def write(self, batch: list[tuple[int, bytes, bool]]) -> None:
        for timestamp, data, keyframe in batch:
            if self._container is None:
                self._open(data)
            packet = av.Packet(data)
            packet.stream = self._stream
            assert self._time_base is not None
            assert self.first_ts is not None
            pts = int(fractions.Fraction(timestamp - self.first_ts, self.clock_rate) / self._time_base)
            packet.pts = packet.dts = pts
            packet.time_base = self._time_base
            packet.is_keyframe = keyframe
            self._container.mux(packet)
            self.frames += 1
            self.size += len(data)

    def _open(self, first: bytes) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(str(self.file), mode="w")
        try:
            stream: Any
            if self.codec == "opus":
                stream = container.add_stream("opus", rate=self.clock_rate)
                stream.codec_context.layout = "stereo" if self.channels == 2 else "mono"
                stream.codec_context.extradata = opus_head(self.channels or 2, self.clock_rate)
            elif self.codec == "h264":
                stream = container.add_stream("h264")
                sets = ParameterSets()  # from the first frame itself: it carries them (see _keyframe)
                sets.observe(nal_units(first))
                sps = sets.parsed()
                if sps is not None:  # MP4 wants a video stream's size in its header
                    stream.codec_context.width, stream.codec_context.height = sps.width, sps.height
                # Annex B SPS/PPS: the muxers convert them (and the packets) to avcC / length prefixes.
                stream.codec_context.extradata = sets.extradata()
            else:
                stream = container.add_stream("vp8")
                width, height = vp8_keyframe(first) or (0, 0)
                stream.codec_context.width = width
                stream.codec_context.height = height
            stream.time_base = fractions.Fraction(1, self.clock_rate)
            container.start_encoding()  # writes the header; the muxer may change the time base
        except Exception:
            container.close()
            raise
        self._container, self._stream = container, stream
        self._time_base = fractions.Fraction(stream.time_base)

    def close(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            container.close()


def _keyframe(rec: Recording, codec: str, data: bytes) -> tuple[bool, bytes]:
    """Whether ``data`` starts a decodable picture, and the bytes to write (H.264: the first IDR gets
    the latest SPS/PPS in front when it lacks them)."""
    if codec == "vp8":
        return vp8_keyframe(data) is not None, data
    if codec != "h264":
        return True, data
    if rec.first_ts is None:
        complete = rec.h264.complete(data)
        return (True, complete) if complete is not None else (False, data)
    return rec.h264.observe(nal_units(data)), data


class Recorder:
    """The recordings of one room session (see the module docstring)."""

    def __init__(
        self,
        *,
        root: Path | None,
        room: str,
        max_recordings: int,
        queue_frames: int,
        request_keyframe: Callable[[str], bool],
        count_dropped: Callable[[RemoteTrack, int], None],
        on_finished: Callable[[events_pb2.RecordingFinished], Awaitable[None]],
    ) -> None:
        self._root = root
        self._room = room
        self._max = max_recordings
        self._queue_frames = queue_frames
        self._request_keyframe = request_keyframe
        self._count_dropped = count_dropped
        self._on_finished = on_finished
        self.recordings: dict[str, Recording] = {}  # track sid -> active recording
        self._tasks = OwnedTasks(log, f"recorder room={room}")
        self._closed = False

    def resolve(self, path: str) -> Path:
        """The file for ``path`` below the recordings directory; refuses anything else."""
        if self._root is None:
            raise RecordingRefused("unsupported", "recording is off: set media.recordings_dir")
        root = self._root.resolve()
        relative = Path(path)
        if not path or relative.is_absolute():
            raise RecordingRefused("invalid_path", "path must be relative to media.recordings_dir")
        target = (root / relative).resolve()
        if not target.is_relative_to(root) or target == root:
            raise RecordingRefused("invalid_path", "path leaves media.recordings_dir")
        if target.suffix.lower() not in CONTAINERS:
            known = ", ".join(sorted(CONTAINERS))
            raise RecordingRefused("invalid_path", f"unknown container {target.suffix!r} (use {known})")
        if target.exists():
            raise RecordingRefused("exists", f"{path} exists already")
        return target

    def start(self, track_sid: str, path: str, duration_s: float, kind: str | None) -> Recording:
        """Begin recording ``track_sid`` (``kind``: its kind if known) into ``path``."""
        if self._closed:
            raise RecordingRefused("unavailable", "the room session is closing")
        file = self.resolve(path)
        accepted = CONTAINERS[file.suffix.lower()]
        if kind is not None and kind not in {_KINDS[c] for c in accepted}:
            raise RecordingRefused("invalid_path", f"a {file.suffix} file cannot hold {kind}")
        if track_sid in self.recordings:
            raise RecordingRefused("busy", f"track {track_sid} is being recorded already")
        if len(self.recordings) >= self._max:
            raise RecordingRefused("limit", f"{self._max} recordings are running in this room")
        if duration_s < 0:
            raise RecordingRefused("invalid_duration", "duration_s must not be negative")
        rec = Recording(
            track_sid=track_sid, path=path, file=file, duration_s=duration_s, capacity=self._queue_frames
        )
        self.recordings[track_sid] = rec
        self._tasks.spawn(self._write(rec), name=f"record:{track_sid}")
        self._request_keyframe(track_sid)  # False until the track arrives: asked again on delta frames
        log.info("room=%s recording %s to %s", self._room, track_sid, path)
        return rec

    def stop(self, track_sid: str, reason: str = "stopped") -> Recording:
        rec = self.recordings.get(track_sid)
        if rec is None:
            raise RecordingRefused("not_found", f"track {track_sid} is not being recorded")
        rec.finish(reason)
        return rec

    def on_encoded(self, remote: RemoteTrack, codec: Any, frame: Any) -> None:
        """MediaPeer's encoded-frame hook (event loop): queue the frame for its recording, if any."""
        rec = self.recordings.get(remote.track_id)
        if rec is None or rec.reason:
            return
        name = str(codec.name).lower()
        if not rec.codec:
            if name not in CONTAINERS[rec.file.suffix.lower()]:
                rec.finish(f"error: codec {name} cannot go into a {rec.file.suffix} file")
                return
            rec.codec, rec.clock_rate, rec.channels = name, int(codec.clockRate), int(codec.channels or 0)
        data = bytes(frame.data)
        keyframe, data = _keyframe(rec, name, data)
        if rec.first_ts is None:
            if not keyframe:
                rec.skipped += 1
                if rec.skipped % KEYFRAME_ASK_EVERY == 1:
                    self._request_keyframe(remote.track_id)
                return
            rec.first_ts = frame.timestamp
        if rec.duration_s and (frame.timestamp - rec.first_ts) / rec.clock_rate >= rec.duration_s:
            rec.finish("duration")
            return
        if len(rec.queue) >= rec.capacity:
            rec.dropped += 1
            self._count_dropped(remote, 1)
            return
        rec.last_ts = frame.timestamp
        rec.queue.append((frame.timestamp, data, keyframe))
        rec.wake.set()

    def on_track_ended(self, remote: RemoteTrack) -> None:
        rec = self.recordings.get(remote.track_id)
        if rec is not None:
            rec.finish("track_ended")

    async def _write(self, rec: Recording) -> None:
        try:
            while True:
                await rec.wake.wait()
                rec.wake.clear()
                if rec.queue:
                    batch = list(rec.queue)
                    rec.queue.clear()
                    await asyncio.to_thread(rec.write, batch)
                if rec.reason and not rec.queue:
                    break
        except asyncio.CancelledError:
            rec.finish("session_ended")
            await asyncio.to_thread(rec.close)
            self.recordings.pop(rec.track_sid, None)
            rec.finished.set()
            raise
        except Exception as exc:  # noqa: BLE001 (PyAV/FFmpeg errors, disk full, ...: end this one only)
            log.warning("room=%s recording %s failed: %s", self._room, rec.track_sid, exc)
            rec.reason = f"error: {type(exc).__name__}: {exc}"
        finally:
            await asyncio.to_thread(rec.close)
            self.recordings.pop(rec.track_sid, None)
            log.info(
                "room=%s recording %s ended (%s): %d frames, %.1f s",
                self._room,
                rec.track_sid,
                rec.reason,
                rec.frames,
                rec.media_seconds,
            )
        try:
            await self._on_finished(
                events_pb2.RecordingFinished(
                    track_sid=rec.track_sid,
                    path=rec.path,
                    codec=rec.codec,
                    frames=rec.frames,
                    bytes=rec.size,
                    duration_s=rec.media_seconds,
                    dropped=rec.dropped,
                    reason=rec.reason,
                )
            )
        finally:
            rec.finished.set()

    async def aclose(self, reason: str = "session_ended") -> None:
        """End every recording (files closed, events emitted) within ``CLOSE_TIMEOUT_S``."""
        self._closed = True
        waiting = list(self.recordings.values())
        for rec in waiting:
            rec.finish(reason)
        if not await wait_all_set([rec.finished for rec in waiting], CLOSE_TIMEOUT_S):
            log.warning("room=%s recordings did not close within %.0fs", self._room, CLOSE_TIMEOUT_S)
        await self._tasks.aclose(CLOSE_TIMEOUT_S)
