"""The bridge's WebRTC side end to end: a real Bridge on the simulator, an in-memory bus and command source.

- every DataPacket variant a participant sends becomes an ``io.livekit.data.*`` event with the sender as
  subject, routed by channel label, and text streams are also assembled into ``bridge.text_stream``;
- ``bridge.send_data`` travels on the bridge's own publisher PeerConnection (sender: the bridge);
- ``media.subscribe`` subscribes by policy, frames are counted per kind in ``/metrics`` terms;
- ``bridge.record_track`` writes opus and VP8 without transcoding; PyAV decodes the files.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import pytest
from google.protobuf.message import Message
from livekit.protocol import models

from bridge._proto import commands_pb2, events_pb2
from bridge.app import Bridge
from bridge.bus.memory import InMemoryBus
from bridge.bus.memory_commands import MemoryCommandSource
from bridge.config import MediaSettings, Settings, SubscribeRule, load_settings
from bridge.events.cloudevent import CloudEvent
from bridge.sim.ice import use_loopback_only
from bridge.sim.scenario import Scenario
from bridge.sim.server import SimServer
from support.bridge import bridge_environ
from support.commands import memory_command_result
from support.data_peer import data_peer
from support.sdk import sdk_client
from support.signal_client import make_token
from support.simulator import running_sim
from support.waiting import eventually

ROOM = "media-e2e"
IDENTITY = "livekit-bridge"
RESULT = "io.livekit.bridge.command_result.v1"
TIMEOUT = 20.0
DATA = "io.livekit.data."


@pytest.fixture(autouse=True)
def _loopback() -> None:
    use_loopback_only()


def settings_for(server: SimServer, *, media: MediaSettings | None = None, **env: str) -> Settings:
    environ = bridge_environ(server, ROOM)
    environ.update({f"BRIDGE_{k.upper()}": v for k, v in env.items()})
    settings = load_settings(None, environ)
    return settings if media is None else settings.model_copy(update={"media": media})


@contextlib.asynccontextmanager
async def bridged(
    settings_env: dict[str, str] | None = None, media: MediaSettings | None = None
) -> AsyncIterator[tuple[SimServer, Scenario, Bridge, MemoryCommandSource, InMemoryBus]]:
    async with running_sim(ice_servers=()) as (server, scenario):
        scenario.join(ROOM, "alice")
        bus = InMemoryBus()
        source = MemoryCommandSource()
        bridge = Bridge(
            settings_for(server, media=media, **(settings_env or {})),
            publishers=[bus],
            command_sources=[source],
        )
        await bridge.start()
        try:
            session = bridge.supervisor.sessions[ROOM]
            await eventually(
                lambda: session.media.connected, within=TIMEOUT, what="the bridge's subscriber PC"
            )
            yield server, scenario, bridge, source, bus
        finally:
            await bridge.aclose()


def of_type(bus: InMemoryBus, etype: str) -> list[CloudEvent]:
    return [e for e in bus.events if e.type == etype]


async def command(
    source: MemoryCommandSource, bus: InMemoryBus, name: str, message: Message, cid: str
) -> Any:
    return await memory_command_result(source, bus, ROOM, name, message, cid)


def _stream_packets(stream_id: str, topic: str, parts: list[bytes]) -> list[models.DataPacket]:
    header = models.DataStream.Header(
        stream_id=stream_id,
        topic=topic,
        timestamp=1_700_000_000_000,
        mime_type="text/plain",
        total_length=sum(len(p) for p in parts),
        attributes={"a": "1"},
        text_header=models.DataStream.TextHeader(generated=True),
    )
    packets = [models.DataPacket(stream_header=header)]
    for i, part in enumerate(parts):
        chunk = models.DataStream.Chunk(stream_id=stream_id, chunk_index=i, content=part)
        packets.append(models.DataPacket(stream_chunk=chunk))
    trailer = models.DataStream.Trailer(stream_id=stream_id, attributes={"b": "2"})
    packets.append(models.DataPacket(stream_trailer=trailer))
    return packets


def _metrics_packet() -> models.DataPacket:
    packet = models.DataPacket()
    packet.metrics.timestamp_ms = 5  # livekit.MetricsBatch is not exported by livekit.protocol.models
    return packet


def every_variant() -> list[models.DataPacket]:
    """One packet per DataPacket variant a client can send (``speaker`` is server-only and deprecated)."""
    return [
        models.DataPacket(user=models.UserPacket(payload=b"hello", topic="t")),
        models.DataPacket(chat_message=models.ChatMessage(id="c1", timestamp=1, message="hi all")),
        models.DataPacket(
            transcription=models.Transcription(
                transcribed_participant_identity="alice",
                track_id="TR_x",
                segments=[models.TranscriptionSegment(id="s1", text="spoken", final=True, language="en")],
            )
        ),
        models.DataPacket(rpc_request=models.RpcRequest(id="r1", method="ping", payload="{}", version=1)),
        models.DataPacket(rpc_ack=models.RpcAck(request_id="r0")),
        models.DataPacket(rpc_response=models.RpcResponse(request_id="r0", payload="pong")),
        models.DataPacket(sip_dtmf=models.SipDTMF(code=5, digit="5")),
        _metrics_packet(),
        models.DataPacket(
            encrypted_packet=models.EncryptedPacket(
                encryption_type=models.Encryption.Type.GCM, iv=b"0" * 12, encrypted_value=b"\x01\x02"
            )
        ),
        *_stream_packets("st-1", "lk.chat", [b"Good ", "morning é".encode()]),
    ]


# ------------------------------------------------------------------------------------------ data in


async def test_every_data_variant_is_an_event_from_its_sender_and_text_streams_are_assembled() -> None:
    env = {"EVENTS__ASSEMBLE_TEXT_STREAMS": "true"}
    async with bridged(env) as (server, _, bridge, _, bus):
        async with data_peer(server.url, "carol", ROOM) as carol:
            sent = every_variant()
            for packet in sent:
                # The deprecated ``kind`` says LOSSY on the reliable channel (as the Rust SDK does): ignored.
                packet.kind = models.DataPacket.LOSSY
                carol.send(packet, "_reliable")
            carol.send(models.DataPacket(user=models.UserPacket(payload=b"fast")), "_lossy")
            await eventually(
                lambda: (
                    len([e for e in bus.events if e.type.startswith("io.livekit.data.")]) >= len(sent) + 1
                ),
                within=TIMEOUT,
                what="a data event per packet",
            )
            await eventually(
                lambda: bool(of_type(bus, "io.livekit.bridge.text_stream.v1")),
                within=TIMEOUT,
                what="the assembled text stream",
            )
        data = [e for e in bus.events if e.type.startswith(DATA)]
        assert [e.type for e in data] == [f"io.livekit.data.{p.WhichOneof('value')}.v1" for p in sent] + [
            "io.livekit.data.user.v1"
        ]
        assert {e.subject for e in data} == {"carol"}
        for event, packet in zip(data, sent, strict=False):
            kind = packet.WhichOneof("value")
            assert event.data == getattr(packet, kind).SerializeToString(), kind
        assert models.UserPacket.FromString(data[-1].data).payload == b"fast"
        (text_event,) = of_type(bus, "io.livekit.bridge.text_stream.v1")
        text = events_pb2.TextStream.FromString(text_event.data)
        assert text_event.subject == "carol"
        assert (text.stream_id, text.topic, text.text) == ("st-1", "lk.chat", "Good morning é")
        assert (text.chunks, text.generated, text.truncated) == (2, True, False)
        assert dict(text.attributes) == {"a": "1", "b": "2"}
        assert text.participant_identity == "carol"
        # The assembled event follows the trailer's data event in the session's sequence.
        trailer = next(e for e in data if e.type == "io.livekit.data.stream_trailer.v1")
        assert text_event.sequence == trailer.sequence + 1
        session = bridge.supervisor.sessions[ROOM]
        assert session.text_streams is not None
        assert session.text_streams.stats.completed == 1
        assert len(session.text_streams) == 0


# ------------------------------------------------------------------------------------------ data out


async def test_send_data_goes_on_the_bridges_own_data_channel() -> None:
    async with bridged({"LIVEKIT__HIDDEN": "false"}) as (server, _, bridge, source, bus):
        async with data_peer(server.url, "dave", ROOM) as dave:
            msg = commands_pb2.SendData(payload=b"bus", topic="alerts", destination_identities=["dave"])
            result = await command(source, bus, "bridge.send_data", msg, "sd-1")
            assert result.status == events_pb2.CommandResult.STATUS_APPLIED, result
            label, packet = await dave.next_packet("user", within=TIMEOUT)
            assert (label, packet.user.payload, packet.user.topic) == ("_reliable", b"bus", "alerts")
            assert packet.participant_identity == IDENTITY
            lossy = commands_pb2.SendData(payload=b"lossy", lossy=True)
            before = len(dave.received)
            result = await command(source, bus, "bridge.send_data", lossy, "sd-2")
            assert result.status == events_pb2.CommandResult.STATUS_APPLIED, result
            label, packet = await dave.next_packet("user", after=before, within=TIMEOUT)
            assert (label, packet.user.payload) == ("_lossy", b"lossy")
        # It went over WebRTC, not through the server API: the simulator saw it on the bridge's channel.
        received = server.rooms[ROOM].data_received
        assert [(who, p.user.payload, label) for who, p, label in received if who == IDENTITY] == [
            (IDENTITY, b"bus", "_reliable"),
            (IDENTITY, b"lossy", "_lossy"),
        ]
        publisher = bridge.supervisor.sessions[ROOM].publisher
        assert (publisher.stats.pcs_created, publisher.stats.data_sent) == (1, 2)
        assert bridge.commands.stats.send_data_fallbacks == 0


# ------------------------------------------------------------------------------------------ media in


async def test_subscription_policy_subscribes_and_frames_are_counted_by_kind() -> None:
    rules = (SubscribeRule(kind="audio", identity="al*"), SubscribeRule(kind="video", source="screen_share"))
    media = MediaSettings(subscribe=rules)
    async with bridged(media=media) as (_, scenario, bridge, _, _):
        audio = scenario.publish(ROOM, "alice", kind="audio")
        video = scenario.publish(ROOM, "alice", kind="video")
        second = scenario.publish(ROOM, "alice", kind="audio", name="second")
        vp9 = scenario.publish(ROOM, "alice", kind="video", source="screen_share", mime_type="video/VP9")
        session = bridge.supervisor.sessions[ROOM]
        await eventually(
            lambda: session.media.stats.frames_by_kind.get("audio", 0) >= 50,
            within=TIMEOUT,
            what="audio frames by policy",
        )
        assert set(session.subscriptions.subscribed) == {audio, second}  # camera: no rule; VP9: unreceivable
        assert {video, vp9}.isdisjoint(session.subscriptions.subscribed)
        assert session.media.stats.bytes_by_kind["audio"] > 0
        assert "video" not in session.media.stats.frames_by_kind
        metrics = bridge.ops.metrics.render()
        assert 'bridge_media_tracks_receiving{kind="audio"} 2' in metrics
        assert 'bridge_media_frames_received_total{kind="audio"}' in metrics


# ------------------------------------------------------------------------------------------ recording


@pytest.mark.parametrize(("kind", "file"), [("audio", "rec/alice-mic.ogg"), ("video", "rec/alice-cam.webm")])
async def test_record_track_writes_a_decodable_file(tmp_path: Path, kind: str, file: str) -> None:
    media = MediaSettings(recordings_dir=tmp_path)
    seconds = 2.0
    async with bridged(media=media) as (_, scenario, bridge, source, bus):
        sid = scenario.publish(ROOM, "alice", kind=kind)
        session = bridge.supervisor.sessions[ROOM]
        await eventually(
            lambda: session._track_kind(sid) == kind, within=TIMEOUT, what="the track in the room"
        )
        msg = commands_pb2.RecordTrack(track_sid=sid, path=file, duration_s=seconds)
        result = await command(source, bus, "bridge.record_track", msg, "rec-1")
        assert result.status == events_pb2.CommandResult.STATUS_APPLIED, result
        await eventually(
            lambda: bool(of_type(bus, "io.livekit.bridge.recording_finished.v1")),
            within=TIMEOUT,
            what="the recording to finish",
        )
        (event,) = of_type(bus, "io.livekit.bridge.recording_finished.v1")
        done = events_pb2.RecordingFinished.FromString(event.data)
        assert event.subject == sid
        assert (done.reason, done.path, done.dropped) == ("duration", file, 0)
        assert done.codec == ("opus" if kind == "audio" else "vp8")
        assert seconds - 0.2 <= done.duration_s < seconds
        assert not session.recorder.recordings
    decoded = await asyncio.to_thread(_decode, tmp_path / file)
    assert seconds - 0.25 <= decoded <= seconds + 0.1, decoded


def _decode(path: Path) -> float:
    """Seconds of media PyAV decodes from ``path`` (audio: samples; video: last frame's time)."""
    with av.open(str(path)) as container:
        stream: Any = container.streams[0]
        frames: list[Any] = list(container.decode(stream))
        if stream.type == "audio":
            return sum(int(frame.samples) for frame in frames) / 48000
        times = [float(frame.time or 0) for frame in frames]
        assert times
        return times[-1] + (times[-1] - times[-2] if len(times) > 1 else 0)


async def test_recording_refusals_and_stop() -> None:
    async with bridged(media=MediaSettings(recordings_dir=Path("/nonexistent-root-for-test"))) as (
        _,
        scenario,
        bridge,
        source,
        bus,
    ):
        sid = scenario.publish(ROOM, "alice", kind="audio")
        session = bridge.supervisor.sessions[ROOM]
        await eventually(lambda: session._track_kind(sid) == "audio", within=TIMEOUT, what="the track")
        cases = [
            ("TR_nope", "a.ogg", "not_found"),
            (sid, "../escape.ogg", "invalid_path"),
            (sid, "a.txt", "invalid_path"),
            (sid, "a.ivf", "invalid_path"),  # VP8 only: cannot hold audio
        ]
        for n, (track, path, code) in enumerate(cases):
            msg = commands_pb2.RecordTrack(track_sid=track, path=path)
            result = await command(source, bus, "bridge.record_track", msg, f"bad-{n}")
            assert (result.status, result.code) == (events_pb2.CommandResult.STATUS_FAILED, code), path
        stop = commands_pb2.StopRecording(track_sid=sid)
        result = await command(source, bus, "bridge.stop_recording", stop, "stop-0")
        assert (result.status, result.code) == (events_pb2.CommandResult.STATUS_FAILED, "not_found")


# ------------------------------------------------------------------------------------------ real SDK


async def test_real_sdk_data_and_text_reach_the_bus_and_send_data_reaches_the_sdk() -> None:
    env = {"EVENTS__ASSEMBLE_TEXT_STREAMS": "true", "LIVEKIT__HIDDEN": "false"}
    async with (
        bridged(env) as (server, _, _, source, bus),
        sdk_client(server.url, make_token("sdk-user", ROOM), mode="v0") as sdk,
    ):
        await sdk.wait_for("connected")
        await sdk.command("send-data hello-bridge")
        await sdk.command("send-text good morning from the SDK")
        await eventually(
            lambda: bool(of_type(bus, "io.livekit.bridge.text_stream.v1")),
            within=TIMEOUT,
            what="the SDK's text stream, assembled",
        )
        (user,) = of_type(bus, "io.livekit.data.user.v1")
        assert user.subject == "sdk-user"
        packet = models.UserPacket.FromString(user.data)
        assert (packet.payload, packet.topic) == (b"hello-bridge", "conformance")
        (text_event,) = of_type(bus, "io.livekit.bridge.text_stream.v1")
        text = events_pb2.TextStream.FromString(text_event.data)
        assert text_event.subject == "sdk-user"
        assert (text.topic, text.text) == ("lk.chat", "good morning from the SDK")

        msg = commands_pb2.SendData(payload=b"to-the-sdk", topic="alerts")
        result = await command(source, bus, "bridge.send_data", msg, "sdk-sd")
        assert result.status == events_pb2.CommandResult.STATUS_APPLIED, result
        got = await sdk.wait_for("data", within=TIMEOUT, where=lambda e: e["payload"] == "to-the-sdk")
        assert (got["sender"], got["topic"]) == (IDENTITY, "alerts")
