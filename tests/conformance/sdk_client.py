"""Run the real LiveKit client SDK (Rust core) against a server and print what it sees, one JSON per line.

Used by the conformance tests in a subprocess: the SDK is judged by what it prints, not by its exit code
(its native core can panic at interpreter exit). Commands arrive on stdin, one per line:
``send-data TEXT``, ``send-text TEXT`` (a text stream on ``lk.chat``), ``publish-audio``, ``leave``.
It answers RPC method ``echo`` with ``echo:<payload>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from typing import Any

from livekit import rtc

START = time.monotonic()


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": round(time.monotonic() - START, 3), **fields}), flush=True)


def kind_name(track: rtc.Track) -> str:
    return "audio" if track.kind == rtc.TrackKind.KIND_AUDIO else "video"


async def count_frames(track: rtc.Track, participant: str) -> None:
    stream = rtc.AudioStream(track) if track.kind == rtc.TrackKind.KIND_AUDIO else rtc.VideoStream(track)
    frames = 0
    async for _ in stream:
        frames += 1
        if frames in (1, 25, 100):
            emit("frames", kind=kind_name(track), participant=participant, count=frames)


async def publish_tone(room: rtc.Room) -> None:
    source = rtc.AudioSource(48000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("sdk-tone", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    publication = await room.local_participant.publish_track(track, options)
    emit("published", sid=publication.sid)
    samples = 480
    phase = 0
    while True:
        frame = rtc.AudioFrame.create(48000, 1, samples)
        data = frame.data
        for i in range(samples):
            data[i] = int(8000 * math.sin(2 * math.pi * 440 * (phase + i) / 48000))
        phase += samples
        await source.capture_frame(frame)


async def publish_pattern(room: rtc.Room) -> None:
    """A moving 320x240 test pattern at 15 fps (the SDK encodes it, VP8 by default)."""
    width, height = 320, 240
    source = rtc.VideoSource(width, height)
    track = rtc.LocalVideoTrack.create_video_track("sdk-pattern", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)
    publication = await room.local_participant.publish_track(track, options)
    emit("published", sid=publication.sid, kind="video")
    n = 0
    while True:
        shade = (n * 8) % 256
        data = bytes([shade, 255 - shade, (n * 3) % 256, 255]) * (width * height)
        source.capture_frame(rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, data))
        n += 1
        await asyncio.sleep(1 / 15)  # the frame rate of the pattern


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--mode", choices=["v0", "v1"], required=True)
    args = parser.parse_args()

    room = rtc.Room()
    tasks: set[asyncio.Task[Any]] = set()

    def spawn(coro: Any) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    @room.on("participant_connected")
    def _joined(p: rtc.RemoteParticipant) -> None:
        emit("participant_connected", identity=p.identity)

    @room.on("participant_disconnected")
    def _left(p: rtc.RemoteParticipant) -> None:
        emit("participant_disconnected", identity=p.identity)

    @room.on("track_subscribed")
    def _subscribed(track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
        emit("track_subscribed", sid=pub.sid, kind=kind_name(track), participant=p.identity)
        spawn(count_frames(track, p.identity))

    @room.on("data_received")
    def _data(packet: rtc.DataPacket) -> None:
        sender = packet.participant.identity if packet.participant else ""
        emit("data", payload=packet.data.decode(errors="replace"), topic=packet.topic, sender=sender)

    @room.on("participant_metadata_changed")
    def _metadata(p: rtc.Participant, old: str, new: str) -> None:
        emit("metadata", identity=p.identity, metadata=new)

    @room.on("room_metadata_changed")
    def _room_metadata(old: str, new: str) -> None:
        emit("room_metadata", metadata=new)

    @room.on("track_muted")
    def _muted(p: rtc.Participant, publication: rtc.TrackPublication) -> None:
        emit("track_muted", identity=p.identity, sid=publication.sid)

    @room.on("disconnected")
    def _disconnected(reason: Any) -> None:
        emit(
            "disconnected",
            reason=rtc.DisconnectReason.Name(reason) if isinstance(reason, int) else str(reason),  # type: ignore[arg-type]
        )

    async def echo(data: rtc.RpcInvocationData) -> str:
        emit("rpc", method="echo", caller=data.caller_identity, payload=data.payload)
        return f"echo:{data.payload}"

    options = rtc.RoomOptions(
        auto_subscribe=True, single_peer_connection=args.mode == "v1", connect_timeout=20
    )
    began = time.monotonic()
    try:
        await room.connect(args.url, args.token, options)
    except Exception as exc:
        emit("connect_failed", error=str(exc))
        return
    room.local_participant.register_rpc_method("echo", echo)
    emit(
        "connected",
        seconds=round(time.monotonic() - began, 3),
        room=room.name,
        remote={
            p.identity: [t.sid for t in p.track_publications.values()]
            for p in room.remote_participants.values()
        },
    )

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        command, _, arg = line.partition(" ")
        if command == "send-data":
            await room.local_participant.publish_data(arg, topic="conformance")
            emit("sent", payload=arg)
        elif command == "send-text":
            info = await room.local_participant.send_text(arg, topic="lk.chat")
            emit("sent-text", text=arg, stream_id=info.stream_id)
        elif command == "publish-audio":
            spawn(publish_tone(room))
        elif command == "publish-video":
            spawn(publish_pattern(room))
        elif command == "leave":
            break
    await room.disconnect()
    emit("left")


if __name__ == "__main__":
    asyncio.run(main())
