# mypy: disable-error-code="type-arg"
from livekit.protocol import models as _livekit_models_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SendData(_message.Message):
    __slots__ = ("payload", "topic", "destination_identities", "lossy")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    LOSSY_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    topic: str
    destination_identities: _containers.RepeatedScalarFieldContainer[str]
    lossy: bool
    def __init__(self, payload: _Optional[bytes] = ..., topic: _Optional[str] = ..., destination_identities: _Optional[_Iterable[str]] = ..., lossy: bool = ...) -> None: ...

class JoinRoom(_message.Message):
    __slots__ = ("room",)
    ROOM_FIELD_NUMBER: _ClassVar[int]
    room: str
    def __init__(self, room: _Optional[str] = ...) -> None: ...

class LeaveRoom(_message.Message):
    __slots__ = ("room",)
    ROOM_FIELD_NUMBER: _ClassVar[int]
    room: str
    def __init__(self, room: _Optional[str] = ...) -> None: ...

class MuteTrack(_message.Message):
    __slots__ = ("identity", "track_sid", "muted")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    TRACK_SID_FIELD_NUMBER: _ClassVar[int]
    MUTED_FIELD_NUMBER: _ClassVar[int]
    identity: str
    track_sid: str
    muted: bool
    def __init__(self, identity: _Optional[str] = ..., track_sid: _Optional[str] = ..., muted: bool = ...) -> None: ...

class RemoveParticipant(_message.Message):
    __slots__ = ("identity",)
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    identity: str
    def __init__(self, identity: _Optional[str] = ...) -> None: ...

class UpdateParticipant(_message.Message):
    __slots__ = ("identity", "metadata", "name", "attributes", "permission")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_FIELD_NUMBER: _ClassVar[int]
    identity: str
    metadata: str
    name: str
    attributes: _containers.ScalarMap[str, str]
    permission: _livekit_models_pb2.ParticipantPermission
    def __init__(self, identity: _Optional[str] = ..., metadata: _Optional[str] = ..., name: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., permission: _Optional[_Union[_livekit_models_pb2.ParticipantPermission, _Mapping]] = ...) -> None: ...

class UpdateRoomMetadata(_message.Message):
    __slots__ = ("metadata",)
    METADATA_FIELD_NUMBER: _ClassVar[int]
    metadata: str
    def __init__(self, metadata: _Optional[str] = ...) -> None: ...

class PerformRpc(_message.Message):
    __slots__ = ("destination_identity", "method", "payload", "response_timeout_ms")
    DESTINATION_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    destination_identity: str
    method: str
    payload: str
    response_timeout_ms: int
    def __init__(self, destination_identity: _Optional[str] = ..., method: _Optional[str] = ..., payload: _Optional[str] = ..., response_timeout_ms: _Optional[int] = ...) -> None: ...

class RecordTrack(_message.Message):
    __slots__ = ("track_sid", "path", "duration_s")
    TRACK_SID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    track_sid: str
    path: str
    duration_s: float
    def __init__(self, track_sid: _Optional[str] = ..., path: _Optional[str] = ..., duration_s: _Optional[float] = ...) -> None: ...

class StopRecording(_message.Message):
    __slots__ = ("track_sid",)
    TRACK_SID_FIELD_NUMBER: _ClassVar[int]
    track_sid: str
    def __init__(self, track_sid: _Optional[str] = ...) -> None: ...

class ForwardTrack(_message.Message):
    __slots__ = ("track_sid", "host", "port", "payload_type", "sdp_path")
    TRACK_SID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_TYPE_FIELD_NUMBER: _ClassVar[int]
    SDP_PATH_FIELD_NUMBER: _ClassVar[int]
    track_sid: str
    host: str
    port: int
    payload_type: int
    sdp_path: str
    def __init__(self, track_sid: _Optional[str] = ..., host: _Optional[str] = ..., port: _Optional[int] = ..., payload_type: _Optional[int] = ..., sdp_path: _Optional[str] = ...) -> None: ...

class StopForward(_message.Message):
    __slots__ = ("track_sid",)
    TRACK_SID_FIELD_NUMBER: _ClassVar[int]
    track_sid: str
    def __init__(self, track_sid: _Optional[str] = ...) -> None: ...

class PublishTrack(_message.Message):
    __slots__ = ("path", "name", "loop", "source", "kind", "url")
    PATH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOOP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    path: str
    name: str
    loop: bool
    source: _livekit_models_pb2.TrackSource
    kind: str
    url: str
    def __init__(self, path: _Optional[str] = ..., name: _Optional[str] = ..., loop: bool = ..., source: _Optional[_Union[_livekit_models_pb2.TrackSource, str]] = ..., kind: _Optional[str] = ..., url: _Optional[str] = ...) -> None: ...

class UnpublishTrack(_message.Message):
    __slots__ = ("track_sid",)
    TRACK_SID_FIELD_NUMBER: _ClassVar[int]
    track_sid: str
    def __init__(self, track_sid: _Optional[str] = ...) -> None: ...
