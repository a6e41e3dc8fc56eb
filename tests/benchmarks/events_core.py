"""The bridge's own event pipeline in one process, fed recorded frames: a reference beside naive and lean.

Everything the bridge does with a SignalResponse frame after the websocket has delivered it runs for real:
each room is a real :class:`~bridge.rooms.session.RoomSession` whose sans-I/O protocol gets the frame
(``receive_data``) and whose connection hands the resulting events to the session (``_flush``: decode,
room state, mapping, numbering), then the real :class:`~bridge.bus.outbox.EventFanout`, both outboxes and
the Kafka and NATS publishers to the real brokers. Not included: the websocket (TLS, framing, deflate),
aiortc, and the scheduling of 50 reader tasks. So the number says what the pipeline costs per event on
the same footing as the lean reference (recorded frames, one loop, nothing else running), where the
end-to-end phases are bounded by this 2-core machine running the simulator, brokers and consumer too.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bridge.bus.kafka import KafkaPublisher
from bridge.bus.nats import NatsPublisher
from bridge.bus.outbox import EventFanout, Outbox
from bridge.config import KafkaSettings, LiveKitSettings, NatsSettings, Secret
from bridge.rooms.session import RoomSession
from support.bench import own_cpu_seconds

__all__ = ["run_core"]

ROOM_EVENTS_IN_FLIGHT = 2_000  # frames fed before waiting for the buses to catch up (like a busy socket)


async def run_core(
    frames: list[bytes],
    join: bytes,
    *,
    rooms: int,
    events: int,
    bootstrap: str,
    topic: str,
    nats_url: str,
    prefix: str,
) -> tuple[int, float, float]:
    """Feed ``events`` frames round-robin to ``rooms`` sessions; ``(events, seconds, CPU seconds)``.

    Timing starts after every session has joined and ends when both buses confirmed every event.
    """
    livekit = LiveKitSettings(
        url="ws://127.0.0.1:1", api_key="bench", api_secret=Secret("x" * 32), identity="bridge"
    )
    kafka = KafkaSettings(bootstrap_servers=(bootstrap,), events_topic=topic, enable_idempotence=False)
    publishers: list[Any] = [
        KafkaPublisher(kafka),
        NatsPublisher(NatsSettings(servers=(nats_url,), subject_prefix=prefix)),
    ]
    outboxes = [Outbox(p, capacity=10_000, overflow="block", on_drop=_dropped) for p in publishers]
    fanout = EventFanout(outboxes)
    for publisher in publishers:
        await publisher.start()
    fanout.start()
    sessions = [RoomSession(settings=livekit, room=f"load-{i}", sink=fanout) for i in range(rooms)]
    try:
        now = time.monotonic()
        for session in sessions:
            p = session.protocol
            p.start(now)
            p.actions()  # the OpenSocket: there is no socket, frames are fed below
            p.socket_opened(now)
            p.receive_data(join, now)
            await session.connection._flush()
        base = [o.published for o in outboxes]
        joined = 3 * rooms  # session_started, room snapshot and the join response itself, per room
        await _settled(outboxes, joined, base)
        base = [o.published for o in outboxes]
        t0, c0 = time.perf_counter(), own_cpu_seconds()
        for n in range(events):
            session = sessions[n % rooms]
            session.protocol.receive_data(frames[n % len(frames)], time.monotonic())
            await session.connection._flush()
            if n % ROOM_EVENTS_IN_FLIGHT == ROOM_EVENTS_IN_FLIGHT - 1:
                await asyncio.sleep(0)  # let the outboxes run, as the reader tasks would between frames
        await _settled(outboxes, events, base)
        return events, time.perf_counter() - t0, own_cpu_seconds() - c0
    finally:
        await fanout.aclose(10.0)
        for publisher in publishers:
            await publisher.aclose()


async def _settled(outboxes: list[Outbox], count: int, base: list[int] | None = None) -> None:
    base = base or [0] * len(outboxes)
    deadline = time.monotonic() + 60
    while any(o.published - b < count for o, b in zip(outboxes, base, strict=True)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the buses confirmed {[o.published for o in outboxes]} of {count} events")
        await asyncio.sleep(0.001)  # poll: the outboxes have no completion event to wait on


def _dropped(bus: str, events: list[Any]) -> None:
    raise AssertionError(f"{bus} dropped {len(events)} events with overflow 'block'")
