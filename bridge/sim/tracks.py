"""Media sources of the simulator: synthetic tracks, and the hub that shares one track with many peers.

* :class:`ToneTrack` — 48 kHz mono opus-friendly audio, 20 ms frames, a sine tone.
* :class:`PatternTrack` — a small moving test pattern (default 320x240 at 15 fps).
* :class:`EncodedToneTrack` — the same tone as opus packets encoded once per process (``av.Packet``,
  which aiortc's sender only packetizes: no encoder per track), woken by one shared
  :class:`_Ticker` per event loop instead of a timer per track. Opt-in (``TrackSource.encoded_tone``,
  the scenario's ``publish(..., encoded=True)``), for load tests where the simulator's per-track
  encoding, not the client under test, would be the limit.

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
from av import AudioFrame, Packet, VideoFrame

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


class _Ticker:
    """One task per event loop that paces every :class:`EncodedToneTrack` of a period.

    The period is split into ``slots`` phases and each track is given one (round robin), so a few
    hundred tracks send in small groups spread over the period rather than in one burst. A tick
    resolves the future its slot's tracks are waiting on; the task runs while any track is
    registered. Ticks are scheduled on the monotonic clock without drift; after a stall longer than
    one period the schedule restarts (the missed ticks are skipped, not sent as a burst).
    """

    _by_loop: dict[asyncio.AbstractEventLoop, dict[float, _Ticker]] = {}

    def __init__(self, period: float, slots: int) -> None:
        self.period = period
        self.slots = slots
        self._waiters: list[list[asyncio.Future[None]]] = [[] for _ in range(slots)]
        self._users = 0
        self._next_slot = 0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def shared(cls, period: float, slots: int = 10) -> _Ticker:
        loop = asyncio.get_running_loop()
        tickers = cls._by_loop.setdefault(loop, {})
        for stale in [other for other in cls._by_loop if other.is_closed()]:
            del cls._by_loop[stale]
        ticker = tickers.get(period)
        if ticker is None:
            ticker = tickers[period] = cls(period, slots)
        return ticker

    def register(self) -> int:
        """A track starts using the ticker; returns its slot."""
        self._users += 1
        slot = self._next_slot
        self._next_slot = (slot + 1) % self.slots
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sim-ticker")
        return slot

    def unregister(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users == 0 and self._task is not None:
            self._task.cancel()
            self._task = None
            waiters, self._waiters = self._waiters, [[] for _ in range(self.slots)]
            for future in (f for slot in waiters for f in slot):
                future.cancel()

    def wait(self, slot: int) -> asyncio.Future[None]:
        """A future resolved at ``slot``'s next tick. One per waiter: cancelling it (a reader that
        gave up) must not cancel the others'."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[slot].append(future)
        return future

    async def _run(self) -> None:
        step = self.period / self.slots
        start = time.monotonic()
        index = 0
        while True:
            due = start + index * step
            now = time.monotonic()
            if now - due > self.period:
                # Stalled (a GC pause, a busy loop): skip the missed ticks. Firing them all at once
                # would send every track's packet in one burst; the tracks keep their pts sequence.
                start, due = now - index * step, now
            if due > now:
                await asyncio.sleep(due - now)
            slot = index % self.slots
            waiters, self._waiters[slot] = self._waiters[slot], []
            for future in waiters:
                if not future.done():
                    future.set_result(None)
            index += 1


@functools.lru_cache(maxsize=8)
def _opus_second(frequency: int, amplitude: float) -> tuple[bytes, ...]:
    """One second (50 packets of 20 ms) of the tone, encoded once with aiortc's own opus encoder."""
    from aiortc.codecs.opus import OpusEncoder

    tone = _tone_second(frequency, amplitude)
    samples = int(AUDIO_RATE * AUDIO_PTIME)
    count = len(tone) // (samples * 2)
    encoder = OpusEncoder()
    payloads: list[bytes] = []
    index = 0
    while len(payloads) < count:  # the encoder may hold the first frame back (look-ahead)
        offset = (index % count) * samples * 2
        frame = AudioFrame(format="s16", layout="mono", samples=samples)
        frame.planes[0].update(tone[offset : offset + samples * 2])
        frame.pts = index * samples
        frame.sample_rate = AUDIO_RATE
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        encoded, _ = encoder.encode(frame)
        payloads += encoded
        index += 1
    return tuple(payloads[:count])


class EncodedToneTrack(MediaStreamTrack):
    """The tone as pre-encoded opus: one ``av.Packet`` per 20 ms, pts in samples (time base 1/48000).

    Every track of a process loops the same packets; only the pts is the track's own. An aiortc
    sender packetizes such packets as they are (no encoder runs). Paced by the shared
    :class:`_Ticker`: a reader that falls behind gets the next packet at the next tick, never a burst.
    """

    kind = "audio"
    # recv() returns within one period, or raises once stopped: a forwarding track may await it
    # directly (bridge.sim.media._SwitchTrack) instead of racing a task against source changes.
    returns_promptly = True

    def __init__(self, frequency: int = 440, amplitude: float = 0.3) -> None:
        super().__init__()
        self.frequency = frequency
        self._packets = _opus_second(frequency, amplitude)
        self._samples = int(AUDIO_RATE * AUDIO_PTIME)
        self._time_base = fractions.Fraction(1, AUDIO_RATE)
        self._ticker: _Ticker | None = None
        self._slot = 0
        self._index = 0

    async def recv(self) -> Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        if self._ticker is None:
            self._ticker = _Ticker.shared(AUDIO_PTIME)
            self._slot = self._ticker.register()
        else:
            try:
                await self._ticker.wait(self._slot)
            except asyncio.CancelledError:
                if self.readyState != "live":  # the ticker stopped because this track did
                    raise MediaStreamError from None
                raise
            if self.readyState != "live":
                raise MediaStreamError
        index, self._index = self._index, self._index + 1
        packet = Packet(self._packets[index % len(self._packets)])
        packet.pts = index * self._samples
        packet.time_base = self._time_base
        return packet

    def stop(self) -> None:
        if self.readyState == "live" and self._ticker is not None:
            self._ticker.unregister()
        super().stop()


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
    def encoded_tone(cls, track_id: str, frequency: int = 440) -> TrackSource:
        """A synthetic audio source of pre-encoded opus (see :class:`EncodedToneTrack`)."""
        return _EncodedToneSource(track_id, frequency)

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


class _EncodedToneSource(TrackSource):
    """:meth:`TrackSource.encoded_tone`: each subscriber gets its own :class:`EncodedToneTrack`.

    The packets and the ticker are shared anyway, so a relay (a task and a queue per subscriber,
    and a task switch per frame) would only add cost.
    """

    def __init__(self, track_id: str, frequency: int) -> None:
        super().__init__(track_id, EncodedToneTrack(frequency), consume=False)
        self.frequency = frequency
        self._handed_out: list[EncodedToneTrack] = []

    def subscribe(self) -> MediaStreamTrack:
        self._handed_out = [t for t in self._handed_out if t.readyState == "live"]
        track = EncodedToneTrack(self.frequency)
        self._handed_out.append(track)
        return track

    async def aclose(self) -> None:
        for track in self._handed_out:
            track.stop()
        self._handed_out.clear()
        await super().aclose()
