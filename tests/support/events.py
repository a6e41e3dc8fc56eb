"""Sample CloudEvents for the bus tests: several rooms (awkward names included) and types."""

from __future__ import annotations

import json
from typing import Final

from bridge.events.cloudevent import JSON, PROTOBUF, CloudEvent, EventType, SessionContext, source_uri

WEIRD_ROOMS: Final = ("standup", "eu.west room", "ünïcode/✓*>", "a%2Eb", "x" * 60)

TYPES: Final = tuple(
    EventType.make(
        type=f"io.livekit.{kind}.{field}.v1",
        message=f"livekit.{field.title().replace('_', '')}",
        dataschema=f"urn:livekit-bus-bridge:schema:livekit.{field}",
        kind=kind,
        field=field,
    )
    for kind, field in (
        ("signal", "speakers_changed"),
        ("signal", "update"),
        ("data", "chat_message"),
        ("bridge", "session_started"),
    )
)


def context(room: str, *, session: str | None = None, room_sid: str = "RM_abc") -> SessionContext:
    return SessionContext(
        source=source_uri("wss://lk.example.com", room),
        room=room,
        session=session or f"S{abs(hash(room)) % 10**8:08d}",
        room_sid=room_sid,
    )


def make_event(
    ctx: SessionContext,
    sequence: int,
    etype: EventType = TYPES[0],
    *,
    json_data: bool = False,
    subject: str | None = "alice",
    traceparent: str | None = None,
    size: int = 0,
) -> CloudEvent:
    if json_data:
        data = json.dumps({"room": ctx.room, "seq": sequence, "note": 'ü"x', "pad": "p" * size}).encode()
    else:
        data = bytes([sequence % 256, 0x0A, 0x00, 0xFF]) + ctx.room.encode() + b"\x00" * size
    return CloudEvent(
        ctx=ctx,
        etype=etype,
        sequence=sequence,
        time=f"2025-01-02T03:04:{sequence % 60:02d}.123456Z",
        data=data,
        datacontenttype=JSON if json_data else PROTOBUF,
        subject=subject,
        traceparent=traceparent,
    )


def mixed_events(per_room: int, rooms: tuple[str, ...] = WEIRD_ROOMS) -> list[CloudEvent]:
    """``per_room`` events for each room, interleaved, with every type, both data formats and options."""
    contexts = [context(room) for room in rooms]
    out: list[CloudEvent] = []
    for seq in range(1, per_room + 1):
        for i, ctx in enumerate(contexts):
            out.append(
                make_event(
                    ctx,
                    seq,
                    TYPES[(seq + i) % len(TYPES)],
                    json_data=(seq + i) % 3 == 0,
                    subject=None if seq % 4 == 0 else f"participant {i} ✓",
                    traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                    if seq % 5 == 0
                    else None,
                )
            )
    return out
