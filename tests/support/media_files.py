"""Media files for tests, written with PyAV: a short opus tone in Ogg, and small video clips (optionally with
an opus tone) in any container and codec FFmpeg writes."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import av

WIDTH, HEIGHT, FPS = 320, 240, 15


def _tone(i: int) -> Any:
    """The i-th 20 ms frame of a 440 Hz mono tone at 48 kHz."""
    samples = [int(8000 * math.sin(2 * math.pi * 440 * (i * 960 + n) / 48000)) for n in range(960)]
    frame = av.AudioFrame(format="s16", layout="mono", samples=960)
    frame.planes[0].update(struct.pack("<960h", *samples))
    frame.sample_rate = 48000
    frame.pts = i * 960
    return frame


def _bar(i: int) -> Any:
    """The i-th frame of a white bar moving across black, in yuv420p."""
    frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
    x = (i * 10) % WIDTH
    for n, plane in enumerate(frame.planes):
        if n == 0:
            row = bytes(x) + b"\xff" * 20 + bytes(max(0, WIDTH - x - 20))
            line = row[:WIDTH].ljust(plane.line_size, b"\0")
        else:
            line = b"\x80" * plane.line_size  # no colour
        plane.update(line * plane.height)
    frame.pts = i
    return frame


def write_ogg_opus(path: Path, seconds: float) -> None:
    """A 440 Hz mono tone, 48 kHz, in 20 ms opus frames."""
    with av.open(str(path), "w") as container:
        stream: Any = container.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        for i in range(int(seconds * 50)):
            container.mux(stream.encode(_tone(i)))
        container.mux(stream.encode(None))


def write_video(path: Path, codec: str, seconds: float, *, with_audio: bool = False) -> None:
    """A 320x240 moving bar at 15 fps in ``codec`` (``libvpx``, ``libx264``, ``mpeg4``, ``mjpeg``...),
    a keyframe every second; the container follows the suffix (``.h264``: a raw Annex B stream).
    ``with_audio`` adds an opus tone as the first stream."""
    fmt = "h264" if path.suffix == ".h264" else None
    with av.open(str(path), "w", format=fmt) as container:
        audio: Any = None
        if with_audio:
            audio = container.add_stream("libopus", rate=48000)
            audio.layout = "mono"
        video: Any = container.add_stream(codec, rate=FPS)
        video.width, video.height = WIDTH, HEIGHT
        video.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        video.gop_size = FPS
        if codec == "libx264":
            # What WebRTC peers decode: constrained baseline, no B-frames.
            video.options = {"profile": "baseline", "tune": "zerolatency"}
        for i in range(int(seconds * FPS)):
            container.mux(video.encode(_bar(i)))
        container.mux(video.encode(None))
        if audio is not None:
            for i in range(int(seconds * 50)):
                container.mux(audio.encode(_tone(i)))
            container.mux(audio.encode(None))
