"""The offer pre-check (bridge.media.sdp): pure SDP text in, SDP text out, checked with aiortc."""

from __future__ import annotations

import itertools

import pytest
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import OperationError

from bridge.media.sdp import check_offer, restore_answer
from bridge.sim.ice import use_loopback_only

VP9 = ["a=rtpmap:98 VP9/90000", "a=fmtp:98 profile-id=0", "a=rtpmap:99 rtx/90000", "a=fmtp:99 apt=98"]
AV1 = ["a=rtpmap:98 AV1/90000", "a=rtpmap:99 rtx/90000", "a=fmtp:99 apt=98"]
H264_MAIN = [
    "a=rtpmap:98 H264/90000",
    "a=fmtp:98 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f",
]
H264_HIGH = [
    "a=rtpmap:98 H264/90000",
    "a=fmtp:98 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640c1f",
]
H264_CB = [
    "a=rtpmap:98 H264/90000",
    "a=fmtp:98 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
]
VP8 = ["a=rtpmap:98 VP8/90000", "a=rtcp-fb:98 nack pli"]

TRANSPORT = [
    "c=IN IP4 0.0.0.0",
    "a=ice-ufrag:Uf00",
    "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
    "a=setup:actpass",
]


def offer(video_codecs: list[str], *, video_pts: str = "98 99") -> str:
    """A LiveKit-shaped subscriber offer: data m-line first, then opus and one video m-line."""
    lines = [
        "v=0",
        "o=- 4215 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1 2",
        "a=msid-semantic: WMS *",
        "a=ice-lite",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        *TRANSPORT,
        "a=mid:0",
        "a=sctp-port:5000",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        *TRANSPORT,
        "a=mid:1",
        "a=sendonly",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=msid:PA_alice|TR_audio TR_audio",
        "a=ssrc:1111 cname:alice",
        f"m=video 9 UDP/TLS/RTP/SAVPF {video_pts}",
        *TRANSPORT,
        "a=mid:2",
        "a=sendonly",
        "a=rtcp-mux",
        *video_codecs,
        "a=msid:PA_alice|TR_video TR_video",
        "a=ssrc:2222 cname:alice",
    ]
    return "\r\n".join(lines) + "\r\n"


def section(sdp: str, mid: str) -> list[str]:
    lines = sdp.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")] + [len(lines)]
    for begin, end in itertools.pairwise(starts):
        if f"a=mid:{mid}" in lines[begin:end]:
            return lines[begin:end]
    raise AssertionError(f"no m-line with mid {mid}")


@pytest.mark.parametrize(
    ("codecs", "pts"), [(VP9, "98 99"), (AV1, "98 99"), (H264_MAIN, "98"), (H264_HIGH, "98")]
)
def test_mline_without_an_aiortc_codec_is_flagged_and_neutralised(codecs: list[str], pts: str) -> None:
    check = check_offer(offer(codecs, video_pts=pts))
    assert [(u.mid, u.kind, u.index, u.payload_type, u.track_id) for u in check.unsupported] == [
        ("2", "video", 2, 98, "TR_video")
    ]
    assert check.munged
    video = section(check.sdp, "2")
    assert video[0] == "m=video 9 UDP/TLS/RTP/SAVPF 98"
    assert "a=rtpmap:98 VP8/90000" in video
    assert "a=inactive" in video
    assert "a=sendonly" not in video
    assert not [line for line in video if line.startswith(("a=fmtp:", "a=rtcp-fb:"))]
    # everything else is untouched
    assert section(check.sdp, "1") == section(offer(codecs, video_pts=pts), "1")
    assert check.mid_to_track_id == {"1": "TR_audio", "2": "TR_video"}


@pytest.mark.parametrize(("codecs", "pts"), [(VP8, "98"), (H264_CB, "98")])
def test_supported_offer_is_returned_unchanged(codecs: list[str], pts: str) -> None:
    text = offer(codecs, video_pts=pts)
    check = check_offer(text)
    assert check.unsupported == ()
    assert not check.munged
    assert check.sdp == text
    assert restore_answer("v=0\r\n", check) == "v=0\r\n"


def test_mid_to_track_id_wins_over_msid() -> None:
    check = check_offer(offer(VP9), {"2": "TR_from_map"})
    assert check.unsupported[0].track_id == "TR_from_map"
    assert check.mid_to_track_id == {"1": "TR_audio", "2": "TR_from_map"}
    assert check.unsupported[0].codecs == ("VP9/90000", "rtx/90000")


@pytest.mark.parametrize("text", ["v=0\r\nm=audio x UDP 1\r\n", "v=0\r\nm=audio 9\r\n"])
def test_unparsable_offer_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="unparsable"):
        check_offer(text)


async def test_munged_offer_applies_to_aiortc_and_the_answer_names_only_offered_codecs() -> None:
    use_loopback_only()
    text = offer(VP9)
    config = RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE, iceServers=[])
    plain = RTCPeerConnection(config)
    pc = RTCPeerConnection(config)
    try:
        with pytest.raises(OperationError):
            await plain.setRemoteDescription(RTCSessionDescription(sdp=text, type="offer"))
        check = check_offer(text)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=check.sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = restore_answer(pc.localDescription.sdp, check)
    finally:
        await plain.close()
        await pc.close()
    video = section(answer, "2")
    kind, _port, proto, *formats = video[0].split()
    assert (kind, proto, formats) == ("m=video", "UDP/TLS/RTP/SAVPF", ["98"])
    assert "a=rtpmap:98 VP9/90000" in video
    assert "a=fmtp:98 profile-id=0" in video
    assert "a=inactive" in video
    assert not [line for line in video if "VP8" in line or line.startswith(("a=ssrc", "a=msid"))]
    assert "a=ice-ufrag:" in "\n".join(video)
    audio = section(answer, "1")
    assert "a=recvonly" in audio
    assert any("opus/48000/2" in line for line in audio)
    assert answer.count("m=") == 3
