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

class TextStream(_message.Message):
    __slots__ = ("stream_id", "topic", "text", "participant_identity", "timestamp", "attributes", "mime_type", "operation_type", "reply_to_stream_id", "attached_stream_ids", "generated", "chunks", "truncated", "reason")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_STREAM_IDS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    topic: str
    text: str
    participant_identity: str
    timestamp: int
    attributes: _containers.ScalarMap[str, str]
    mime_type: str
    operation_type: _livekit_models_pb2.DataStream.OperationType
    reply_to_stream_id: str
    attached_stream_ids: _containers.RepeatedScalarFieldContainer[str]
    generated: bool
    chunks: int
    truncated: bool
    reason: str
    def __init__(self, stream_id: _Optional[str] = ..., topic: _Optional[str] = ..., text: _Optional[str] = ..., participant_identity: _Optional[str] = ..., timestamp: _Optional[int] = ..., attributes: _Optional[_Mapping[str, str]] = ..., mime_type: _Optional[str] = ..., operation_type: _Optional[_Union[_livekit_models_pb2.DataStream.OperationType, str]] = ..., reply_to_stream_id: _Optional[str] = ..., attached_stream_ids: _Optional[_Iterable[str]] = ..., generated: bool = ..., chunks: _Optional[int] = ..., truncated: bool = ..., reason: _Optional[str] = ...) -> None: ...

class RecordingFinished(_message.Message):
    __slots__ = ("track_sid", "path", "codec", "frames", "bytes", "duration_s", "dropped", "reason")
    TRACK_SID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    track_sid: str
    path: str
    codec: str
    frames: int
    bytes: int
    duration_s: float
    dropped: int
    reason: str
    def __init__(self, track_sid: _Optional[str] = ..., path: _Optional[str] = ..., codec: _Optional[str] = ..., frames: _Optional[int] = ..., bytes: _Optional[int] = ..., duration_s: _Optional[float] = ..., dropped: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ForwardFinished(_message.Message):
    __slots__ = ("track_sid", "codec", "host", "address", "port", "payload_type", "frames", "packets", "bytes", "dropped", "skipped", "duration_s", "reason")
    TRACK_SID_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_TYPE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    track_sid: str
    codec: str
    host: str
    address: str
    port: int
    payload_type: int
    frames: int
    packets: int
    bytes: int
    dropped: int
    skipped: int
    duration_s: float
    reason: str
    def __init__(self, track_sid: _Optional[str] = ..., codec: _Optional[str] = ..., host: _Optional[str] = ..., address: _Optional[str] = ..., port: _Optional[int] = ..., payload_type: _Optional[int] = ..., frames: _Optional[int] = ..., packets: _Optional[int] = ..., bytes: _Optional[int] = ..., dropped: _Optional[int] = ..., skipped: _Optional[int] = ..., duration_s: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class PublishFinished(_message.Message):
    __slots__ = ("track_sid", "kind", "source", "mime_type", "passthrough", "frames", "duration_s", "reason")
    TRACK_SID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    PASSTHROUGH_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    track_sid: str
    kind: str
    source: str
    mime_type: str
    passthrough: bool
    frames: int
    duration_s: float
    reason: str
    def __init__(self, track_sid: _Optional[str] = ..., kind: _Optional[str] = ..., source: _Optional[str] = ..., mime_type: _Optional[str] = ..., passthrough: bool = ..., frames: _Optional[int] = ..., duration_s: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class OwnershipChanged(_message.Message):
    __slots__ = ("room", "acquired", "mode", "replica", "fencing_token", "reason")
    ROOM_FIELD_NUMBER: _ClassVar[int]
    ACQUIRED_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    room: str
    acquired: bool
    mode: str
    replica: str
    fencing_token: int
    reason: str
    def __init__(self, room: _Optional[str] = ..., acquired: bool = ..., mode: _Optional[str] = ..., replica: _Optional[str] = ..., fencing_token: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...
