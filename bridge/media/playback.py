"""Play a file or URL into the room as a track (``bridge.publish_track`` / ``unpublish_track``).

:class:`PlaybackTrack` is an aiortc ``MediaStreamTrack`` the bridge's publisher PeerConnection sends,
audio or video, from one stream of a container :mod:`bridge.media.sources` opened:

* opus, VP8 and H.264 are demuxed and handed to aiortc as ``av.Packet``: aiortc's sender then only
  packetizes (``OpusEncoder.pack``, ``Vp8Encoder.pack``, ``H264Encoder.pack``), nothing is decoded or
  encoded (research ``media-aiortc.md`` §2, §5.5). H.264 goes through FFmpeg's ``h264_mp4toannexb``
  (MP4 and Matroska store length-prefixed NAL units; aiortc splits on Annex B start codes) and every
  IDR frame gets the stream's SPS/PPS in front, so a subscriber joining late can decode it;
* other audio is decoded and resampled to 48 kHz s16 in frames of exactly 20 ms (aiortc would
  otherwise put several opus packets under one RTP timestamp) and aiortc encodes it to opus; other
  video is decoded and aiortc encodes it to VP8.

Timestamps are in the RTP clock of the kind (1/48000, 1/90000). Why not
``aiortc.contrib.media.MediaPlayer``: its queue is fed by a thread of its own, its ``loop`` restarts
timestamps at 0 (a pass-through stream would jump back in time), and its stop joins that thread on the
event loop. Here one owned task reads in a worker thread, a batch at a time (one item at a time from a
URL), into a bounded queue (it waits when the queue is full: the source is read no faster than it
plays), timestamps keep growing across loops, and ``recv`` paces items on the wall clock without
bursting to catch up after a stall.

Opens, reads and closes run on playback's own bounded pool of daemon threads (:data:`MAX_THREADS`), never
on the event loop's default executor: a read of a live URL blocks until its next packet arrives (up to
FFmpeg's socket timeout), and an open that missed its deadline keeps its thread until FFmpeg gives up.
On the default executor (``min(32, cpus + 4)`` threads) a few such tracks would starve aiortc's
encoders and the recorder's writes, which share it. The threads are daemons, never joined: a thread
blocked in FFmpeg cannot be interrupted, and neither the event loop's shutdown nor the process's exit
waits for it.

A track ends by itself when its source does (the end of the file without ``loop``, or a read error):
``recv`` hands the last item over, then sets :attr:`PlaybackTrack.exhausted` and stops the track. Every
stop, that one or :meth:`PlaybackTrack.aclose`, sets :attr:`PlaybackTrack.stopped`, so the session can
unpublish a track that ended by itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fractions
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Final

import av
import av.bitstream
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from bridge.errors import MediaError, MediaRefused
from bridge.media.h264 import ParameterSets, nal_units
from bridge.media.sources import (
    ENCODED_MIME,
    StreamInfo,
    choose_kind,
    describe,
    open_source,
    passthrough_codec,
)
from bridge.tasks import OwnedTasks

log = logging.getLogger(__name__)

__all__ = ["PlaybackTrack", "open_playback", "playback_threads"]

OPEN_DEADLINE_S: Final = 10.0  # opening and probing a source, URLs included
MAX_LAG_S: Final = 0.2  # a reader this far behind restarts the clock instead of bursting
AUDIO_FRAME: Final = 960  # 20 ms at 48 kHz
DEFAULT_FPS: Final = 25  # when the container says nothing (a raw .h264 stream)
# Playback's worker threads, shared by every track of the process (see the module docstring). Enough
# for the live URL tracks of a busy process, each holding a thread while it waits for its next packet;
# beyond it reads wait in line rather than take threads from aiortc's encoders.
MAX_THREADS: Final = 16


class _PlaybackThreads(concurrent.futures.Executor):
    """A bounded pool of named daemon threads, started as work needs them and never joined.

    ``concurrent.futures.ThreadPoolExecutor`` joins its threads at interpreter exit (even after
    ``shutdown(wait=False)``), so one thread blocked in FFmpeg would hold the process up. Work that
    was cancelled before a thread took it never runs.
    """

    def __init__(self, max_workers: int, prefix: str) -> None:
        self._max = max_workers
        self._prefix = prefix
        self._work: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]]] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._names = itertools.count(1)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            self._work.put((future, lambda: fn(*args, **kwargs)))
            # ``_idle`` is threads waiting for work minus work waiting for a thread.
            self._idle -= 1
            if self._idle < 0 and len(self._threads) < self._max:
                thread = threading.Thread(
                    target=self._serve, name=f"{self._prefix}-{next(self._names)}", daemon=True
                )
                self._threads.append(thread)
                self._idle += 1
                thread.start()
        return future

    @property
    def threads(self) -> int:
        """Threads started so far (they stay, idle or busy)."""
        return len(self._threads)

    def _serve(self) -> None:
        while True:
            future, call = self._work.get()
            error: BaseException | None = None
            result: Any = None
            if future.set_running_or_notify_cancel():  # False: cancelled while it waited
                try:
                    result = call()
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side, as ThreadPoolExecutor does
                    error = exc
            # Counted idle before the caller hears back: its next submit then finds this thread
            # instead of starting another one.
            with self._lock:
                self._idle += 1
            if future.running():
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)
            del future, call, result, error  # hold nothing (a container) while idle


_threads: _PlaybackThreads | None = None
_threads_lock = threading.Lock()  # event loops may run in several threads (tests, embedders)


def playback_threads() -> _PlaybackThreads:
    """The process's playback thread pool, created on first use."""
    global _threads  # noqa: PLW0603 - one lazily created pool per process
    with _threads_lock:
        if _threads is None:
            _threads = _PlaybackThreads(MAX_THREADS, "playback")
        return _threads


async def _in_thread(call: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(playback_threads(), call, *args)


@dataclass(frozen=True)
class _Buffering:
    """RTP clock rate, queue bound and items read per worker-thread call (of a file: a URL's reads take
    one item each, so a live source's packets are not held back until a batch is complete), per kind."""

    rate: int
    queue: int
    batch: int


_AUDIO: Final = _Buffering(48000, 100, 25)  # about 2 s of 20 ms packets or frames
_VIDEO_PACKETS: Final = _Buffering(90000, 60, 10)  # encoded frames are small
_VIDEO_FRAMES: Final = _Buffering(90000, 8, 2)  # decoded ones are not (a 1080p frame is 3 MB)

# (pts, duration) in the track's clock, relative to the source, and the packet or frame.
_Item = tuple[int, int, Any]


def _units(value: int, time_base: fractions.Fraction, rate: int) -> int:
    return int(value * time_base * rate)


class _Reader:
    """The worker-thread side: yields ``(seconds, av.Packet | av.Frame)`` with pts growing across loops.

    ``read`` and ``close`` hold a lock: the container is closed only between two reads, even when the
    task that asked for a read was cancelled while its thread still runs.
    """

    def __init__(
        self,
        container: Any,
        stream: StreamInfo,
        *,
        reopen: Callable[[], Any],
        loop: bool,
        passthrough: bool,
    ) -> None:
        self._container = container
        self._reopen = reopen
        self._index = stream.index
        self._kind = stream.kind
        self._stream = container.streams[stream.index]
        self.loop = loop
        self._lock = threading.Lock()
        self._failed: Exception | None = None
        self._convert: Callable[[], Iterator[_Item]]
        if passthrough:
            self._convert = self._packets
        elif stream.kind == "audio":
            self._resampler = av.AudioResampler(
                format="s16", layout="stereo", rate=_AUDIO.rate, frame_size=AUDIO_FRAME
            )
            self._convert = self._audio_frames
        else:
            self._convert = self._video_frames
        self.buffering = (
            _AUDIO if stream.kind == "audio" else _VIDEO_PACKETS if passthrough else _VIDEO_FRAMES
        )
        self.time_base = fractions.Fraction(1, self.buffering.rate)
        self._frame_units = AUDIO_FRAME
        if stream.kind == "video":
            fps = self._stream.average_rate or self._stream.guessed_rate or DEFAULT_FPS
            self._frame_units = int(self.buffering.rate / fps)
        self._h264 = ParameterSets() if passthrough and stream.codec == "h264" else None
        extradata = bytes(self._stream.codec_context.extradata or b"")
        if self._h264 is not None and extradata.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
            # Annex B parameter sets out of band (RTSP's sprop-parameter-sets): remembered for the IDRs.
            self._h264.observe(nal_units(extradata))
        self.items: Generator[tuple[float, Any]] = self._run()

    def read(self, count: int) -> list[tuple[float, Any] | None]:
        """Up to ``count`` items, ending with None at the end. An error after some items is raised by
        the next call, so the items before it are played (a generator that raised is finished: asked
        again, it would look like a clean end)."""
        out: list[tuple[float, Any] | None] = []
        with self._lock:
            if self._failed is not None:
                raise self._failed
            for _ in range(count):
                try:
                    item = next(self.items, None)
                except Exception as exc:
                    if not out:
                        raise
                    self._failed = exc
                    break
                out.append(item)
                if item is None:
                    break
        return out

    def close(self) -> None:
        with self._lock:
            self.items.close()
            self._container.close()  # idempotent; also when the generator never started

    def _run(self) -> Generator[tuple[float, Any]]:
        base = 0  # pts where the current pass through the source starts
        while True:
            end = base
            first: int | None = None
            with self._container:
                for pts, duration, item in self._convert():
                    first = pts if first is None else first
                    item.pts = base + pts - first
                    if isinstance(item, av.Packet):
                        item.dts = item.pts
                    item.time_base = self.time_base
                    end = max(end, item.pts + duration)
                    yield float(item.pts * self.time_base), item
            if not self.loop or end == base:
                return
            base = end
            # Opened again rather than seeked: raw streams (.h264) cannot seek, and a URL starts over.
            self._container = self._reopen()
            # Never touch the old container's stream again: PyAV frees it with the container.
            streams = self._container.streams
            if self._index >= len(streams) or streams[self._index].type != self._kind:
                self._container.close()
                raise MediaError(f"the source changed: stream {self._index} is no longer {self._kind}")
            self._stream = streams[self._index]

    def _packets(self) -> Iterator[_Item]:
        stream, rate = self._stream, self.buffering.rate
        # One filter per pass: after the flush at the end of the file it accepts nothing more.
        bsf = None
        if self._h264 is not None:
            bsf = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", stream)
        following = 0  # for packets without timestamps (raw .h264): where the previous one ended
        for demuxed in self._container.demux(stream):
            for packet in bsf.filter(demuxed if demuxed.size else None) if bsf else [demuxed]:
                if not packet.size:
                    continue
                time_base = packet.time_base or stream.time_base
                stamp = packet.pts if packet.pts is not None else packet.dts
                pts = following if stamp is None else _units(stamp, time_base, rate)
                duration = _units(packet.duration or 0, time_base, rate) or self._frame_units
                following = pts + duration
                if self._h264 is not None:
                    data = bytes(packet)
                    fixed = self._h264.with_sets(data)
                    yield pts, duration, packet if fixed is data else av.Packet(fixed)
                else:
                    yield pts, duration, packet

    def _audio_frames(self) -> Iterator[_Item]:
        pts = 0  # contiguous: the resampler's 20 ms frames do not line up with the source's
        for decoded in self._container.decode(self._stream):
            for frame in self._resampler.resample(decoded):
                yield pts, frame.samples, frame
                pts += frame.samples

    def _video_frames(self) -> Iterator[_Item]:
        following = 0
        for frame in self._container.decode(self._stream):
            seconds = frame.time
            pts = following if seconds is None else int(seconds * self.buffering.rate)
            following = pts + self._frame_units
            yield pts, self._frame_units, frame


class PlaybackTrack(MediaStreamTrack):
    """A track playing one stream of ``container`` (see the module docstring); it owns the container.

    ``reopen`` opens the source again for the next pass of ``loop`` (in the worker thread). ``shown``
    names the source in logs (a redacted URL, or the path). ``start()`` before aiortc reads it;
    ``aclose()`` when done, also when it was never started. ``stopped`` is set when it stops for any
    reason; ``exhausted`` is True when that was its source running out (``error`` says why, if it failed).
    """

    def __init__(
        self,
        container: Any,
        stream: StreamInfo,
        *,
        reopen: Callable[[], Any],
        shown: str,
        loop: bool = False,
        url: bool = False,
    ) -> None:
        super().__init__()
        self.kind = stream.kind
        self.stream = stream
        self.shown = shown
        codec = passthrough_codec(stream.kind, stream.codec)
        self.passthrough = codec is not None
        self.mime_type: str = codec or ENCODED_MIME[stream.kind]  # what goes over RTP
        self._reader = _Reader(container, stream, reopen=reopen, loop=loop, passthrough=self.passthrough)
        self._queue: asyncio.Queue[tuple[float, Any] | None] = asyncio.Queue(self._reader.buffering.queue)
        # A live URL delivers as it goes: a batch would hold its first packets until the last arrived.
        self.batch = 1 if url else self._reader.buffering.batch  # items per worker-thread read
        self._tasks = OwnedTasks(log, f"playback {shown}")
        self._start: float | None = None
        self.sent = 0  # packets or frames handed to aiortc
        self.error: str = ""
        self.exhausted = False
        self.stopped = asyncio.Event()
        self.started_at: float | None = None  # monotonic time of start()

    def start(self) -> None:
        if not len(self._tasks):
            self.started_at = time.monotonic()
            self._tasks.spawn(self._fill(), name=f"playback:{self.shown}")

    async def _fill(self) -> None:
        try:
            while True:
                batch = await _in_thread(self._reader.read, self.batch)
                for item in batch:
                    await self._queue.put(item)  # waits while the queue is full
                if batch and batch[-1] is None:
                    return
        except (av.FFmpegError, OSError, ValueError, MediaError) as exc:
            # str() of an FFmpeg error quotes the whole URL; its strerror does not (ours never do).
            reason = str(exc) if isinstance(exc, MediaError) else getattr(exc, "strerror", None)
            reason = reason or "read failed"
            self.error = f"{type(exc).__name__}: {reason}"
            log.warning("playback of %s ended: %s", self.shown, self.error)
        except Exception as exc:
            # Not a source error we know (a bug, PyAV surprising us): the track still ends, or recv
            # would wait forever. Its message is not quoted in events: it may hold the URL.
            self.error = f"{type(exc).__name__}: unexpected error"
            log.exception("playback of %s ended: %s", self.shown, self.error)
        # Cancellation (stop) propagates above; every other way out ends the track through recv.
        await self._queue.put(None)

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        item = await self._queue.get()
        if item is None:
            self.exhausted = True
            self.stop()
            raise MediaStreamError
        seconds, data = item
        now = time.monotonic()
        if self._start is None or now - (self._start + seconds) > MAX_LAG_S:
            self._start = now - seconds
        wait = self._start + seconds - now
        if wait > 0:
            await asyncio.sleep(wait)
            if self.readyState != "live":
                raise MediaStreamError  # stopped while pacing: nothing more goes out, ``sent`` is final
        self.sent += 1
        return data

    def stop(self) -> None:
        super().stop()
        self._tasks.cancel()
        self.stopped.set()

    async def aclose(self) -> None:
        self.stop()
        await self._tasks.aclose(2.0)
        await _in_thread(self._reader.close)


async def open_playback(target: str, *, url: bool, shown: str, kind: str, loop: bool) -> PlaybackTrack:
    """Open ``target`` in a worker thread, pick the stream ``kind`` asks for, and build its track.

    Opening a URL can block: FFmpeg's own timeouts bound it (:func:`~bridge.media.sources.open_source`)
    and so does ``OPEN_DEADLINE_S`` here; a container that opens after the deadline is closed then.
    Raises :class:`~bridge.errors.MediaRefused`.
    """

    def opener() -> Any:
        return open_source(target, url=url, shown=shown)

    future = asyncio.get_running_loop().run_in_executor(playback_threads(), opener)
    try:
        container = await asyncio.wait_for(asyncio.shield(future), OPEN_DEADLINE_S)
    except BaseException as exc:
        future.add_done_callback(_close_late)
        if isinstance(exc, TimeoutError):
            raise MediaRefused("timeout", f"{shown} did not open within {OPEN_DEADLINE_S:g}s") from None
        raise
    try:
        stream = choose_kind(kind, describe(container))
    except ValueError as exc:
        await _in_thread(container.close)
        raise MediaRefused("invalid_path", f"{shown}: {exc}") from None
    return PlaybackTrack(container, stream, reopen=opener, shown=shown, loop=loop, url=url)


def _close_late(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()
