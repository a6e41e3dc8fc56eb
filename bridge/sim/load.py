"""Load mode: many rooms with simulated participants producing signaling events at a steady rate."""

from __future__ import annotations

import asyncio
import itertools
import time

from bridge.sim.scenario import Scenario
from bridge.sim.server import SimServer


class LoadGenerator:
    """Rooms ``load-0`` … ``load-N-1``; round-robin events totalling ``rate_per_s`` per second.

    Events cycle through speakers, connection quality, participant metadata and user data, so a
    bridge joined to these rooms sees a realistic mix. ``sent`` counts what was generated.

    With ``stamp=True`` the metadata and the user data payload are ``{"n": <n>, "t": <time.time_ns()>}``
    (wall-clock send time, for latency measurements on one machine); by default they are
    ``{"n": <n>}`` and ``tick <n>``. With ``data=False`` the user data step is a second metadata update
    instead (signaling only: for a client that has no data channel).
    """

    def __init__(
        self,
        server: SimServer,
        *,
        rooms: int,
        rate_per_s: float,
        prefix: str = "load-",
        stamp: bool = False,
        data: bool = True,
    ) -> None:
        if rooms < 1 or rate_per_s <= 0:
            raise ValueError("load mode needs rooms >= 1 and rate_per_s > 0")
        self.scenario = Scenario(server)
        self.rooms = [f"{prefix}{i}" for i in range(rooms)]
        self.rate_per_s = rate_per_s
        self.stamp = stamp
        self.data = data
        self.sent = 0
        self._stopped = asyncio.Event()
        for name in self.rooms:
            self.scenario.join(name, "speaker-a")
            self.scenario.join(name, "speaker-b")

    def stop(self) -> None:
        self._stopped.set()

    def emit(self, room: str, n: int) -> None:
        step = n % 4
        if step == 0:
            self.scenario.speak(room, {"speaker-a": 0.1 + (n % 9) / 10, "speaker-b": 0.0})
        elif step == 1:
            self.scenario.quality(room, {"speaker-a": "good" if n % 8 < 4 else "excellent"})
        elif step == 2 or not self.data:
            stamp = f', "t": {time.time_ns()}' if self.stamp else ""
            who = "speaker-b" if step == 2 else "speaker-a"
            self.scenario.set_metadata(room, who, metadata=f'{{"n": {n}{stamp}}}')
        elif self.stamp:
            payload = f'{{"n": {n}, "t": {time.time_ns()}}}'
            self.scenario.send_data(room, "speaker-a", payload=payload, topic="load")
        else:
            self.scenario.send_data(room, "speaker-a", payload=f"tick {n}", topic="load")
        self.sent += 1

    async def run(self) -> None:
        """Emit until :meth:`stop`; paced by the clock so a slow loop catches up instead of drifting."""
        start = time.monotonic()
        for n, room in zip(itertools.count(), itertools.cycle(self.rooms), strict=False):
            if self._stopped.is_set():
                return
            due = start + n / self.rate_per_s
            delay = due - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stopped.wait(), delay)
                    return
                except TimeoutError:
                    pass
            self.emit(room, n)
