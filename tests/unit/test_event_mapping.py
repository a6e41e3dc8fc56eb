"""LiveKit messages become typed CloudEvents: every variant mapped, credentials never leave, bytes kept."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format, wrappers_pb2
from hypothesis import given
from hypothesis import strategies as st
from livekit.protocol import models, rtc

from bridge.events import types
from bridge.events.cloudevent import SessionContext, source_uri
from bridge.events.jsonfmt import message_to_json
from bridge.events.mapping import (
    DATA_SUBJECTS,
    REDACT,
    REDACTED,
    SIGNAL_SUBJECTS,
    EventMapper,
    TypeFilter,
    oneof_payload,
    rfc3339,
)

SIGNAL_FIELDS = {f.name for f in rtc.SignalResponse.DESCRIPTOR.oneofs_by_name["message"].fields}
DATA_FIELDS = {f.name for f in models.DataPacket.DESCRIPTOR.oneofs_by_name["value"].fields}
CTX = SessionContext(source=source_uri("wss://lk.example.com", "room.1"), room="room.1", session="BS_1")
WALL = 1_795_614_520.123


def test_every_signal_and_data_variant_is_mapped_deliberately() -> None:
    # A new LiveKit variant fails here until someone decides its subject and whether it holds secrets.
    assert set(SIGNAL_SUBJECTS) == SIGNAL_FIELDS
    assert len(SIGNAL_FIELDS) == 30
    assert set(DATA_SUBJECTS) == DATA_FIELDS
    assert set(types.SIGNAL) == SIGNAL_FIELDS
    assert set(types.DATA) == DATA_FIELDS
    assert set(REDACT) <= SIGNAL_FIELDS


def test_type_names_and_schemas_follow_the_contract() -> None:
    speakers = types.SIGNAL["speakers_changed"]
    assert speakers.type == "io.livekit.signal.speakers_changed.v1"
    assert speakers.message == "livekit.SpeakersChanged"
    assert speakers.dataschema == "urn:livekit-bus-bridge:schema:livekit.SpeakersChanged"
    assert types.SIGNAL["pong"].message == "google.protobuf.Int64Value"
    assert types.DATA["chat_message"].type == "io.livekit.data.chat_message.v1"
    assert types.BRIDGE["room_snapshot"].type == "io.livekit.bridge.room_snapshot.v1"
    assert types.subject_token(types.DATA["user"]) == "data_user"


def test_protobuf_data_is_the_servers_bytes_and_sequence_is_gap_free() -> None:
    mapper = EventMapper(CTX)
    update = rtc.SignalResponse(
        update=rtc.ParticipantUpdate(participants=[models.ParticipantInfo(identity="a")])
    )
    frame = update.SerializeToString()
    first = mapper.signal(update, frame, wall=WALL)
    assert first is not None
    assert first.data == update.update.SerializeToString()
    assert first.subject == "a"
    pong = mapper.signal(rtc.SignalResponse(pong=42), None, wall=WALL)
    assert pong is not None
    assert wrappers_pb2.Int64Value.FromString(pong.data).value == 42
    assert [first.sequence, pong.sequence] == [1, 2]
    assert pong.id == "BS_1-00000000000000000002"
    assert first.attributes()["partitionkey"] == "room.1"


def test_filtered_types_do_not_consume_sequence_numbers() -> None:
    mapper = EventMapper(CTX, allow=TypeFilter(exclude=["io.livekit.signal.pong*"]))
    assert mapper.signal(rtc.SignalResponse(pong_resp=rtc.Pong(timestamp=1)), None, wall=WALL) is None
    event = mapper.signal(rtc.SignalResponse(room_update=rtc.RoomUpdate()), None, wall=WALL)
    assert event is not None
    assert event.sequence == 1


@pytest.mark.parametrize("data_format", ["protobuf", "json"])
def test_credentials_are_redacted_before_publishing(data_format: str) -> None:
    mapper = EventMapper(CTX, data_format=data_format)
    secrets = ["turn-user-x1", "turn-pass-x2", "eyJhbGciOi.secret.jwt", "turn-room-pw"]
    join = rtc.SignalResponse(
        join=rtc.JoinResponse(
            ice_servers=[
                rtc.ICEServer(urls=["turn:t.example.com"], username=secrets[0], credential=secrets[1])
            ],
            room=models.Room(name="room.1", turn_password=secrets[3]),
            participant=models.ParticipantInfo(identity="livekit-bridge"),
        )
    )
    moved = rtc.SignalResponse(
        room_moved=rtc.RoomMovedResponse(token=secrets[2], room=models.Room(name="r2"))
    )
    refresh = rtc.SignalResponse(refresh_token=secrets[2])
    reconnect = rtc.SignalResponse(
        reconnect=rtc.ReconnectResponse(
            ice_servers=[rtc.ICEServer(urls=["turn:t"], username=secrets[0], credential=secrets[1])]
        )
    )
    for response in (join, moved, refresh, reconnect):
        event = mapper.signal(response, response.SerializeToString(), wall=WALL)
        assert event is not None
        blob = event.data + json.dumps(event.attributes()).encode()
        for secret in secrets:
            assert secret.encode() not in blob
        assert REDACTED.encode() in event.data
    # The original message is untouched (the connector still needs the real token).
    assert moved.room_moved.token == secrets[2]


def test_data_packets_carry_their_sender_as_subject() -> None:
    mapper = EventMapper(CTX)
    packet = models.DataPacket(
        participant_identity="alice", user=models.UserPacket(payload=b"hi", topic="chat")
    )
    event = mapper.data(packet, wall=WALL)
    assert event is not None
    assert event.type == "io.livekit.data.user.v1"
    assert event.subject == "alice"
    assert models.UserPacket.FromString(event.data).payload == b"hi"


@pytest.mark.parametrize("name", ["subject", "lkroom", "data", "lkCommandId", "lk-command", "x" * 21, ""])
def test_bridge_events_refuse_an_extension_name_the_bindings_cannot_carry(name: str) -> None:
    # An attribute's name would go out twice (a second ce-subject header); others are not CloudEvents names.
    mapper = EventMapper(CTX)
    with pytest.raises(ValueError, match="invalid CloudEvent extension name"):
        mapper.bridge("command_result", wrappers_pb2.StringValue(), wall=WALL, extensions=((name, "v"),))
    event = mapper.bridge(
        "command_result", wrappers_pb2.StringValue(), wall=WALL, extensions=(("lkcommandid", "c1"),)
    )
    assert event is not None
    assert event.extensions == (("lkcommandid", "c1"),)


def test_oneof_payload_slices_or_declines() -> None:
    big = rtc.SignalResponse(
        update=rtc.ParticipantUpdate(participants=[models.ParticipantInfo(identity="x" * 300)])
    )
    frame = big.SerializeToString()
    assert oneof_payload(frame) == big.update.SerializeToString()
    assert oneof_payload(rtc.SignalResponse(pong=5).SerializeToString()) is None  # a varint, not bytes
    assert oneof_payload(frame + b"\x00") is None  # trailing bytes: fall back to re-encoding


def test_rfc3339_has_milliseconds_and_utc() -> None:
    assert rfc3339(WALL) == "2026-11-25T13:48:40.123Z"


SAMPLES = [
    rtc.ParticipantUpdate(
        participants=[
            models.ParticipantInfo(
                sid="PA_1",
                identity="a",
                state=models.ParticipantInfo.ACTIVE,
                joined_at=1795614520,
                version=7,
                attributes={"k": "v"},
                permission=models.ParticipantPermission(can_publish=True),
                tracks=[
                    models.TrackInfo(
                        sid="TR_1", type=models.VIDEO, width=640, height=360, mime_type="video/VP8"
                    )
                ],
            )
        ]
    ),
    rtc.SpeakersChanged(speakers=[models.SpeakerInfo(sid="PA_1", level=0.82, active=True)]),
    rtc.ConnectionQualityUpdate(
        updates=[rtc.ConnectionQualityInfo(participant_sid="P", quality=models.EXCELLENT, score=4.8)]
    ),
    models.UserPacket(payload=b"\x00\xffbytes", topic="t", destination_identities=["x"]),
    rtc.Pong(last_ping_timestamp=1795614520123, timestamp=-5),
    rtc.JoinResponse(room=models.Room(name="r", creation_time=1), ping_interval=5),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.DESCRIPTOR.name)
def test_fast_json_matches_protobufs_own_mapping(message: object) -> None:
    assert json.loads(message_to_json(message)) == json_format.MessageToDict(message)  # type: ignore[arg-type]


@given(
    level=st.floats(width=32, allow_nan=False, allow_infinity=False),
    ts=st.integers(-(2**63), 2**63 - 1),
    text=st.text(max_size=20),
)
def test_fast_json_matches_on_arbitrary_values(level: float, ts: int, text: str) -> None:
    message = rtc.SpeakersChanged(speakers=[models.SpeakerInfo(sid=text, level=level)])
    assert json.loads(message_to_json(message)) == json_format.MessageToDict(message)
    pong = rtc.Pong(timestamp=ts)
    assert json.loads(message_to_json(pong)) == json_format.MessageToDict(pong)
