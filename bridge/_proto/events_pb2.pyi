# mypy: disable-error-code="type-arg"
from livekit.protocol import models as _livekit_models_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionStarted(_message.Message):
    __slots__ = ("room", "room_sid", "participant_sid", "identity", "server_version", "server_region", "server_protocol", "rejoin")
    ROOM_FIELD_NUMBER: _ClassVar[int]
    ROOM_SID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_SID_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_REGION_FIELD_NUMBER: _ClassVar[int]
    SERVER_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    REJOIN_FIELD_NUMBER: _ClassVar[int]
    room: str
    room_sid: str
    participant_sid: str
    identity: str
    server_version: str
    server_region: str
    server_protocol: int
    rejoin: bool
    def __init__(self, room: _Optional[str] = ..., room_sid: _Optional[str] = ..., participant_sid: _Optional[str] = ..., identity: _Optional[str] = ..., server_version: _Optional[str] = ..., server_region: _Optional[str] = ..., server_protocol: _Optional[int] = ..., rejoin: bool = ...) -> None: ...

class SessionResumed(_message.Message):
    __slots__ = ("room", "participant_sid", "resumes")
    ROOM_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_SID_FIELD_NUMBER: _ClassVar[int]
    RESUMES_FIELD_NUMBER: _ClassVar[int]
    room: str
    participant_sid: str
    resumes: int
    def __init__(self, room: _Optional[str] = ..., participant_sid: _Optional[str] = ..., resumes: _Optional[int] = ...) -> None: ...

class SessionEnded(_message.Message):
    __slots__ = ("room", "reason", "ownership_lost", "disconnect_reason")
    ROOM_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OWNERSHIP_LOST_FIELD_NUMBER: _ClassVar[int]
    DISCONNECT_REASON_FIELD_NUMBER: _ClassVar[int]
    room: str
    reason: str
    ownership_lost: bool
    disconnect_reason: _livekit_models_pb2.DisconnectReason
    def __init__(self, room: _Optional[str] = ..., reason: _Optional[str] = ..., ownership_lost: bool = ..., disconnect_reason: _Optional[_Union[_livekit_models_pb2.DisconnectReason, str]] = ...) -> None: ...

class RoomSnapshot(_message.Message):
    __slots__ = ("cause", "room", "participants", "bridge_participant_sid")
    class Cause(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CAUSE_UNSPECIFIED: _ClassVar[RoomSnapshot.Cause]
        CAUSE_JOIN: _ClassVar[RoomSnapshot.Cause]
        CAUSE_REJOIN: _ClassVar[RoomSnapshot.Cause]
        CAUSE_RESUME: _ClassVar[RoomSnapshot.Cause]
        CAUSE_MOVE: _ClassVar[RoomSnapshot.Cause]
    CAUSE_UNSPECIFIED: RoomSnapshot.Cause
    CAUSE_JOIN: RoomSnapshot.Cause
    CAUSE_REJOIN: RoomSnapshot.Cause
    CAUSE_RESUME: RoomSnapshot.Cause
    CAUSE_MOVE: RoomSnapshot.Cause
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    ROOM_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_PARTICIPANT_SID_FIELD_NUMBER: _ClassVar[int]
    cause: RoomSnapshot.Cause
    room: _livekit_models_pb2.Room
    participants: _containers.RepeatedCompositeFieldContainer[_livekit_models_pb2.ParticipantInfo]
    bridge_participant_sid: str
    def __init__(self, cause: _Optional[_Union[RoomSnapshot.Cause, str]] = ..., room: _Optional[_Union[_livekit_models_pb2.Room, _Mapping]] = ..., participants: _Optional[_Iterable[_Union[_livekit_models_pb2.ParticipantInfo, _Mapping]]] = ..., bridge_participant_sid: _Optional[str] = ...) -> None: ...

class Gap(_message.Message):
    __slots__ = ("bus", "dropped", "first_sequence", "last_sequence", "reason")
    BUS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    bus: str
    dropped: int
    first_sequence: int
    last_sequence: int
    reason: str
    def __init__(self, bus: _Optional[str] = ..., dropped: _Optional[int] = ..., first_sequence: _Optional[int] = ..., last_sequence: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("command_id", "command_type", "status", "code", "message", "response")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[CommandResult.Status]
        STATUS_APPLIED: _ClassVar[CommandResult.Status]
        STATUS_REJECTED: _ClassVar[CommandResult.Status]
        STATUS_FAILED: _ClassVar[CommandResult.Status]
    STATUS_UNSPECIFIED: CommandResult.Status
    STATUS_APPLIED: CommandResult.Status
    STATUS_REJECTED: CommandResult.Status
    STATUS_FAILED: CommandResult.Status
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    command_type: str
    status: CommandResult.Status
    code: str
    message: str
    response: bytes
    def __init__(self, command_id: _Optional[str] = ..., command_type: _Optional[str] = ..., status: _Optional[_Union[CommandResult.Status, str]] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., response: _Optional[bytes] = ...) -> None: ...
