"""H.264 without transcoding: SPS parsing, IDR detection with SPS/PPS carried over, the forward's RTP and
SDP, a recording started on a keyframe, the simulator's codec preference and the offer pre-check.

Bitstreams come from libx264 through PyAV (real encoders, no canned bytes).
"""

from __future__ import annotations

import asyncio
import fractions
import struct
from pathlib import Path
from typing import Any

import av
import pytest
from aiortc import RTCPeerConnection
from aiortc.codecs.h264 import h264_depayload
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from bridge._proto import events_pb2
from bridge.media.forward import DEFAULT_PAYLOAD_TYPES, Forwarder, sdp_for
from bridge.media.h264 import (
    NAL_IDR,
    NAL_PPS,
    NAL_SPS,
    ParameterSets,
    annex_b,
    nal_type,
    nal_units,
    parse_sps,
)
from bridge.media.peer import RemoteTrack
from bridge.media.recorder import CONTAINERS, Recorder
from bridge.media.sdp import check_offer
from bridge.sim.media import codec_preferences, rtc_configuration
from support.waiting import eventually

H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)


def encode(
    width: int, height: int, frames: int, *, profile: str = "baseline", repeat_headers: bool = True
) -> list[bytes]:
    """``frames`` access units (Annex B) from libx264, one IDR first, then P frames."""
    codec: Any = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = fractions.Fraction(1, 15)
    codec.options = {"profile": profile, "tune": "zerolatency", "keyint": "1000"}
    if not repeat_headers:
        codec.flags |= av.codec.context.Flags.global_header  # SPS/PPS only in extradata
    out: list[bytes] = []
    for i in range(frames):
        frame = av.VideoFrame(width, height, "yuv420p")
        for n, plane in enumerate(frame.planes):
            plane.update(bytes([(i * 9 + n * 40) % 256]) * plane.buffer_size)
        frame.pts = i
        out.extend(bytes(p) for p in codec.encode(frame))
    out.extend(bytes(p) for p in codec.encode(None))
    if not repeat_headers:
        out.insert(0, bytes(codec.extradata))
    return out


def sps_of(access_unit: bytes) -> bytes:
    return next(u for u in nal_units(access_unit) if nal_type(u) == NAL_SPS)


# ------------------------------------------------------------------------------------------ pure parts


def test_nal_units_splits_three_and_four_byte_start_codes() -> None:
    stream = b"\x00\x00\x00\x01\x67\x42\x0a" + b"\x00\x00\x01\x68\xce" + b"\x00\x00\x00\x01\x65\x88\x80"
    assert nal_units(stream) == [b"\x67\x42\x0a", b"\x68\xce", b"\x65\x88\x80"]
    assert [nal_type(u) for u in nal_units(stream)] == [NAL_SPS, NAL_PPS, NAL_IDR]
    assert annex_b(nal_units(stream)) == stream.replace(b"\x00\x00\x01\x68", b"\x00\x00\x00\x01\x68")
    assert nal_units(b"no start code") == []


@pytest.mark.parametrize(
    ("width", "height", "profile", "profile_idc"),
    [
        (320, 240, "baseline", 66),
        (330, 182, "baseline", 66),  # not a multiple of 16: frame cropping
        (642, 362, "high", 100),  # High: chroma format and bit depths come first
        (1280, 720, "main", 77),
    ],
)
def test_parse_sps_reads_profile_level_and_the_cropped_size(
    width: int, height: int, profile: str, profile_idc: int
) -> None:
    units = encode(width, height, 1, profile=profile)
    sps = parse_sps(sps_of(units[0]))
    assert (sps.width, sps.height, sps.profile_idc) == (width, height, profile_idc)
    # What libavcodec's own parser says about the same stream.
    decoder: Any = av.CodecContext.create("h264", "r")
    decoder.decode(av.Packet(units[0]))
    assert f"{sps.level_idc}" == f"{decoder.level}"
    assert sps.profile_level_id == sps_of(units[0])[1:4].hex()


def test_parse_sps_refuses_what_is_not_an_sps() -> None:
    with pytest.raises(ValueError, match="not an SPS"):
        parse_sps(b"\x68\xce\x38\x80")
    with pytest.raises(ValueError, match="ends early"):
        parse_sps(b"\x67\x42\xc0\x1e")  # truncated: no room for the size


def test_an_idr_without_parameter_sets_gets_the_latest_ones_in_front() -> None:
    # Global headers: the IDR access unit carries no SPS/PPS; they come earlier (here: out of band).
    headers, idr, delta = encode(320, 240, 2, repeat_headers=False)[:3]
    assert {nal_type(u) for u in nal_units(idr)} & {NAL_SPS, NAL_PPS} == set()
    sets = ParameterSets()
    assert sets.complete(idr) is None  # no SPS/PPS seen yet: undecodable
    assert sets.complete(headers) is None  # parameter sets only: remembered, still no picture
    assert sets.complete(delta) is None  # not an IDR
    fixed = sets.complete(idr)
    assert fixed is not None
    assert fixed.endswith(idr)
    assert [nal_type(u) for u in nal_units(fixed)][:2] == [NAL_SPS, NAL_PPS]
    decoder: Any = av.CodecContext.create("h264", "r")
    frames = decoder.decode(av.Packet(fixed))
    frames += decoder.decode(av.Packet(delta)) + decoder.decode(None)
    assert len(frames) == 2
    assert frames[0].key_frame
    assert (frames[0].width, frames[0].height) == (320, 240)
    assert sets.sprop_parameter_sets().count(",") == 1
    # An IDR that carries its own sets is left alone.
    own = encode(320, 240, 1)[0]
    assert ParameterSets().complete(own) == own


def test_with_sets_passes_every_frame_on_and_completes_idrs_that_lack_sets() -> None:
    # What playback does to each frame it sends: nothing is withheld, IDRs become decodable.
    headers, idr, delta = encode(320, 240, 2, repeat_headers=False)[:3]
    sets = ParameterSets()
    assert sets.with_sets(idr) is idr  # nothing seen yet: passed on as it is
    assert sets.with_sets(headers) is headers
    assert sets.with_sets(delta) is delta
    fixed = sets.with_sets(idr)
    assert fixed.endswith(idr)
    kinds = [nal_type(u) for u in nal_units(fixed)]
    assert kinds[:2] == [NAL_SPS, NAL_PPS]
    assert NAL_IDR in kinds
    own = encode(320, 240, 1)[0]
    assert ParameterSets().with_sets(own) is own


def test_sdp_for_h264_names_the_payload_type_and_packetization_mode() -> None:
    sdp = sdp_for(
        codec="h264", address="127.0.0.1", port=5006, payload_type=102, channels=0, track_sid="TR_x"
    )
    lines = sdp.split("\r\n")
    assert DEFAULT_PAYLOAD_TYPES["h264"] == 102
    assert "c=IN IP4 127.0.0.1" in lines
    assert "m=video 5006 RTP/AVP 102" in lines
    assert "a=rtpmap:102 H264/90000" in lines
    assert "a=fmtp:102 packetization-mode=1" in lines
    assert lines[-2:] == ["a=recvonly", ""]


def test_recordings_accept_h264_in_matroska_mp4_and_raw_only() -> None:
    assert {ext for ext, codecs in CONTAINERS.items() if "h264" in codecs} == {".mkv", ".mp4", ".h264"}


# ------------------------------------------------------------------------------------------ forward


class _Listener(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.packets.append(data)


async def test_forward_starts_on_an_idr_with_sps_pps_and_packetizes_per_rfc_6184() -> None:
    headers, idr, *deltas = encode(640, 480, 6, repeat_headers=False)
    loop = asyncio.get_running_loop()
    transport, listener = await loop.create_datagram_endpoint(_Listener, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    asked: list[str] = []

    def request_keyframe(sid: str) -> bool:
        asked.append(sid)
        return True

    forwarder = Forwarder(
        room="r",
        allow=("127.0.0.1/32",),
        max_forwards=1,
        queue_packets=1000,
        request_keyframe=request_keyframe,
        count_dropped=lambda remote, n: None,
    )
    remote = RemoteTrack(mid="0", kind="video", track_id="TR_v")
    try:
        fwd = await forwarder.start("TR_v", "127.0.0.1", port, "h264")
        assert (fwd.payload_type, fwd.kind) == (102, "video")
        assert asked == ["TR_v"]  # asked for a keyframe at once
        # Before the IDR: the parameter sets, then a delta frame; neither is sent.
        for ts, data in [(0, headers), (3000, deltas[0])]:
            forwarder.on_encoded(remote, H264, JitterFrame(data=data, timestamp=ts))
        assert fwd.skipped == 2
        assert not fwd.started
        for n, data in enumerate([idr, *deltas[1:]]):
            forwarder.on_encoded(remote, H264, JitterFrame(data=data, timestamp=6000 + n * 6000))
        await eventually(lambda: len(listener.packets) >= fwd.packets > 0, within=5, what="the RTP")
        assert fwd.frames == len(deltas)
        assert forwarder.stats.packets_by_kind["video"] == fwd.packets
    finally:
        await forwarder.aclose()
        transport.close()

    # Depayload (aiortc's receiver side) and decode: the first picture is a keyframe.
    frames: dict[int, bytes] = {}
    markers: dict[int, list[bool]] = {}
    for packet in listener.packets:
        second, ts = packet[1], struct.unpack("!I", packet[4:8])[0]
        assert second & 0x7F == 102
        frames[ts] = frames.get(ts, b"") + h264_depayload(packet[12:])
        markers.setdefault(ts, []).append(bool(second & 0x80))
    assert all(m[-1] and not any(m[:-1]) for m in markers.values()), "marker on each frame's last packet"
    first = nal_units(frames[min(frames)])
    assert [nal_type(u) for u in first][:2] == [NAL_SPS, NAL_PPS]
    decoder: Any = av.CodecContext.create("h264", "r")
    decoded = [f for ts in sorted(frames) for f in decoder.decode(av.Packet(frames[ts]))]
    decoded += decoder.decode(None)
    assert len(decoded) == len(frames)
    assert decoded[0].key_frame
    assert (decoded[0].width, decoded[0].height) == (640, 480)


# ------------------------------------------------------------------------------------------ recording


async def test_recording_skips_to_the_first_idr_and_writes_a_decodable_mkv(tmp_path: Path) -> None:
    headers, idr, *deltas = encode(320, 240, 15, repeat_headers=False)
    finished: list[events_pb2.RecordingFinished] = []

    async def on_finished(event: events_pb2.RecordingFinished) -> None:
        finished.append(event)

    recorder = Recorder(
        root=tmp_path,
        room="r",
        max_recordings=1,
        queue_frames=100,
        request_keyframe=lambda sid: True,
        count_dropped=lambda remote, n: None,
        on_finished=on_finished,
    )
    remote = RemoteTrack(mid="0", kind="video", track_id="TR_v")
    rec = recorder.start("TR_v", "cam.mkv", 0.0, "video")
    stream = [headers, deltas[0], idr, *deltas[1:]]
    for n, data in enumerate(stream):
        recorder.on_encoded(remote, H264, JitterFrame(data=data, timestamp=n * 6000))
    assert rec.skipped == 2
    recorder.stop("TR_v")
    await eventually(lambda: bool(finished), within=5, what="the recording to finish")
    await recorder.aclose()
    assert (finished[0].codec, finished[0].frames, finished[0].reason) == ("h264", len(deltas), "stopped")

    def decode() -> tuple[list[Any], Any]:
        with av.open(str(tmp_path / "cam.mkv")) as container:
            stream: Any = container.streams.video[0]
            return list(container.decode(stream)), (stream.codec_context.width, stream.codec_context.height)

    frames, size = await asyncio.to_thread(decode)
    assert size == (320, 240)
    assert len(frames) == len(deltas)
    assert frames[0].key_frame
    # 90 kHz RTP time kept: 6000 ticks = 1/15 s per frame from the IDR on.
    assert float(frames[-1].time - frames[0].time) == pytest.approx((len(deltas) - 1) / 15, abs=0.002)


# ------------------------------------------------------------------------------------------ simulator


def test_simulator_codec_preference_offers_only_the_tracks_codec() -> None:
    assert codec_preferences("video", "") == []
    assert codec_preferences("video", "video/VP8") == []  # aiortc's default: offer unchanged
    assert codec_preferences("video", "video/VP9") == []  # aiortc has none
    assert codec_preferences("audio", "audio/opus") == []
    preferred = [c.mimeType for c in codec_preferences("video", "video/H264")]
    assert preferred[-1] == "video/rtx"
    assert set(preferred[:-1]) == {"video/H264"}
    assert len(preferred) == 3


async def test_an_h264_offer_passes_the_bridges_pre_check_untouched() -> None:
    pc = RTCPeerConnection(configuration=rtc_configuration())
    try:
        transceiver = pc.addTransceiver("video", direction="sendonly")
        transceiver.setCodecPreferences(codec_preferences("video", "video/H264"))
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
    finally:
        await pc.close()
    assert "H264/90000" in offer
    assert "VP8/90000" not in offer
    check = check_offer(offer)
    assert not check.unsupported
    assert check.sdp == offer


def test_a_truncated_sps_is_a_value_error_and_parsed_gives_none() -> None:
    # 00 00 03 is an emulation-prevention sequence: the RBSP is shorter than the NAL unit.
    unit = bytes([0x67, 0x00, 0x00, 0x03])
    with pytest.raises(ValueError, match="SPS"):
        parse_sps(unit)
    sets = ParameterSets()
    sets.observe([unit])
    assert sets.parsed() is None
