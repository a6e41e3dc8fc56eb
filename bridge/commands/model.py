"""What a command is once validated, and the registry of every command type the bridge knows.

Two kinds of command type exist (DESIGN.md §3 "Commands"):

- ``io.livekit.command.<SignalRequest oneof field>.v1`` (kind ``signal``): the data is that oneof's
  message and the bridge forwards it on the room's signaling session as a ``SignalRequest``;
- ``io.livekit.command.bridge.<name>.v1`` (kind ``bridge``): actions a participant cannot take over
  signaling, carried out through LiveKit's server API (``bridge/_proto/commands_pb2``).

The signal registry is derived from the ``SignalRequest`` descriptor, so a LiveKit upgrade that adds a
variant adds a known type automatically; whether it is *allowed* stays an explicit decision
(:data:`NEVER_FROM_BUS` vs :data:`DEFAULT_ALLOWED`), and ``tests/unit/test_commands.py`` fails if a
variant is neither mapped nor deliberately refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from google.protobuf.message import Message
from livekit.protocol import rtc

from bridge._proto import commands_pb2

Kind = Literal["signal", "bridge"]
MessageClass = type[Message]  # an alias: inside CommandType, ``type`` names the field

TYPE_PREFIX: Final = "io.livekit.command."
TYPE_SUFFIX: Final = ".v1"

# Transport plumbing and test-only requests: letting a bus client send these would let it break the
# bridge's own WebRTC session (offer/answer/trickle/sync_state), fake liveness (ping*), make the bridge
# leave behind the session manager's back (leave) or trigger server test hooks (simulate).
NEVER_FROM_BUS: Final[frozenset[str]] = frozenset(
    {"offer", "answer", "trickle", "ping", "ping_req", "sync_state", "simulate", "leave"}
)

# Bridge-level commands: snake_case name -> message class. Order is documentation order.
BRIDGE_MESSAGES: Final[Mapping[str, type[Message]]] = MappingProxyType(
    {
        "send_data": commands_pb2.SendData,
        "join_room": commands_pb2.JoinRoom,
        "leave_room": commands_pb2.LeaveRoom,
        "mute_track": commands_pb2.MuteTrack,
        "remove_participant": commands_pb2.RemoveParticipant,
        "update_participant": commands_pb2.UpdateParticipant,
        "update_room_metadata": commands_pb2.UpdateRoomMetadata,
        "perform_rpc": commands_pb2.PerformRpc,
        "record_track": commands_pb2.RecordTrack,
        "stop_recording": commands_pb2.StopRecording,
        "forward_track": commands_pb2.ForwardTrack,
        "stop_forward": commands_pb2.StopForward,
        "publish_track": commands_pb2.PublishTrack,
        "unpublish_track": commands_pb2.UnpublishTrack,
    }
)


@dataclass(frozen=True, slots=True)
class CommandType:
    """One known command type: its CloudEvent ``type``, name, kind and the message its data must be."""

    type: str  # e.g. io.livekit.command.mute.v1
    name: str  # the SignalRequest oneof field, or the bridge command name
    kind: Kind
    message_class: MessageClass


@dataclass(frozen=True, slots=True)
class Command:
    """A validated command. ``message`` is the decoded protobuf; treat it as read-only (it is shared)."""

    id: str
    type: str
    name: str
    kind: Kind
    room: str
    message: Message
    source: str
    received_via: str  # "kafka", "nats", "cli", ...
    traceparent: str | None = None


def signal_type(field: str) -> str:
    """``io.livekit.command.<field>.v1``."""
    return f"{TYPE_PREFIX}{field}{TYPE_SUFFIX}"


def bridge_type(name: str) -> str:
    """``io.livekit.command.bridge.<name>.v1``."""
    return f"{TYPE_PREFIX}bridge.{name}{TYPE_SUFFIX}"


def _message_class(name: str) -> type[Message]:
    cls: type[Message] = getattr(rtc, name)
    return cls


def _signal_registry() -> dict[str, CommandType]:
    out: dict[str, CommandType] = {}
    for field in rtc.SignalRequest.DESCRIPTOR.oneofs_by_name["message"].fields:
        if field.message_type is None:
            continue  # a scalar (legacy ping) has no message to carry; it is in NEVER_FROM_BUS
        t = signal_type(field.name)
        out[t] = CommandType(t, field.name, "signal", _message_class(field.message_type.name))
    return out


SIGNAL_COMMANDS: Final[Mapping[str, CommandType]] = MappingProxyType(_signal_registry())
BRIDGE_COMMANDS: Final[Mapping[str, CommandType]] = MappingProxyType(
    {bridge_type(n): CommandType(bridge_type(n), n, "bridge", cls) for n, cls in BRIDGE_MESSAGES.items()}
)
COMMANDS: Final[Mapping[str, CommandType]] = MappingProxyType({**SIGNAL_COMMANDS, **BRIDGE_COMMANDS})

# Types that are refused whatever the allowed-set setting says (ping included though it has no entry).
NEVER_TYPES: Final[frozenset[str]] = frozenset(signal_type(f) for f in NEVER_FROM_BUS)

DEFAULT_ALLOWED: Final[frozenset[str]] = frozenset(t for t in COMMANDS if t not in NEVER_TYPES)


def allowed_types(names: Iterable[str]) -> frozenset[str]:
    """Turn a setting into full types: accepts ``mute``, ``bridge.send_data`` or the full type.

    Raises ValueError naming the first entry that is not a known, allowable command.
    """
    out: set[str] = set()
    for name in names:
        t = name if name.startswith(TYPE_PREFIX) else f"{TYPE_PREFIX}{name}{TYPE_SUFFIX}"
        if t in NEVER_TYPES:
            raise ValueError(f"{name!r} is transport plumbing and can never be sent from the bus")
        if t not in COMMANDS:
            raise ValueError(f"{name!r} is not a known command type")
        out.add(t)
    return frozenset(out)
