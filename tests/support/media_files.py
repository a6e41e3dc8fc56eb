"""Media files for tests: a short opus tone in an Ogg container, written with PyAV."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import av


def write_ogg_opus(path: Path, seconds: float) -> None:
    """A 440 Hz mono tone, 48 kHz, in 20 ms opus frames."""
    with av.open(str(path), "w") as container:
        stream: Any = container.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        for i in range(int(seconds * 50)):
            samples = [int(8000 * math.sin(2 * math.pi * 440 * (i * 960 + n) / 48000)) for n in range(960)]
            frame = av.AudioFrame(format="s16", layout="mono", samples=960)
            frame.planes[0].update(struct.pack("<960h", *samples))
            frame.sample_rate = 48000
            frame.pts = i * 960
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
