"""Play an audio file into the room as a track (``bridge.publish_track`` / ``unpublish_track``).

:class:`FileAudioTrack` is an aiortc ``MediaStreamTrack`` the bridge's publisher PeerConnection sends:

* opus (in Ogg, WebM, Matroska) is demuxed and handed to aiortc as ``av.Packet``: aiortc's sender then
  only packetizes (``OpusEncoder.pack``), nothing is decoded or encoded (research ``media-aiortc.md``
  §2, §5.5);
* anything else FFmpeg reads (WAV, FLAC, MP3, ...) is decoded and resampled to 48 kHz s16 in frames of
  exactly 20 ms (aiortc would otherwise put several opus packets under one RTP timestamp), and aiortc's
  sender encodes it to opus.

Why not ``aiortc.contrib.media.MediaPlayer``: its queue is fed by a thread of its own, its ``loop``
restarts timestamps at 0 (a pass-through stream would jump back in time), and its stop joins that
thread on the event loop. Here one owned task reads the file in a worker thread, half a second at a
time, into a bounded queue (it waits when the queue is full: the file is read no faster than it plays),
timestamps keep growing across loops, and ``recv`` paces packets on the wall clock without bursting to
catch up after a stall.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from bridge.tasks import OwnedTasks

log = logging.getLogger(__name__)

__all__ = ["FileAudioTrack", "probe_audio"]

RATE: Final = 48000
TIME_BASE: Final = fractions.Fraction(1, RATE)
QUEUE_ITEMS: Final = 100  # about 2 s of 20 ms packets
BATCH: Final = 25  # items read per worker-thread call
MAX_LAG_S: Final = 0.2  # a reader this far behind restarts the clock instead of bursting


def probe_audio(path: Path) -> tuple[str, int]:
    """``(codec name, channels)`` of the file's first audio stream; ``ValueError`` when it has none."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ValueError("the file has no audio stream")
            stream = container.streams.audio[0]
            return str(stream.codec_context.name), int(stream.codec_context.channels or 1)
    except av.FFmpegError as exc:
        raise ValueError(f"FFmpeg cannot read it: {exc}") from exc


class _Reader:
    """The worker-thread side: yields ``(seconds, av.Packet | av.AudioFrame)`` with growing pts."""

    def __init__(self, path: Path, *, loop: bool) -> None:
        self.path = path
        self.loop = loop
        self.passthrough = False
        self.items: Iterator[tuple[float, Any]] = self._run()

    def read(self, count: int) -> list[tuple[float, Any] | None]:
        out: list[tuple[float, Any] | None] = []
        for _ in range(count):
            item = next(self.items, None)
            out.append(item)
            if item is None:
                break
        return out

    def _run(self) -> Iterator[tuple[float, Any]]:
        with av.open(str(self.path)) as container:
            stream = container.streams.audio[0]
            self.passthrough = stream.codec_context.name == "opus"
            resampler = (
                None
                if self.passthrough
                else av.AudioResampler(format="s16", layout="stereo", rate=RATE, frame_size=960)
            )
            base = 0  # pts (1/48000) where the current pass through the file starts
            while True:
                end = base
                first: int | None = None
                if self.passthrough:
                    for packet in container.demux(stream):
                        if packet.pts is None or not packet.size:
                            continue
                        source_base = packet.time_base
                        pts = int(packet.pts * source_base * RATE)
                        duration = int((packet.duration or 0) * source_base * RATE) or 960
                        first = pts if first is None else first
                        packet.pts = packet.dts = base + pts - first
                        packet.time_base = TIME_BASE
                        end = max(end, packet.pts + duration)
                        yield float(packet.pts * TIME_BASE), packet
                else:
                    assert resampler is not None
                    for decoded in container.decode(stream):
                        for frame in resampler.resample(decoded):
                            frame.pts = end
                            frame.time_base = TIME_BASE
                            end += frame.samples
                            yield float(frame.pts * TIME_BASE), frame
                if not self.loop or end == base:
                    return
                base = end
                container.seek(0)


class FileAudioTrack(MediaStreamTrack):
    """An audio track playing ``path`` (see the module docstring). ``start()`` before aiortc reads it."""

    kind = "audio"

    def __init__(self, path: Path, *, loop: bool = False, name: str = "") -> None:
        super().__init__()
        self.path = path
        self.name = name or path.stem
        self._reader = _Reader(path, loop=loop)
        self._queue: asyncio.Queue[tuple[float, Any] | None] = asyncio.Queue(QUEUE_ITEMS)
        self._tasks = OwnedTasks(log, f"playback {path.name}")
        self._start: float | None = None
        self.sent = 0  # packets or frames handed to aiortc
        self.error: str = ""

    @property
    def passthrough(self) -> bool:
        return self._reader.passthrough

    def start(self) -> None:
        if not len(self._tasks):
            self._tasks.spawn(self._fill(), name=f"playback:{self.path.name}")

    async def _fill(self) -> None:
        try:
            while True:
                batch = await asyncio.to_thread(self._reader.read, BATCH)
                for item in batch:
                    await self._queue.put(item)  # waits while the queue is full
                if batch and batch[-1] is None:
                    return
        except (av.FFmpegError, OSError, ValueError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("playback of %s failed: %s", self.path.name, self.error)
            await self._queue.put(None)

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        item = await self._queue.get()
        if item is None:
            self.stop()
            raise MediaStreamError
        seconds, data = item
        now = time.monotonic()
        if self._start is None or now - (self._start + seconds) > MAX_LAG_S:
            self._start = now - seconds
        wait = self._start + seconds - now
        if wait > 0:
            await asyncio.sleep(wait)
        self.sent += 1
        return data

    def stop(self) -> None:
        super().stop()
        self._tasks.cancel()

    async def aclose(self) -> None:
        self.stop()
        await self._tasks.aclose(2.0)
