"""Turn a signal command into the ``SignalRequest`` for the room's session, and match LiveKit's answers.

Pure. LiveKit answers some requests with a ``request_response`` (research/livekit-signaling.md §8):

- requests that carry a ``request_id`` (``update_metadata``, the data-blob requests) are matched by it;
  the bridge assigns one from a counter when the command left it 0 (0 means "not set" to LiveKit);
- the others have no id, so the response echoes a copy of the request and is matched on its identifying
  field: ``add_track.cid``, ``mute.sid``, ``update_audio_track``/``update_video_track``.``track_sid``,
  ``publish_data_track``/``unpublish_data_track``.``pub_handle``.

A correlation key is ``(namespace, value)``; a request and a response correlate when their keys are equal.
Requests without a key get no ``request_response`` to wait for (the caller uses a timeout or its own
observation of the room).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Final

from livekit.protocol import rtc

from bridge.commands.model import Command

CorrelationKey = tuple[str, str | int]

_REQUEST_ID: Final = "request_id"
_UINT32: Final = 0xFFFFFFFF

# SignalRequest oneof fields whose message carries a request_id LiveKit echoes in request_response.
REQUEST_ID_FIELDS: Final[frozenset[str]] = frozenset(
    {"update_metadata", "store_data_blob_request", "get_data_blob_request"}
)

# SignalRequest oneof field -> (RequestResponse.request oneof field, identifying field of the message).
# The two oneofs name the data-track requests differently, hence the explicit table.
ECHO_FIELDS: Final[Mapping[str, tuple[str, str]]] = {
    "add_track": ("add_track", "cid"),
    "mute": ("mute", "sid"),
    "update_audio_track": ("update_audio_track", "track_sid"),
    "update_video_track": ("update_video_track", "track_sid"),
    "publish_data_track_request": ("publish_data_track", "pub_handle"),
    "unpublish_data_track_request": ("unpublish_data_track", "pub_handle"),
}
_ECHO_BY_RESPONSE: Final[Mapping[str, str]] = {resp: ident for resp, ident in ECHO_FIELDS.values()}


def to_signal_request(cmd: Command, request_ids: Iterator[int]) -> rtc.SignalRequest:
    """The ``SignalRequest`` for a signal command; ``cmd.message`` is copied, never modified.

    A request with a ``request_id`` field left at 0 gets the next non-zero uint32 from ``request_ids``
    (e.g. a per-session ``itertools.count(1)``). Raises ValueError for a bridge-level command.
    """
    if cmd.kind != "signal":
        raise ValueError(f"{cmd.type} is a bridge-level command, not a SignalRequest")
    request = rtc.SignalRequest()
    inner = getattr(request, cmd.name)
    inner.CopyFrom(cmd.message)
    if cmd.name in REQUEST_ID_FIELDS and inner.request_id == 0:
        rid = 0
        while rid == 0:  # 0 means "not set" to LiveKit; skip it when the counter wraps or starts there
            rid = next(request_ids) & _UINT32
        inner.request_id = rid
    return request


def request_key(request: rtc.SignalRequest) -> CorrelationKey | None:
    """The key a ``request_response`` to ``request`` will carry, or None when LiveKit gives none."""
    which = request.WhichOneof("message")
    if which is None:
        return None
    if which in REQUEST_ID_FIELDS:
        rid: int = getattr(request, which).request_id
        return (_REQUEST_ID, rid) if rid else None
    echo = ECHO_FIELDS.get(which)
    if echo is None:
        return None
    response_field, ident = echo
    value: str | int = getattr(getattr(request, which), ident)
    return (response_field, value)


def response_key(response: rtc.RequestResponse) -> CorrelationKey | None:
    """The key of a ``request_response``: its ``request_id`` when set, else the echoed request's field."""
    if response.request_id:
        return (_REQUEST_ID, response.request_id)
    which = response.WhichOneof("request")
    ident = _ECHO_BY_RESPONSE.get(which) if which is not None else None
    if which is None or ident is None:
        return None
    value: str | int = getattr(getattr(response, which), ident)
    return (which, value)


def correlate(request: rtc.SignalRequest, response: rtc.RequestResponse) -> bool:
    """Whether ``response`` answers ``request``."""
    key = request_key(request)
    return key is not None and key == response_key(response)
