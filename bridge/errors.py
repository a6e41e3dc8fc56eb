"""Every error the bridge raises, in one tree.

::

    BridgeError                         base; never raised directly
    ├─ ConfigError (+ValueError)        bad settings: names the key; exits at start-up
    ├─ SignalingError
    │  ├─ FrameError                    a frame that is not a valid message (too big, not protobuf/JSON)
    │  ├─ SignalProtocolError           the peer broke the signaling protocol
    │  ├─ InvalidState (+AssertionError) the core was driven in the wrong state: a bug
    │  ├─ JoinRejected                  LiveKit refused the join (token, permission, room)
    │  └─ SessionClosed                 the server ended the session (leave reason + action)
    ├─ SimulatorError                   the room simulator refused a request
    │  ├─ AuthError                     401: bad, expired or unauthorised token
    │  ├─ BadRequest                    400: missing or malformed parameters
    │  └─ NotFound                      404: unknown room / participant / track
    ├─ MappingError                     a LiveKit message we cannot map: counted and skipped
    ├─ CommandError
    │  ├─ InvalidCommand                fails validation: rejected / dead-lettered, never retried
    │  ├─ RoomNotOwned                  the command reached a replica that does not own the room
    │  └─ UnknownRoom
    ├─ BusError                         ``retriable`` says whether trying again can help
    │  ├─ BusUnavailable                retriable
    │  └─ PublishFailed                 retriable unless the broker rejected the record
    ├─ MediaError
    │  ├─ NegotiationFailed
    │  ├─ RecordingRefused              a record_track / stop_recording the bridge cannot do: ``code``
    │  └─ MediaRefused                  a forward / publish command the bridge cannot do: ``code``
    ├─ ServerApiError                   LiveKit's server API (Twirp) refused or failed a call: ``code``,
    │                                   ``retriable`` for unavailable / timeout / internal / 5xx
    ├─ WebhookRefused                   a POST that is not a LiveKit webhook signed with our key: ``reason``
    └─ OwnershipLost                    another replica owns the room: stop at once

Adapters translate foreign exceptions (websockets, aiokafka, nats, aiortc, livekit-api) into this tree with
``raise ... from exc``; nothing foreign crosses a package boundary. Messages never contain secrets.
"""

from __future__ import annotations

from typing import ClassVar


class BridgeError(Exception):
    """Base of every bridge error. ``retriable`` is the policy callers consult."""

    retriable: ClassVar[bool] = False


class ConfigError(BridgeError, ValueError):
    """A setting is missing or wrong; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class SignalingError(BridgeError):
    """Something went wrong on the LiveKit signaling channel."""


class FrameError(SignalingError):
    """A frame could not be decoded, or exceeded the size limit."""


class SignalProtocolError(SignalingError):
    """The peer sent something the protocol does not allow at this point."""


class InvalidState(SignalingError, AssertionError):
    """A sans-I/O core was driven in a state that does not allow the call (a bug in the caller)."""


class JoinRejected(SignalingError):
    """LiveKit refused the join: permanent until the named setting is fixed."""

    def __init__(self, message: str, *, status: int | None = None, setting: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.setting = setting


class SessionClosed(SignalingError):
    """The server ended the session with a ``leave``."""

    def __init__(self, reason: str, action: str) -> None:
        super().__init__(f"session closed by server: reason={reason} action={action}")
        self.reason = reason
        self.action = action


class SimulatorError(BridgeError):
    """The simulator refused a client or admin request; ``status`` is the HTTP status it answers."""

    status: ClassVar[int] = 500


class AuthError(SimulatorError):
    status: ClassVar[int] = 401


class BadRequest(SimulatorError):
    status: ClassVar[int] = 400


class NotFound(SimulatorError):
    status: ClassVar[int] = 404


class MappingError(BridgeError):
    """A LiveKit message could not be turned into an event."""


class CommandError(BridgeError):
    """A command could not be applied."""


class InvalidCommand(CommandError):
    """The command failed validation; ``code`` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RoomNotOwned(CommandError):
    """This replica does not own the room the command is for."""


class UnknownRoom(CommandError):
    """No session exists for the room the command is for."""


class BusError(BridgeError):
    """A broker operation failed."""


class BusUnavailable(BusError):
    retriable: ClassVar[bool] = True


class PublishFailed(BusError):
    retriable: ClassVar[bool] = True


class MediaError(BridgeError):
    """The WebRTC side failed."""


class NegotiationFailed(MediaError):
    """An SDP offer or answer could not be applied."""


class RecordingRefused(MediaError):
    """A recording command that cannot be carried out; ``code`` says why (``unsupported``, ``not_found``,
    ``invalid_path``, ``exists``, ``busy``, ``limit``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class MediaRefused(MediaError):
    """A forward_track / stop_forward / publish_track / unpublish_track that cannot be carried out;
    ``code`` says why (``unsupported``, ``not_allowed``, ``not_found``, ``invalid_path``, ``exists``,
    ``busy``, ``limit``, ``unavailable``, ``timeout``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ServerApiError(BridgeError):
    """A LiveKit server API call failed. ``code`` is the Twirp code the server answered (``not_found``,
    ``permission_denied``...) or what went wrong on our side: ``unavailable`` (no connection), ``timeout``,
    ``unsupported`` (the server has no such method)."""

    RETRIABLE_CODES: ClassVar[frozenset[str]] = frozenset(
        {"unavailable", "timeout", "internal", "deadline_exceeded", "resource_exhausted"}
    )

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"LiveKit server API: {code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        # The class default is not retriable; this instance is when the server may answer next time.
        self.retriable = code in self.RETRIABLE_CODES or (status or 0) >= 500  # type: ignore[misc]


class WebhookRefused(BridgeError):
    """A webhook failed verification (``status`` 401) or, signed, is not a webhook event (400). ``reason`` is
    one of a fixed set (a metric label); the message never quotes the token."""

    def __init__(self, reason: str, message: str, *, status: int = 401) -> None:
        super().__init__(f"webhook refused ({reason}): {message}")
        self.reason = reason
        self.status = status


class OwnershipLost(BridgeError):
    """Another replica owns the room now (e.g. LiveKit evicted us for a duplicate identity)."""
