"""Media with the real LiveKit SDK on the other side: the bridge records the audio and VP8 video the SDK
publishes, and the SDK hears and sees what the bridge publishes from files (opus, and VP8 passed through)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import av
import pytest
from livekit.protocol import models

from bridge._proto import commands_pb2, events_pb2
from bridge.app import Bridge
from bridge.bus.memory import InMemoryBus
from bridge.bus.memory_commands import MemoryCommandSource
from bridge.config import MediaSettings, SubscribeRule
from support.bridge import bridge_settings
from support.commands import memory_command_result
from support.media_files import write_ogg_opus, write_video
from support.sdk import sdk_client
from support.signal_client import make_token
from support.simulator import running_sim
from support.waiting import eventually

pytestmark = [pytest.mark.sdk, pytest.mark.slow]

ROOM = "sdk-media"
APPLIED = events_pb2.CommandResult.STATUS_APPLIED


def decoded_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        stream: Any = container.streams[0]
        return sum(int(f.samples) for f in container.decode(stream)) / 48000


def decoded_video(path: Path) -> tuple[int, float]:
    """(frames PyAV decodes, seconds from the first to the last frame)."""
    with av.open(str(path)) as container:
        stream: Any = container.streams.video[0]
        times = [float(f.time or 0) for f in container.decode(stream)]
    return len(times), (times[-1] - times[0]) if times else 0.0


@pytest.mark.parametrize("mode", ["v1", "v0"])
async def test_bridge_records_the_sdks_audio_and_video_and_the_sdk_hears_a_file(
    tmp_path: Path, mode: str
) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    await asyncio.to_thread(write_ogg_opus, clips / "tone.ogg", 2.0)
    await asyncio.to_thread(write_video, clips / "bar.ivf", "libvpx", 2.0)
    async with (
        running_sim() as (server, _),
        sdk_client(server.url, make_token("sdk-user", ROOM), mode=mode) as sdk,
    ):
        await sdk.wait_for("connected", within=30)
        await sdk.command("publish-audio")
        sid = (await sdk.wait_for("published"))["sid"]
        await sdk.command("publish-video")
        video_sid = (await sdk.wait_for("published", where=lambda e: e.get("kind") == "video"))["sid"]
        settings = bridge_settings(server, ROOM, can_publish=True, hidden=False).model_copy(
            update={
                "media": MediaSettings(
                    subscribe=(SubscribeRule(identity="sdk-user"),),
                    recordings_dir=tmp_path,
                    publish_dir=clips,
                )
            }
        )
        bus, source = InMemoryBus(), MemoryCommandSource()
        bridge = Bridge(settings, publishers=[bus], command_sources=[source])
        await bridge.start()
        try:
            session = bridge.supervisor.sessions[ROOM]
            await eventually(
                lambda: {sid, video_sid} <= set(session.subscriptions.subscribed),
                within=30,
                what="subscribed",
            )

            seconds = 2.0
            record = commands_pb2.RecordTrack(track_sid=sid, path="sdk.ogg", duration_s=seconds)
            result = await memory_command_result(source, bus, ROOM, "bridge.record_track", record, "rec")
            assert result.status == APPLIED, result
            await eventually(
                lambda: any(e.type == "io.livekit.bridge.recording_finished.v1" for e in bus.events),
                within=20,
                what="the recording to finish",
            )
            got = await asyncio.to_thread(decoded_seconds, tmp_path / "sdk.ogg")
            assert seconds - 0.3 <= got <= seconds + 0.1, got

            record = commands_pb2.RecordTrack(track_sid=video_sid, path="sdk.webm", duration_s=seconds)
            result = await memory_command_result(source, bus, ROOM, "bridge.record_track", record, "rec-v")
            assert result.status == APPLIED, result
            await eventually(
                lambda: sum(e.type == "io.livekit.bridge.recording_finished.v1" for e in bus.events) == 2,
                within=20,
                what="the video recording to finish",
            )
            frames, span = await asyncio.to_thread(decoded_video, tmp_path / "sdk.webm")
            assert frames >= 15, frames  # the SDK may lower the frame rate; a keyframe starts the file
            assert seconds - 0.5 <= span <= seconds + 0.1, span

            publish = commands_pb2.PublishTrack(path="tone.ogg", name="bridge-tone", loop=True)
            result = await memory_command_result(source, bus, ROOM, "bridge.publish_track", publish, "pub")
            assert result.status == APPLIED, result
            heard = await sdk.wait_for(
                "frames",
                where=lambda e: e["participant"] == "livekit-bridge" and e["count"] >= 25,
                within=30,
            )
            assert heard["kind"] == "audio"

            publish = commands_pb2.PublishTrack(path="bar.ivf", name="bridge-bar", loop=True)
            result = await memory_command_result(source, bus, ROOM, "bridge.publish_track", publish, "pub-v")
            assert result.status == APPLIED, result
            track = session.published[models.TrackInfo.FromString(result.response).sid][1]
            assert (track.kind, track.passthrough) == ("video", True)
            seen = await sdk.wait_for(
                "frames",
                where=lambda e: (
                    e["participant"] == "livekit-bridge" and e["kind"] == "video" and e["count"] >= 25
                ),
                within=30,
            )
            assert seen["count"] >= 25
        finally:
            await bridge.aclose()
