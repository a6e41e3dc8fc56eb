"""Media sources of the simulator: synthetic tracks, and the hub that shares one track with many peers.

* :class:`ToneTrack` — 48 kHz mono opus-friendly audio, 20 ms frames, a sine tone.
* :class:`PatternTrack` — a small moving test pattern (default 320x240 at 15 fps).

Both pace themselves on the wall clock like aiortc's dummy tracks, but never burst to catch up after
nobody read them for a while (a simulated participant may be read only once someone subscribes).
Frame payloads are precomputed or built with ``bytes`` operations, so they cost almost no CPU; the
expensive part is the encoder in whichever aiortc sender consumes them.

* :class:`TrackSource` — one published track (a client's received track, or a synthetic one) fanned
  out through ``aiortc.contrib.media.MediaRelay(buffered=False)``. :meth:`TrackSource.subscribe`
  returns a fresh proxy per consumer. With ``consume=True`` (always for received tracks) the source
  owns a task that reads its own proxy and counts frames and bytes: aiortc decodes every received
  track into an unbounded queue, so a track nobody reads would grow without limit, and the relay only
  pulls the source while at least one proxy is being read.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import functools
import logging
import math
import struct
import time
from typing import Any

from aiortc import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from av import AudioFrame, VideoFrame

log = logging.getLogger(__name__)

AUDIO_RATE = 48_000
AUDIO_PTIME = 0.020
VIDEO_CLOCK = 90_000

# Readers that fall this far behind restart the clock instead of receiving a burst of frames.
_MAX_LAG = 0.2


class _Pacer:
    """Wall-clock pacing for frame ``n`` of a fixed-rate source."""

    def __init__(self, period: float) -> None:
        self._period = period
        self._start: float | None = None
        self._index = 0

    async def next(self) -> int:
        """Wait until the next frame is due; return its index (0, 1, 2, … with no gaps)."""
        now = time.monotonic()
        if self._start is None:
            self._start = now
            return 0
        self._index += 1
        due = self._start + self._index * self._period
        if now - due > _MAX_LAG:
            self._start = now - self._index * self._period
            due = now
        if due > now:
            await asyncio.sleep(due - now)
        return self._index


@functools.lru_cache(maxsize=8)
def _tone_second(frequency: int, amplitude: float) -> bytes:
    """One second of s16 mono samples; an integer frequency makes it loop seamlessly."""
    peak = int(32767 * amplitude)
    samples = (int(peak * math.sin(2 * math.pi * frequency * i / AUDIO_RATE)) for i in range(AUDIO_RATE))
    return struct.pack(f"<{AUDIO_RATE}h", *samples)


class ToneTrack(AudioStreamTrack):
    """A sine tone: 48 kHz mono s16, 960-sample (20 ms) frames, pts in samples."""

    def __init__(self, frequency: int = 440, amplitude: float = 0.3) -> None:
        super().__init__()
        self.frequency = frequency
        self._second = _tone_second(frequency, amplitude)
        self._samples = int(AUDIO_RATE * AUDIO_PTIME)
        self._frame_bytes = self._samples * 2
        self._frames_per_second = len(self._second) // self._frame_bytes
        self._pacer = _Pacer(AUDIO_PTIME)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        index = await self._pacer.next()
        offset = (index % self._frames_per_second) * self._frame_bytes
        frame = AudioFrame(format="s16", layout="mono", samples=self._samples)
        frame.planes[0].update(self._second[offset : offset + self._frame_bytes])
        frame.pts = index * self._samples
        frame.sample_rate = AUDIO_RATE
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        return frame


class PatternTrack(VideoStreamTrack):
    """A horizontal luma ramp with a white bar sweeping across it, yuv420p, pts on a 90 kHz clock."""

    def __init__(self, width: int = 320, height: int = 240, fps: int = 15) -> None:
        super().__init__()
        if width % 2 or height % 2:
            raise ValueError("PatternTrack needs even dimensions for yuv420p")
        self.width = width
        self.height = height
        self.fps = fps
        self._pacer = _Pacer(1 / fps)
        self._ramp = bytes(16 + (200 * x) // max(width - 1, 1) for x in range(width))
        self._bar = max(width // 16, 2)
        self._chroma: bytes | None = None

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        index = await self._pacer.next()
        frame = VideoFrame(width=self.width, height=self.height, format="yuv420p")
        luma, cb, cr = frame.planes
        x = (index * 4) % (self.width - self._bar)
        row = self._ramp[:x] + b"\xeb" * self._bar + self._ramp[x + self._bar :]
        luma.update(self._rows(row, luma.line_size, self.height))
        if self._chroma is None or len(self._chroma) != cb.buffer_size:
            self._chroma = self._rows(b"\x80" * (self.width // 2), cb.line_size, self.height // 2)
        cb.update(self._chroma)
        cr.update(self._chroma)
        frame.pts = index * (VIDEO_CLOCK // self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame

    @staticmethod
    def _rows(row: bytes, line_size: int, height: int) -> bytes:
        # libav may pad lines for alignment; the plane buffer must be filled exactly.
        return (row + bytes(line_size - len(row))) * height


def frame_bytes(frame: Any) -> int:
    """Decoded payload size of an ``av`` frame, or the size of an ``av.Packet``."""
    planes = getattr(frame, "planes", None)
    if planes is not None:
        return sum(int(p.buffer_size) for p in planes)
    return int(getattr(frame, "size", 0))


class TrackSource:
    """One track shared by any number of consumers (see the module docstring).

    ``subscribe()`` hands out a relay proxy; the consumer owns it and stops it when done (an aiortc
    sender stops its track itself when it shuts down). ``aclose()`` stops the source track, which
    ends every proxy, and cancels the counting task.
    """

    def __init__(self, track_id: str, track: MediaStreamTrack, *, consume: bool = True) -> None:
        self.track_id = track_id
        self.track = track
        self.kind: str = track.kind
        self.frames = 0
        self.bytes = 0
        self.ended = asyncio.Event()
        self._relay = MediaRelay()
        self._consume = consume
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def tone(cls, track_id: str, frequency: int = 440) -> TrackSource:
        """A synthetic audio source; not drained while nobody subscribes."""
        return cls(track_id, ToneTrack(frequency), consume=False)

    @classmethod
    def pattern(cls, track_id: str, width: int = 320, height: int = 240, fps: int = 15) -> TrackSource:
        """A synthetic video source; not drained while nobody subscribes."""
        return cls(track_id, PatternTrack(width, height, fps), consume=False)

    def start(self) -> None:
        """Start the counting consumer (idempotent; a no-op with ``consume=False``)."""
        if self._consume and self._task is None:
            proxy = self._relay.subscribe(self.track, buffered=False)
            self._task = asyncio.get_running_loop().create_task(
                self._count(proxy), name=f"track-source-{self.track_id}"
            )

    def subscribe(self) -> MediaStreamTrack:
        """A new proxy of this track for one consumer (latest-frame semantics, never queues)."""
        return self._relay.subscribe(self.track, buffered=False)

    async def _count(self, proxy: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await proxy.recv()
                self.frames += 1
                self.bytes += frame_bytes(frame)
        except MediaStreamError:
            log.debug("track %s ended after %d frames", self.track_id, self.frames)
        finally:
            proxy.stop()
            self.ended.set()

    async def aclose(self) -> None:
        self.track.stop()
        queue = getattr(self.track, "_queue", None)
        if isinstance(self.track, RemoteStreamTrack) and isinstance(queue, asyncio.Queue):
            # A received track whose receiver never started would leave the relay's reader
            # waiting forever; aiortc's own end-of-track marker releases it.
            queue.put_nowait(None)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.ended.set()
