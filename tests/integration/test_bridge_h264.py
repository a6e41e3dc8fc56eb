"""H.264 tracks, and forwards a real consumer opens: a real Bridge on the simulator, an in-memory bus.

- a simulated participant's ``video/H264`` track reaches the bridge as H.264 (the simulator offers the
  track's own codec), and ``bridge.record_track`` muxes it without transcoding into .mkv / .mp4 / .h264
  files that PyAV decodes from a keyframe, spanning the requested seconds;
- ``bridge.forward_track`` of an H.264, a VP8 and an opus track: libavformat opens the SDP file the bridge
  wrote (binding the port it names) and decodes the RTP it receives; the forward shows up in /metrics.
"""

from __future__ import annotations

import asyncio
import fractions
from pathlib import Path
from typing import Any

import av
import pytest

from bridge._proto import commands_pb2, events_pb2
from bridge.config import MediaSettings
from bridge.sim.ice import use_loopback_only
from support.media_bridge import free_udp_port_pair, media_bridge, udp_port_bound
from support.metrics import parse
from support.waiting import eventually

ROOM = "h264-e2e"
TIMEOUT = 20.0
APPLIED = events_pb2.CommandResult.STATUS_APPLIED
FINISHED = "io.livekit.bridge.recording_finished.v1"


@pytest.fixture(autouse=True)
def _loopback() -> None:
    use_loopback_only()


# ------------------------------------------------------------------------------------------ recording


@pytest.mark.parametrize("file", ["rec/cam.mkv", "rec/cam.mp4", "rec/cam.h264"])
async def test_record_h264_track_writes_a_decodable_file(tmp_path: Path, file: str) -> None:
    seconds = 2.0
    async with media_bridge(ROOM, MediaSettings(recordings_dir=tmp_path)) as setup:
        sid = setup.scenario.publish(ROOM, "alice", kind="video", mime_type="video/H264")
        session = setup.session
        await eventually(lambda: session._track_kind(sid) == "video", within=TIMEOUT, what="the track")
        msg = commands_pb2.RecordTrack(track_sid=sid, path=file, duration_s=seconds)
        result = await setup.command("bridge.record_track", msg, "rec-h264")
        assert result.status == APPLIED, result
        await eventually(lambda: bool(setup.events(FINISHED)), within=TIMEOUT, what="the recording")
        (event,) = setup.events(FINISHED)
        done = events_pb2.RecordingFinished.FromString(event.data)
        assert (done.reason, done.codec, done.dropped) == ("duration", "h264", 0), done
        assert seconds - 0.2 <= done.duration_s < seconds
        remote = session.media.track(sid)
        assert remote is not None
        assert remote.codec.lower() == "h264"
    decoded = await asyncio.to_thread(_decode_video, tmp_path / file)
    assert decoded["first_key"], decoded
    assert (decoded["width"], decoded["height"]) == (320, 240), decoded
    assert decoded["errors"] == 0, decoded
    if file.endswith(".h264"):
        # A raw stream has no timestamps: count the frames of 15 fps instead.
        assert seconds * 15 * 0.8 <= decoded["frames"] <= seconds * 15 + 2, decoded
    else:
        assert seconds - 0.25 <= decoded["seconds"] <= seconds + 0.1, decoded


def _decode_video(path: Path) -> dict[str, Any]:
    """Decode every frame of ``path``'s video stream with PyAV."""
    with av.open(str(path)) as container:
        stream: Any = container.streams.video[0]
        frames: list[Any] = []
        errors = 0
        for packet in container.demux(stream):
            try:
                frames.extend(packet.decode())
            except av.FFmpegError:
                errors += 1
        times = [float(f.time) for f in frames if f.time is not None]
        step = times[-1] - times[-2] if len(times) > 1 else 0.0
        return {
            "frames": len(frames),
            "first_key": bool(frames and frames[0].key_frame),
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "seconds": times[-1] - times[0] + step if times else 0.0,
            "errors": errors,
        }


# ------------------------------------------------------------------------------------------ forward

# kind, TrackInfo mime type, expected rtpmap, what libavformat must decode
FORWARDS = [
    ("video", "video/H264", "H264/90000", "h264"),
    ("video", "video/VP8", "VP8/90000", "vp8"),
    ("audio", "audio/opus", "opus/48000/2", "opus"),
]
OPEN_TIMEOUT_S = 15.0
WANT_SECONDS = 1.0  # of media decoded from the forward


def _consume_sdp(sdp_path: Path, seconds: float) -> dict[str, Any]:
    """Open ``sdp_path`` with libavformat's SDP demuxer and decode ``seconds`` of its stream."""
    options = {"protocol_whitelist": "file,udp,rtp"}
    # PyAV's timeout interrupts a blocking open/read, so a forward that never comes fails, not hangs.
    with av.open(str(sdp_path), format="sdp", options=options, timeout=(OPEN_TIMEOUT_S, 5.0)) as container:
        stream: Any = container.streams[0]
        codec = stream.codec_context.name
        frames = 0
        first_key: bool | None = None
        audio_samples = 0
        video_times: list[fractions.Fraction] = []
        errors = 0
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.FFmpegError:
                errors += 1
                continue
            for frame in decoded:
                frames += 1
                if stream.type == "audio":
                    audio_samples += frame.samples
                else:
                    if first_key is None:
                        first_key = bool(frame.key_frame)
                    if frame.pts is not None:
                        video_times.append(frame.pts * stream.time_base)
            if stream.type == "audio":
                got = audio_samples / 48000
            else:
                got = float(video_times[-1] - video_times[0]) if len(video_times) > 1 else 0.0
            if got >= seconds:
                break
        size = (stream.codec_context.width, stream.codec_context.height) if stream.type == "video" else None
        return {
            "codec": codec,
            "frames": frames,
            "seconds": got,
            "first_key": first_key,
            "size": size,
            "errors": errors,
        }


@pytest.mark.parametrize(("kind", "mime", "rtpmap", "decoder"), FORWARDS, ids=["h264", "vp8", "opus"])
async def test_forwarded_sdp_opens_in_libavformat_and_decodes(
    tmp_path: Path, kind: str, mime: str, rtpmap: str, decoder: str
) -> None:
    port = free_udp_port_pair()
    media = MediaSettings(recordings_dir=tmp_path, forward_allow=("127.0.0.1/32",))
    async with media_bridge(ROOM, media) as setup:
        sid = setup.scenario.publish(ROOM, "alice", kind=kind, mime_type=mime)
        session = setup.session
        await eventually(lambda: session._track_info(sid) is not None, within=TIMEOUT, what="the track")
        msg = commands_pb2.ForwardTrack(track_sid=sid, host="127.0.0.1", port=port, sdp_path="fwd/t.sdp")
        result = await setup.command("bridge.forward_track", msg, "fwd-sdp")
        assert result.status == APPLIED, result
        sdp_path = tmp_path / "fwd" / "t.sdp"
        assert sdp_path.read_bytes() == result.response
        sdp = result.response.decode()
        assert f" {port} RTP/AVP " in sdp, sdp
        assert f" {rtpmap}" in sdp, sdp
        if decoder == "h264":
            assert "packetization-mode=1" in sdp

        consumer = asyncio.ensure_future(asyncio.to_thread(_consume_sdp, sdp_path, WANT_SECONDS))
        try:
            await eventually(lambda: udp_port_bound(port), within=TIMEOUT, what="libavformat on the port")
            if kind == "video":
                # Its first keyframe may have gone out before libavformat listened: ask for a new one.
                await eventually(
                    lambda: session.media.request_keyframe(sid), within=TIMEOUT, what="a keyframe request"
                )
            got = await asyncio.wait_for(asyncio.shield(consumer), OPEN_TIMEOUT_S + TIMEOUT)
        finally:
            if not consumer.done():
                await asyncio.wait({consumer}, timeout=OPEN_TIMEOUT_S + 10)
        assert got["codec"] == decoder, got
        assert got["seconds"] >= WANT_SECONDS * 0.9, got
        assert got["errors"] == 0, got
        if kind == "video":
            assert got["first_key"], got
            assert got["size"] == (320, 240), got

        fwd = session.forwarder.forwards[sid]
        assert fwd.codec == decoder
        assert fwd.packets > 0
        assert fwd.dropped == 0
        families = parse(setup.bridge.ops.metrics.render())
        assert families["bridge_forwards_active"].value(kind=kind) == 1
        assert families["bridge_forward_packets_total"].value(kind=kind) >= fwd.packets
        assert families["bridge_forward_sent_bytes_total"].value(kind=kind) > 0
        assert families["bridge_forward_frames_total"].value(kind=kind) > 0

        stop = await setup.command("bridge.stop_forward", commands_pb2.StopForward(track_sid=sid), "fwd-stop")
        assert stop.status == APPLIED, stop
        await eventually(lambda: not session.forwarder.forwards, within=TIMEOUT, what="the forward ended")
        families = parse(setup.bridge.ops.metrics.render())
        assert families["bridge_forwards_active"].value(kind=kind) == 0
        assert families["bridge_forward_packets_total"].value(kind=kind) > 0  # counters outlive the forward
