"""Where a ``bridge.publish_track`` track comes from: a file or an allowed URL, opened and described.

Pure helpers (no asyncio): :func:`open_source` opens a file or URL with FFmpeg (call it in a worker
thread: a URL can block until its timeouts), :func:`describe` reads what its first audio and video
streams hold, :func:`choose_kind` picks which one to publish and :func:`passthrough_codec` says
whether its packets can go to aiortc as they are. :func:`url_allowed` checks a URL against
``media.publish_url_allow`` and :func:`redact_url` is the only form of a URL that may be logged or put
into an error or event: a URL may carry credentials in its userinfo or query string.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import av

from bridge.errors import MediaRefused

__all__ = [
    "ENCODED_MIME",
    "OPEN_TIMEOUT_S",
    "MediaInfo",
    "StreamInfo",
    "choose_kind",
    "describe",
    "open_source",
    "passthrough_codec",
    "query_refused",
    "redact_url",
    "url_allowed",
]

OPEN_TIMEOUT_S: Final = 5.0  # connect and each read of a URL; the caller's deadline adds a margin
# Codecs aiortc's sender packetizes without encoding (research media-aiortc.md §2): FFmpeg name -> RTP mime.
_PASSTHROUGH: Final = {
    "audio": {"opus": "audio/opus"},
    "video": {"vp8": "video/VP8", "h264": "video/H264"},
}
# What aiortc encodes everything else to.
ENCODED_MIME: Final = {"audio": "audio/opus", "video": "video/VP8"}
# Protocols FFmpeg may use for a URL, nested ones included (RTSP's RTP): never local files or pipes.
_NETWORK_PROTOCOLS: Final = "http,https,tls,tcp,udp,rtp,srtp,rtsp,rtsps,rtmp,rtmps,rtmpt,rtmpts,srt"
# Demuxers FFmpeg may pick, for files and URLs alike: media containers and live protocols that carry
# the media themselves. Not playlists or manifests (hls, dash, concat, sdp, ...): those open further
# URLs or files that the allow-list (or publish_dir) never saw, e.g. a segment at an internal address.
_FORMATS: Final = "ogg,matroska,webm,mov,mp4,ivf,h264,hevc,wav,flac,mp3,aac,flv,mpegts,avi,mjpeg,rtsp"
# Protocols whose URL query FFmpeg reads as its own options (``?listen=1``, ``?localport=``, ``?reuse=1``,
# ...): the allow-list would see the same place, FFmpeg would bind or listen where it was told.
_QUERY_IS_OPTIONS: Final = frozenset({"tcp", "tls", "udp", "rtp", "srtp", "srt"})
# rtmp://host/app/<stream key>: the key is a publishing credential.
_RTMP: Final = frozenset({"rtmp", "rtmps", "rtmpt", "rtmpts", "rtmpe", "rtmpte"})
_REDACTED: Final = "REDACTED"
# Ports a URL may leave out: "https://h/" and "https://h:443/" name the same place.
_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443}


@dataclass(frozen=True)
class StreamInfo:
    """One stream of a source: its index in the container and what FFmpeg says it holds."""

    kind: str  # "audio" or "video"
    index: int
    codec: str
    width: int = 0
    height: int = 0
    channels: int = 0


@dataclass(frozen=True)
class MediaInfo:
    """The first audio and the first video stream of a source (either may be missing)."""

    audio: StreamInfo | None
    video: StreamInfo | None

    def stream(self, kind: str) -> StreamInfo | None:
        return self.audio if kind == "audio" else self.video


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path``: userinfo, query and fragment are dropped (they may be secrets), and
    so is an RTMP URL's path after the application name: that is where its stream key goes."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    path = parts.path
    if parts.scheme.lower() in _RTMP:
        app, _, key = path.lstrip("/").partition("/")
        path = f"/{app}/{_REDACTED}" if key else path
    return f"{parts.scheme}://{netloc}{path}"


def url_allowed(url: str, prefixes: tuple[str, ...]) -> bool:
    """True when ``url`` is below one of ``prefixes``.

    Not a string prefix test (``http://media.example.com`` would then allow
    ``http://media.example.com.evil.net/`` and ``http://media.example.com@evil.net/``): scheme, host and
    port must be equal and the path must be the prefix's path or below it. Paths with ``.``/``..``
    segments are refused, since the server would resolve them outside the prefix.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if not parts.scheme or not parts.hostname:
        return False
    segments = unquote(parts.path).split("/")
    if "." in segments or ".." in segments:
        return False
    scheme = parts.scheme.lower()
    port = port if port is not None else _DEFAULT_PORTS.get(scheme)
    for prefix in prefixes:
        allowed = urlsplit(prefix)
        allowed_scheme = allowed.scheme.lower()
        if (
            allowed_scheme == scheme
            and allowed.hostname == parts.hostname
            and (allowed.port if allowed.port is not None else _DEFAULT_PORTS.get(allowed_scheme)) == port
            and _path_below(parts.path, allowed.path)
        ):
            return True
    return False


def query_refused(url: str) -> str | None:
    """Why ``url`` may not be opened even below an allowed prefix, or None.

    FFmpeg takes the query of a tcp, tls, udp, rtp, srtp or srt URL as socket options, so a command could
    make the bridge listen on or bind a port of its choosing. Such URLs may not carry a query.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "the URL cannot be parsed"
    scheme = parts.scheme.lower()
    if scheme in _QUERY_IS_OPTIONS and parts.query:
        return f"a {scheme} URL may not carry a query (FFmpeg would take it as socket options)"
    return None


def _path_below(path: str, root: str) -> bool:
    root = posixpath.join("/", root).rstrip("/")
    path = posixpath.join("/", path)
    return not root or path == root or path.startswith(root + "/")


def open_source(target: str, *, url: bool, shown: str) -> Any:
    """Open ``target`` (a path or a URL) for reading; the caller closes the container.

    URLs get FFmpeg's socket timeouts (microseconds) and PyAV's own open/read deadline, may only use
    network protocols and are not redirected; files and URLs alike may only be media containers (no
    playlist or manifest that would open further sources). Raises :class:`MediaRefused` naming the
    source as ``shown`` (for a URL: redacted; FFmpeg's own message quotes the whole URL, so it is never
    used).
    """
    name = shown
    options: dict[str, str] = {"format_whitelist": _FORMATS}
    timeout: tuple[float, float] | None = None
    if url:
        micros = str(int(OPEN_TIMEOUT_S * 1_000_000))
        # No redirects: the allow-list checked this URL, not wherever a server would send FFmpeg next.
        options |= {"rw_timeout": micros, "protocol_whitelist": _NETWORK_PROTOCOLS, "max_redirects": "0"}
        # RTMP's "timeout" is a listen timeout: it would turn the client into a server.
        if urlsplit(target).scheme.lower() not in ("rtmp", "rtmps", "rtmpt", "rtmpts"):
            options["timeout"] = micros
        timeout = (OPEN_TIMEOUT_S, OPEN_TIMEOUT_S)
    try:
        return av.open(target, options=options, timeout=timeout)
    except av.FFmpegError as exc:
        raise _refusal(name, exc, url=url) from None
    except OSError as exc:
        raise MediaRefused("not_found", f"cannot open {name}: {exc.strerror or type(exc).__name__}") from None


def _refusal(name: str, exc: av.FFmpegError, *, url: bool) -> MediaRefused:
    # str(exc) quotes the whole URL: build the message from the parts that do not.
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, FileNotFoundError | av.error.HTTPNotFoundError):
        return MediaRefused("not_found", f"{name}: {reason}")
    if isinstance(exc, TimeoutError | av.error.ExitError) or exc.errno == 110:  # ETIMEDOUT
        # ExitError: PyAV's own deadline interrupted FFmpeg.
        return MediaRefused("timeout", f"{name}: no answer within {OPEN_TIMEOUT_S:g}s")
    if url and not isinstance(exc, av.error.InvalidDataError):
        return MediaRefused("unavailable", f"cannot open {name}: {reason}")
    return MediaRefused("invalid_path", f"{name}: not a media file FFmpeg reads ({reason})")


def describe(container: Any) -> MediaInfo:
    """The first audio and video stream of an open container."""
    audio = video = None
    if container.streams.audio:
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        audio = StreamInfo("audio", stream.index, str(ctx.name), channels=int(ctx.channels or 1))
    if container.streams.video:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        video = StreamInfo("video", stream.index, str(ctx.name), width=int(ctx.width), height=int(ctx.height))
    return MediaInfo(audio, video)


def choose_kind(requested: str, info: MediaInfo) -> StreamInfo:
    """The stream to publish: ``requested`` ("audio", "video"), or audio if there is one, else video.

    Raises :class:`ValueError` (the caller words the refusal) for an unknown kind or a missing stream.
    """
    if requested not in ("", "audio", "video"):
        raise ValueError(f"kind must be audio, video or empty, not {requested!r}")
    kind = requested or ("audio" if info.audio is not None else "video")
    stream = info.stream(kind)
    if stream is None:
        raise ValueError(f"it has no {kind} stream" if requested else "it has no audio or video stream")
    return stream


def passthrough_codec(kind: str, codec: str) -> str | None:
    """The RTP mime type ``codec`` packets go out as unchanged, or None when they must be decoded."""
    return _PASSTHROUGH.get(kind, {}).get(codec)
