"""The pure parts of ``bridge.publish_track``: which stream is published and how, which URLs are allowed,
how a URL is shown, and the ``media.publish_url_allow`` setting."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config import load_settings
from bridge.errors import ConfigError, MediaRefused
from bridge.media.h264 import ParameterSets
from bridge.media.publisher import codec_preferences
from bridge.media.sources import (
    MediaInfo,
    StreamInfo,
    choose_kind,
    open_source,
    passthrough_codec,
    query_refused,
    redact_url,
    url_allowed,
)
from support.media_files import write_ogg_opus

AUDIO = StreamInfo("audio", 0, "opus", channels=2)
VIDEO = StreamInfo("video", 1, "h264", width=320, height=240)


@pytest.mark.parametrize(
    ("requested", "info", "expected"),
    [
        ("", MediaInfo(AUDIO, VIDEO), AUDIO),  # empty: audio when there is some
        ("", MediaInfo(None, VIDEO), VIDEO),  # else the video
        ("video", MediaInfo(AUDIO, VIDEO), VIDEO),
        ("audio", MediaInfo(AUDIO, None), AUDIO),
    ],
)
def test_choose_kind(requested: str, info: MediaInfo, expected: StreamInfo) -> None:
    assert choose_kind(requested, info) is expected


@pytest.mark.parametrize(
    ("requested", "info", "problem"),
    [
        ("audio", MediaInfo(None, VIDEO), "no audio stream"),
        ("video", MediaInfo(AUDIO, None), "no video stream"),
        ("", MediaInfo(None, None), "no audio or video stream"),
        ("data", MediaInfo(AUDIO, VIDEO), "kind must be"),
    ],
)
def test_choose_kind_refuses(requested: str, info: MediaInfo, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        choose_kind(requested, info)


def test_passthrough_codecs() -> None:
    assert passthrough_codec("audio", "opus") == "audio/opus"
    assert passthrough_codec("video", "vp8") == "video/VP8"
    assert passthrough_codec("video", "h264") == "video/H264"
    for kind, codec in [("audio", "aac"), ("video", "vp9"), ("video", "mpeg4"), ("video", "opus")]:
        assert passthrough_codec(kind, codec) is None


def test_codec_preferences_name_one_codec_plus_rtx() -> None:
    h264 = codec_preferences("video", "video/H264")
    assert {c.mimeType for c in h264} == {"video/H264", "video/rtx"}
    assert all(c.parameters["packetization-mode"] == "1" for c in h264 if c.mimeType == "video/H264")
    assert [c.mimeType for c in codec_preferences("video", "video/VP8")] == ["video/VP8", "video/rtx"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://user:pass@media.example.com:8443/clips/a.mp4?sig=abc#t=3",
            "https://media.example.com:8443/clips/a.mp4",
        ),
        ("rtsp://cam.local/stream1", "rtsp://cam.local/stream1"),
        ("http://[::1]:8080/a.ivf?x=1", "http://[::1]:8080/a.ivf"),
        ("srt://token@10.0.0.1:9000?passphrase=secret", "srt://10.0.0.1:9000"),
        ("rtmp://live.example.com/live/sk-live-1234", "rtmp://live.example.com/live/REDACTED"),
        ("RTMPS://live.example.com:443/app/inst/key?x=1", "rtmps://live.example.com:443/app/REDACTED"),
        ("rtmp://live.example.com/live", "rtmp://live.example.com/live"),
        ("http://host:notaport/x?secret=1", "<unparseable URL>"),
    ],
)
def test_redact_url_drops_userinfo_query_and_fragment(url: str, shown: str) -> None:
    assert redact_url(url) == shown


ALLOW = ("https://media.example.com/clips/", "rtsp://cam.local:8554", "http://127.0.0.1:8000/a")


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://media.example.com/clips/a.mp4", True),
        ("https://user:pw@media.example.com/clips/sub/a.mp4?sig=1", True),  # credentials may be sent
        ("HTTPS://media.example.com/clips/a.mp4", True),
        ("https://media.example.com/clips", True),
        ("rtsp://cam.local:8554/any/stream", True),
        ("http://127.0.0.1:8000/a", True),
        ("http://127.0.0.1:8000/a/b.ivf", True),
        ("http://127.0.0.1:8000/ab.ivf", False),  # a path segment, not a string prefix
        ("https://media.example.com/other/a.mp4", False),
        ("https://media.example.com/clips/../secret.mp4", False),
        ("https://media.example.com/clips/%2e%2e/secret.mp4", False),
        ("https://media.example.com.evil.net/clips/a.mp4", False),
        ("https://media.example.com@evil.net/clips/a.mp4", False),
        ("http://media.example.com/clips/a.mp4", False),  # scheme
        ("rtsp://cam.local/any/stream", False),  # port
        ("http://127.0.0.1:8001/a", False),
        ("clips/a.mp4", False),
        ("http://127.0.0.1:bad/a", False),
        ("https://media.example.com:443/clips/a.mp4", True),  # the default port, spelled out
        ("https://media.example.com:8443/clips/a.mp4", False),
        ("rtsp://cam.local:554/any/stream", False),
    ],
)
def test_url_allowed(url: str, allowed: bool) -> None:
    assert url_allowed(url, ALLOW) is allowed


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("udp://127.0.0.1:5000?localport=5001", True),
        ("UDP://127.0.0.1:5000?reuse=1", True),
        ("srt://relay.example.com:9000?mode=listener", True),
        ("tcp://relay.example.com:9000?listen=1", True),
        ("rtp://239.0.0.1:5004?localaddr=10.0.0.1", True),
        ("tls://relay.example.com:9000?listen=1", True),
        ("udp://127.0.0.1:5000", False),
        ("https://media.example.com/clips/a.mp4?token=abc", False),  # the server's business, not FFmpeg's
        ("rtsp://cam.local:8554/any/stream?channel=1", False),
    ],
)
def test_query_refused_where_ffmpeg_reads_it_as_socket_options(url: str, refused: bool) -> None:
    problem = query_refused(url)
    assert (problem is not None) is refused
    if problem is not None:
        assert "?" not in problem
        assert "query" in problem


def test_no_url_is_allowed_by_an_empty_list() -> None:
    assert not url_allowed("https://media.example.com/clips/a.mp4", ())


def _settings(tmp_path: Path, allow: object) -> object:
    data = {
        "livekit": {"url": "wss://lk.example.com", "api_key": "key", "api_secret": "sesame-secret"},
        "media": {"publish_url_allow": allow},
    }
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_settings(path, {})


def test_publish_url_allow_setting(tmp_path: Path) -> None:
    settings = _settings(tmp_path, ["https://media.example.com/clips/", "rtmp://10.0.0.5/live"])
    assert settings.media.publish_url_allow == ("https://media.example.com/clips/", "rtmp://10.0.0.5/live")  # type: ignore[attr-defined]
    env = {
        "BRIDGE_LIVEKIT__URL": "wss://lk.example.com",
        "BRIDGE_LIVEKIT__API_KEY": "key",
        "BRIDGE_LIVEKIT__API_SECRET": "sesame-secret",
        "BRIDGE_MEDIA__PUBLISH_URL_ALLOW": "https://a.example/x, srt://b.example:9000",
    }
    assert load_settings(None, env).media.publish_url_allow == ("https://a.example/x", "srt://b.example:9000")
    assert load_settings(None, env | {"BRIDGE_MEDIA__PUBLISH_URL_ALLOW": ""}).media.publish_url_allow == ()


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("media.example.com/clips", "needs a scheme and a host"),
        ("file:///srv/clips", "needs a scheme and a host"),
        ("https://user:pw@media.example.com/", "entry 1 has a user, password, query or fragment"),
        ("https://media.example.com/?sig=1", "entry 1 has a user, password, query or fragment"),
        ("https://media.example.com:99999/", "is not a URL"),
    ],
)
def test_publish_url_allow_refuses_bad_entries(tmp_path: Path, entry: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        _settings(tmp_path, [entry])
    assert caught.value.key == "media.publish_url_allow"
    assert ":pw@" not in str(caught.value)
    assert "sig=1" not in str(caught.value)


def test_parameter_sets_go_in_front_of_an_idr_frame_without_them() -> None:
    sps, pps = b"\x67\x42\xc0\x0c", b"\x68\xce\x3c\x80"
    idr, slice_ = b"\x65\x88\x84\x00\x33", b"\x41\x9a\x38"
    fix = ParameterSets().with_sets  # what playback applies to every H.264 packet it sends
    first = b"\x00\x00\x00\x01" + sps + b"\x00\x00\x01" + pps + b"\x00\x00\x00\x01" + idr
    assert fix(first) == first  # has them already
    assert fix(b"\x00\x00\x00\x01" + slice_) == b"\x00\x00\x00\x01" + slice_
    later = b"\x00\x00\x00\x01" + idr
    assert fix(later) == b"\x00\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps + later


def test_open_source_refusals_never_quote_the_url(tmp_path: Path) -> None:
    # Nothing listens on port 9 of the loopback: FFmpeg's own message would quote the whole URL.
    with pytest.raises(MediaRefused) as caught:
        open_source("http://alice:pw1@127.0.0.1:9/a.ivf?token=sekrit", url=True, shown="shown-url")
    assert caught.value.code == "unavailable"
    assert str(caught.value) == "cannot open shown-url: Connection refused"
    (tmp_path / "junk.ivf").write_bytes(b"not media")
    with pytest.raises(MediaRefused) as caught:
        open_source(str(tmp_path / "junk.ivf"), url=False, shown="junk.ivf")
    assert caught.value.code == "invalid_path"
    with pytest.raises(MediaRefused) as caught:
        open_source(str(tmp_path / "missing.ivf"), url=False, shown="missing.ivf")
    assert caught.value.code == "not_found"


def test_playlists_are_refused_even_inside_publish_dir(tmp_path: Path) -> None:
    # An HLS playlist would make FFmpeg open whatever it lists (files elsewhere, internal URLs).
    write_ogg_opus(tmp_path / "a.ogg", 0.2)
    (tmp_path / "list.m3u8").write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:0.2,\na.ogg\n#EXT-X-ENDLIST\n"
    )
    open_source(str(tmp_path / "a.ogg"), url=False, shown="a.ogg").close()
    with pytest.raises(MediaRefused) as caught:
        open_source(str(tmp_path / "list.m3u8"), url=False, shown="list.m3u8")
    assert caught.value.code == "invalid_path"


def test_redirects_are_not_followed(tmp_path: Path) -> None:
    write_ogg_opus(tmp_path / "a.ogg", 0.2)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def do_GET(self) -> None:
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/a.ogg")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        open_source(f"{base}/a.ogg", url=True, shown="a.ogg").close()  # the server works
        with pytest.raises(MediaRefused):
            open_source(f"{base}/moved", url=True, shown="moved")
    finally:
        server.shutdown()
        server.server_close()
