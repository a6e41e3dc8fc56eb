"""Signaling frames decode to messages, or fail with an error that says what was wrong."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from livekit.protocol import rtc

from bridge.errors import FrameError
from bridge.signaling import codec


def test_binary_and_json_frames_round_trip() -> None:
    request = rtc.SignalRequest(ping_req=rtc.Ping(timestamp=123, rtt=4))
    assert codec.decode_request(codec.encode(request)) == request
    text = codec.encode(request, json_mode=True)
    assert isinstance(text, str)
    assert '"pingReq"' in text
    assert codec.decode_request(text) == request


def test_oversized_frame_is_refused_with_its_size() -> None:
    with pytest.raises(FrameError, match="frame of 11 bytes exceeds the 10-byte limit"):
        codec.decode_response(b"x" * 11, max_bytes=10)


def test_garbage_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="binary frame is not a SignalRequest"):
        codec.decode_request(b"\xff\xff\xff\xff")
    with pytest.raises(FrameError, match="text frame is not SignalResponse JSON"):
        codec.decode_response("{not json")


@given(st.binary(max_size=256) | st.text(max_size=256))
def test_any_input_decodes_or_raises_frame_error(frame: bytes | str) -> None:
    with contextlib.suppress(FrameError):
        codec.decode_request(frame)
