"""Media out of and into a room: a real Bridge on the simulator, an in-memory bus and command source.

- ``bridge.forward_track`` sends a subscribed opus track as RTP to a UDP listener in the test (payload
  type 111, consecutive sequence numbers, growing timestamps, about 50 packets/s, payloads PyAV decodes),
  and answers with an SDP description; ``stop_forward`` stops it; hosts outside ``media.forward_allow``
  are refused;
- ``bridge.publish_track`` plays a file (opus in Ogg, passed through; a WAV, encoded) into the room and
  the simulator receives its frames; ``unpublish_track`` stops it;
- video files too: VP8 (IVF, WebM) and H.264 (MP4, raw Annex B) are passed through on an m-line
  negotiated for their codec and decode at the simulator, MPEG-4 is encoded to VP8; ``kind`` picks the
  stream of a file with both; URLs below ``media.publish_url_allow`` (a local HTTP server) play, others
  are refused, and no error or log line shows a URL's userinfo or query.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import functools
import http.server
import itertools
import logging
import math
import socket
import struct
import threading
import wave
from collections.abc import AsyncIterator, Iterator
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
from bridge.config import MediaSettings, load_settings
from bridge.sim.ice import use_loopback_only
from bridge.sim.scenario import Scenario
from bridge.sim.server import SimServer
from support.bridge import bridge_environ
from support.commands import memory_command_result
from support.media_files import HEIGHT, WIDTH, write_ogg_opus, write_video
from support.simulator import running_sim
from support.waiting import eventually

ROOM = "relay-e2e"
IDENTITY = "livekit-bridge"
RESULT = "io.livekit.bridge.command_result.v1"
TIMEOUT = 20.0
APPLIED = events_pb2.CommandResult.STATUS_APPLIED
FAILED = events_pb2.CommandResult.STATUS_FAILED


@pytest.fixture(autouse=True)
def _loopback() -> None:
    use_loopback_only()


@contextlib.asynccontextmanager
async def bridged(media: MediaSettings) -> AsyncIterator[tuple[SimServer, Scenario, Bridge, Any]]:
    async with running_sim(ice_servers=()) as (server, scenario):
        scenario.join(ROOM, "alice")
        bus = InMemoryBus()
        source = MemoryCommandSource()
        environ = bridge_environ(server, ROOM) | {"BRIDGE_LIVEKIT__CAN_PUBLISH": "true"}
        settings = load_settings(None, environ).model_copy(update={"media": media})
        bridge = Bridge(settings, publishers=[bus], command_sources=[source])
        await bridge.start()
        try:
            session = bridge.supervisor.sessions[ROOM]
            await eventually(lambda: session.media.connected, within=TIMEOUT, what="the subscriber PC")

            async def command(name: str, message: Message, cid: str) -> events_pb2.CommandResult:
                result: events_pb2.CommandResult = await memory_command_result(
                    source, bus, ROOM, name, message, cid
                )
                return result

            yield server, scenario, bridge, command
        finally:
            await bridge.aclose()


# ------------------------------------------------------------------------------------------ forward


class _Listener(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[tuple[float, bytes]] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.packets.append((asyncio.get_running_loop().time(), data))


def _parse_rtp(packet: bytes) -> tuple[int, int, int, int, bytes]:
    first, second, seq, ts, ssrc = struct.unpack("!BBHII", packet[:12])
    assert first == 0x80  # version 2, no padding, no extension, no CSRC
    return second & 0x7F, seq, ts, ssrc, packet[12:]


def _decode_opus(payloads: list[bytes]) -> int:
    """Samples (48 kHz) PyAV's opus decoder gets from ``payloads``."""
    codec: Any = av.CodecContext.create("opus", "r")
    codec.sample_rate = 48000
    samples = 0
    for i, payload in enumerate(payloads):
        packet = av.Packet(payload)
        packet.pts = i * 960
        packet.time_base = fractions.Fraction(1, 48000)
        for frame in codec.decode(packet):
            samples += frame.samples
    return samples


async def test_forward_track_sends_opus_rtp_to_an_allowed_udp_listener(tmp_path: Path) -> None:
    media = MediaSettings(recordings_dir=tmp_path, forward_allow=("127.0.0.1/32",))
    loop = asyncio.get_running_loop()
    transport, listener = await loop.create_datagram_endpoint(_Listener, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        async with bridged(media) as (_, scenario, bridge, command):
            sid = scenario.publish(ROOM, "alice", kind="audio")
            session = bridge.supervisor.sessions[ROOM]
            await eventually(lambda: session._track_info(sid) is not None, within=TIMEOUT, what="the track")

            refused = commands_pb2.ForwardTrack(track_sid=sid, host="10.1.2.3", port=port)
            result = await command("bridge.forward_track", refused, "fwd-refused")
            assert (result.status, result.code) == (FAILED, "not_allowed"), result

            msg = commands_pb2.ForwardTrack(track_sid=sid, host="127.0.0.1", port=port, sdp_path="fwd/a.sdp")
            result = await command("bridge.forward_track", msg, "fwd-1")
            assert result.status == APPLIED, result
            sdp = result.response.decode()
            assert f"m=audio {port} RTP/AVP 111" in sdp
            assert "a=rtpmap:111 opus/48000/2" in sdp
            assert "c=IN IP4 127.0.0.1" in sdp
            assert (tmp_path / "fwd" / "a.sdp").read_bytes() == result.response

            await eventually(lambda: len(listener.packets) >= 150, within=TIMEOUT, what="150 RTP packets")
            result = await command("bridge.stop_forward", commands_pb2.StopForward(track_sid=sid), "fwd-stop")
            assert result.status == APPLIED, result
            await eventually(lambda: not session.forwarder.forwards, within=TIMEOUT, what="the forward ended")
            stopped_at = len(listener.packets)
            await asyncio.sleep(0.3)
            assert len(listener.packets) <= stopped_at + 1
            assert session.media.stats.dropped_by_kind.get("audio", 0) == 0
    finally:
        transport.close()

    parsed = [_parse_rtp(p) for _, p in listener.packets]
    assert {pt for pt, *_ in parsed} == {111}
    assert len({ssrc for *_, ssrc, _ in parsed}) == 1
    seqs = [seq for _, seq, *_ in parsed]
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs)), "consecutive sequence"
    stamps = [ts for _, _, ts, _, _ in parsed]
    assert all(0 < (b - a) % 2**32 < 48000 for a, b in itertools.pairwise(stamps)), "growing ts"
    # About 50 packets/s of 20 ms opus, measured over the packets' own arrival times.
    times = [t for t, _ in listener.packets]
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 40 <= rate <= 60, rate
    samples = await asyncio.to_thread(_decode_opus, [payload for *_, payload in parsed])
    assert samples >= 0.9 * 960 * len(parsed), samples


async def test_forward_refusals() -> None:
    async with bridged(MediaSettings()) as (_, scenario, bridge, command):
        sid = scenario.publish(ROOM, "alice", kind="audio")
        session = bridge.supervisor.sessions[ROOM]
        await eventually(lambda: session._track_info(sid) is not None, within=TIMEOUT, what="the track")
        cases = [
            (commands_pb2.ForwardTrack(track_sid=sid, host="127.0.0.1", port=5004), "not_allowed"),  # no list
            (commands_pb2.ForwardTrack(track_sid="TR_nope", host="127.0.0.1", port=5004), "not_found"),
        ]
        for n, (msg, code) in enumerate(cases):
            result = await command("bridge.forward_track", msg, f"fr-{n}")
            assert (result.status, result.code) == (FAILED, code), result
        result = await command("bridge.stop_forward", commands_pb2.StopForward(track_sid=sid), "fr-stop")
        assert (result.status, result.code) == (FAILED, "not_found")


# ------------------------------------------------------------------------------------------ publish


def _write_wav(path: Path, seconds: float) -> None:
    rate = 16000
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        samples = (int(8000 * math.sin(2 * math.pi * 300 * n / rate)) for n in range(int(rate * seconds)))
        out.writeframes(b"".join(struct.pack("<h", s) for s in samples))


@pytest.mark.parametrize(("file", "passthrough"), [("clips/tone.ogg", True), ("clips/tone.wav", False)])
async def test_publish_track_plays_a_file_into_the_room(tmp_path: Path, file: str, passthrough: bool) -> None:
    (tmp_path / "clips").mkdir()
    writer = write_ogg_opus if file.endswith(".ogg") else _write_wav
    await asyncio.to_thread(writer, tmp_path / file, 3.0)
    async with bridged(MediaSettings(publish_dir=tmp_path)) as (server, _, bridge, command):
        msg = commands_pb2.PublishTrack(path=file, name="announcer", loop=True)
        result = await command("bridge.publish_track", msg, "pub-1")
        assert result.status == APPLIED, result
        info = models.TrackInfo.FromString(result.response)
        assert (info.name, info.type, info.source) == ("announcer", models.AUDIO, models.MICROPHONE)
        session = bridge.supervisor.sessions[ROOM]
        (_, track) = session.published[info.sid]
        assert track.passthrough is passthrough
        assert info.sid in {t.sid for t in server.rooms[ROOM].participants[IDENTITY].info.tracks}
        sim = server.session(ROOM, IDENTITY).media

        def frames() -> int:
            return sum(sim.received_frames.values())

        # 3 s of file, looped: well past its end.
        await eventually(lambda: frames() >= 200, within=TIMEOUT, what="200 frames of the file at the sim")
        # Real time: 20 ms frames at 50/s (a WAV fed to aiortc in other frame sizes arrives slower).
        start, t0 = frames(), asyncio.get_running_loop().time()
        await asyncio.sleep(1.0)
        rate = (frames() - start) / (asyncio.get_running_loop().time() - t0)
        assert 40 <= rate <= 60, rate
        result = await command(
            "bridge.unpublish_track", commands_pb2.UnpublishTrack(track_sid=info.sid), "pub-2"
        )
        assert result.status == APPLIED, result
        assert not session.published
        assert track.readyState == "ended"
        await asyncio.sleep(0.3)
        before = frames()
        await asyncio.sleep(0.5)
        assert frames() - before <= 2, "frames still arrive after unpublish_track"
        assert session.publisher.stats.renegotiations == 2


async def test_publish_refusals(tmp_path: Path) -> None:
    (tmp_path / "not-audio.ogg").write_bytes(b"nothing here")
    async with bridged(MediaSettings(publish_dir=tmp_path)) as (_, _, _, command):
        cases = [
            (commands_pb2.PublishTrack(path="../escape.ogg"), "invalid_path"),
            (commands_pb2.PublishTrack(path="missing.ogg"), "not_found"),
            (commands_pb2.PublishTrack(path="not-audio.ogg"), "invalid_path"),
            # No media.publish_url_allow: every URL is refused, and never quoted with its secrets.
            (commands_pb2.PublishTrack(url="https://u:pw@media.example.com/a.ogg?sig=zzz"), "not_allowed"),
        ]
        for n, (msg, code) in enumerate(cases):
            result = await command("bridge.publish_track", msg, f"pr-{n}")
            assert (result.status, result.code) == (FAILED, code), (msg, result)
            assert "pw" not in result.message
            assert "zzz" not in result.message
        result = await command(
            "bridge.unpublish_track", commands_pb2.UnpublishTrack(track_sid="TR_x"), "pr-u"
        )
        assert (result.status, result.code) == (FAILED, "not_found")


async def _frames_decoded(server: SimServer, cid: str, within: float = TIMEOUT) -> Any:
    """A frame the simulator decoded from the bridge's track ``cid`` (after the ones already counted)."""
    sim = server.session(ROOM, IDENTITY).media
    await eventually(lambda: cid in sim.sources, within=within, what=f"the sim to receive {cid}")
    proxy = sim.sources[cid].subscribe()
    try:
        return await asyncio.wait_for(proxy.recv(), within)
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    ("file", "codec", "mime", "passthrough"),
    [
        ("clip.ivf", "libvpx", "video/VP8", True),
        ("clip.webm", "libvpx", "video/VP8", True),
        ("clip.mp4", "libx264", "video/H264", True),
        ("clip.h264", "libx264", "video/H264", True),
        ("clip.mkv", "mpeg4", "video/VP8", False),  # decoded, and encoded by aiortc
    ],
)
async def test_publish_track_plays_a_video_file(
    tmp_path: Path, file: str, codec: str, mime: str, passthrough: bool
) -> None:
    await asyncio.to_thread(write_video, tmp_path / file, codec, 1.0)
    async with bridged(MediaSettings(publish_dir=tmp_path)) as (server, _, bridge, command):
        msg = commands_pb2.PublishTrack(path=file, loop=True)
        result = await command("bridge.publish_track", msg, "pv-1")
        assert result.status == APPLIED, result
        info = models.TrackInfo.FromString(result.response)
        assert (info.name, info.type, info.source) == ("clip", models.VIDEO, models.CAMERA)
        assert (info.width, info.height) == (WIDTH, HEIGHT)
        # Announced as LiveKit's SDKs announce a track that is not simulcast: one HIGH layer.
        assert [(x.quality, x.width, x.height) for x in info.layers] == [(models.HIGH, WIDTH, HEIGHT)]
        assert [list(c.layers) for c in info.codecs] == [list(info.layers)]
        session = bridge.supervisor.sessions[ROOM]
        cid, track = session.published[info.sid]
        assert (track.kind, track.passthrough, track.mime_type) == ("video", passthrough, mime)
        # The m-line carries the codec the packets are in (a VP8 file on an H.264 m-line is garbage).
        assert session.publisher.sending_codec(cid) == mime
        sim = server.session(ROOM, IDENTITY).media
        frame = await _frames_decoded(server, cid)
        assert (frame.width, frame.height) == (WIDTH, HEIGHT)
        assert sim.sources[cid].kind == "video"

        # 1 s of file at 15 fps, looped: well past its end, every frame decoded by the sim.
        await eventually(lambda: sim.received_frames[cid] >= 30, within=TIMEOUT, what="30 decoded frames")
        start, t0 = sim.received_frames[cid], asyncio.get_running_loop().time()
        await asyncio.sleep(1.0)
        rate = (sim.received_frames[cid] - start) / (asyncio.get_running_loop().time() - t0)
        assert 10 <= rate <= 20, rate
        result = await command(
            "bridge.unpublish_track", commands_pb2.UnpublishTrack(track_sid=info.sid), "pv-2"
        )
        assert result.status == APPLIED, result
        assert track.readyState == "ended"


async def test_publish_track_kind_picks_the_stream(tmp_path: Path) -> None:
    await asyncio.to_thread(write_video, tmp_path / "both.webm", "libvpx", 1.0, with_audio=True)
    await asyncio.to_thread(write_video, tmp_path / "silent.ivf", "libvpx", 1.0)
    async with bridged(MediaSettings(publish_dir=tmp_path)) as (server, _, bridge, command):
        session = bridge.supervisor.sessions[ROOM]
        sim = server.session(ROOM, IDENTITY).media
        published = {}
        for n, kind in enumerate(["", "video"]):
            msg = commands_pb2.PublishTrack(path="both.webm", kind=kind, loop=True)
            result = await command("bridge.publish_track", msg, f"pk-{n}")
            assert result.status == APPLIED, result
            info = models.TrackInfo.FromString(result.response)
            published[kind] = (info, *session.published[info.sid])
        audio, audio_cid, audio_track = published[""]  # empty: the audio stream, since there is one
        video, video_cid, video_track = published["video"]
        assert (audio.type, audio.source, audio_track.mime_type) == (
            models.AUDIO,
            models.MICROPHONE,
            "audio/opus",
        )
        assert (video.type, video.source, video_track.mime_type) == (models.VIDEO, models.CAMERA, "video/VP8")
        assert session.publisher.sending_codec(audio_cid).lower() == "audio/opus"
        assert session.publisher.sending_codec(video_cid) == "video/VP8"
        await eventually(
            lambda: (
                sim.received_frames.get(audio_cid, 0) >= 50 and sim.received_frames.get(video_cid, 0) >= 15
            ),
            within=TIMEOUT,
            what="audio and video frames of the same file",
        )
        assert (sim.sources[audio_cid].kind, sim.sources[video_cid].kind) == ("audio", "video")

        refusals = [
            (commands_pb2.PublishTrack(path="silent.ivf", kind="audio"), "invalid_path"),
            (commands_pb2.PublishTrack(path="both.webm", kind="data"), "unsupported"),
        ]
        for n, (msg, code) in enumerate(refusals):
            result = await command("bridge.publish_track", msg, f"pk-r{n}")
            assert (result.status, result.code) == (FAILED, code), result
        result = await command("bridge.publish_track", commands_pb2.PublishTrack(path="silent.ivf"), "pk-v")
        assert result.status == APPLIED, result  # empty kind, no audio stream: the video
        assert models.TrackInfo.FromString(result.response).type == models.VIDEO


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _http_server(root: Path) -> Iterator[http.server.ThreadingHTTPServer]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="clips-http", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


SECRETS = ("hunter2", "sekrit", "alice-user")


async def test_publish_track_from_an_allowed_url(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    (tmp_path / "clips").mkdir()
    (tmp_path / "other").mkdir()
    await asyncio.to_thread(write_video, tmp_path / "clips" / "clip.ivf", "libvpx", 1.0)
    await asyncio.to_thread(write_video, tmp_path / "other" / "clip.ivf", "libvpx", 1.0)
    with _http_server(tmp_path) as http_server:
        base = f"http://127.0.0.1:{http_server.server_address[1]}"
        media = MediaSettings(
            publish_dir=tmp_path, publish_url_allow=(f"{base}/clips/", "udp://127.0.0.1:5000")
        )
        async with bridged(media) as (server, _, bridge, command):
            session = bridge.supervisor.sessions[ROOM]
            sim = server.session(ROOM, IDENTITY).media
            secret_url = f"http://alice-user:hunter2@127.0.0.1:{http_server.server_address[1]}"
            url = f"{secret_url}/clips/clip.ivf?token=sekrit"
            result = await command(
                "bridge.publish_track", commands_pb2.PublishTrack(url=url, loop=True), "pu-1"
            )
            assert result.status == APPLIED, result
            info = models.TrackInfo.FromString(result.response)
            # Named neutrally: a URL's path may hold a stream key or a token, and everyone sees the name.
            assert (info.type, info.name) == (models.VIDEO, "stream")
            cid, track = session.published[info.sid]
            assert track.passthrough
            assert session.publisher.sending_codec(cid) == "video/VP8"
            await eventually(lambda: sim.received_frames.get(cid, 0) >= 20, within=TIMEOUT, what="URL frames")

            refusals = [
                (commands_pb2.PublishTrack(url=f"{secret_url}/other/clip.ivf?token=sekrit"), "not_allowed"),
                (
                    commands_pb2.PublishTrack(url=f"{secret_url}/clips/../other/clip.ivf?t=sekrit"),
                    "not_allowed",
                ),
                (commands_pb2.PublishTrack(url=f"{base}.evil.example/clips/clip.ivf"), "not_allowed"),
                # Allowed place, but FFmpeg would take the query as socket options and listen.
                (commands_pb2.PublishTrack(url="udp://127.0.0.1:5000?listen=1&localport=9"), "not_allowed"),
                (commands_pb2.PublishTrack(url=f"{secret_url}/clips/missing.ivf?token=sekrit"), "not_found"),
                (commands_pb2.PublishTrack(url=url, path="clips/clip.ivf"), "invalid_path"),  # both
                (commands_pb2.PublishTrack(name="nothing"), "invalid_path"),  # neither
            ]
            for n, (msg, code) in enumerate(refusals):
                result = await command("bridge.publish_track", msg, f"pu-r{n}")
                assert (result.status, result.code) == (FAILED, code), (msg, result)
                assert not any(secret in result.message for secret in SECRETS), result.message

            # The server goes away: the next pass of the loop cannot open the URL, so the track ends.
            http_server.shutdown()
            http_server.server_close()
            await eventually(lambda: track.readyState == "ended", within=TIMEOUT, what="the URL track to end")
            assert track.error
            ended = [r for r in caplog.records if r.getMessage().startswith("playback of")]
            assert len(ended) == 1, ended
    assert "127.0.0.1" in caplog.text  # the URL is logged, redacted
    assert not any(secret in caplog.text for secret in SECRETS)


async def test_publish_url_that_never_answers_times_out(tmp_path: Path) -> None:
    # A listening socket nobody accepts from: the connection opens, no response ever comes.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        base = f"http://127.0.0.1:{silent.getsockname()[1]}"
        media = MediaSettings(publish_url_allow=(f"{base}/",))
        async with bridged(media) as (_, _, bridge, command):
            loop = asyncio.get_running_loop()
            started = loop.time()
            msg = commands_pb2.PublishTrack(url=f"{base}/live.ivf?token=sekrit")
            result = await command("bridge.publish_track", msg, "pt-1")
            took = loop.time() - started
            assert (result.status, result.code) == (FAILED, "timeout"), result
            assert "sekrit" not in result.message
            assert took < 12, took  # FFmpeg's 5 s socket timeout, the 10 s deadline at the latest
            assert not bridge.supervisor.sessions[ROOM].published
