"""Signaling frames <-> protobuf messages, with a size limit and nothing else.

LiveKit sends one protobuf message per binary WebSocket frame. A text frame carries the canonical
proto3 JSON mapping instead; a server that receives one answers in JSON until the client sends binary.
"""

from __future__ import annotations

from typing import Final, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit.protocol import rtc

from bridge.errors import FrameError

# LiveKit's default signal_message_size_limit.
MAX_FRAME_BYTES: Final = 2 * 1024 * 1024

Frame = bytes | str
M = TypeVar("M", bound=Message)


def encode(message: Message, *, json_mode: bool = False) -> Frame:
    """Serialise ``message`` for the wire: bytes, or JSON text when ``json_mode``."""
    if json_mode:
        return json_format.MessageToJson(message, indent=None)
    return message.SerializeToString()


def decode(frame: Frame, into: type[M], *, max_bytes: int = MAX_FRAME_BYTES) -> M:
    """Parse one frame as ``into``; raise :class:`FrameError` saying what was wrong."""
    size = len(frame)
    if size > max_bytes:
        raise FrameError(f"frame of {size} bytes exceeds the {max_bytes}-byte limit")
    message = into()
    if isinstance(frame, str):
        try:
            json_format.Parse(frame, message, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise FrameError(f"text frame is not {into.__name__} JSON: {exc}") from None
        return message
    try:
        message.ParseFromString(frame)
    except DecodeError as exc:
        raise FrameError(f"binary frame is not a {into.__name__}: {exc}") from None
    return message


def decode_request(frame: Frame, *, max_bytes: int = MAX_FRAME_BYTES) -> rtc.SignalRequest:
    return decode(frame, rtc.SignalRequest, max_bytes=max_bytes)


def decode_response(frame: Frame, *, max_bytes: int = MAX_FRAME_BYTES) -> rtc.SignalResponse:
    return decode(frame, rtc.SignalResponse, max_bytes=max_bytes)
