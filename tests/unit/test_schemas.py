"""Generated JSON Schemas: valid, accept what the bridge really writes, reject the rest, never drift."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format, wrappers_pb2
from google.protobuf.message import Message
from jsonschema import Draft202012Validator
from livekit.protocol import models, rtc

from bridge import cli, schemas
from bridge._proto import events_pb2
from bridge.events import types
from bridge.events.jsonfmt import message_to_dict

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "schemas"
GENERATED = schemas.render()


def _schema(etype: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(GENERATED[f"events/{etype}.json"])
    return loaded


def _validator(etype: str) -> Draft202012Validator:
    return Draft202012Validator(_schema(etype))


def _participant(sid: str, identity: str) -> models.ParticipantInfo:
    return models.ParticipantInfo(
        sid=sid,
        identity=identity,
        name=identity.title(),
        state=models.ParticipantInfo.State.ACTIVE,
        metadata='{"role":"host"}',
        joined_at=1_718_000_000,
        joined_at_ms=1_718_000_000_123,
        version=7,
        is_publisher=True,
        attributes={"team": "blue", "lang": "en"},
        permission=models.ParticipantPermission(can_subscribe=True, can_publish=True),
        tracks=[
            models.TrackInfo(
                sid="TR_audio1",
                type=models.TrackType.AUDIO,
                name="mic",
                muted=False,
                source=models.TrackSource.MICROPHONE,
                mime_type="audio/opus",
                version=models.TimedVersion(unix_micro=1_718_000_000_123_456, ticks=3),
            ),
            models.TrackInfo(
                sid="TR_video1",
                type=models.TrackType.VIDEO,
                width=1280,
                height=720,
                simulcast=True,
                layers=[models.VideoLayer(quality=models.VideoQuality.HIGH, width=1280, height=720)],
            ),
        ],
    )


def _room() -> models.Room:
    return models.Room(
        sid="RM_abc",
        name="standup",
        metadata='{"topic":"q3"}',
        num_participants=2,
        num_publishers=1,
        creation_time=1_718_000_000,
        creation_time_ms=1_718_000_000_001,
        empty_timeout=300,
        active_recording=True,
    )


def _realistic() -> list[tuple[str, Message]]:
    alice = _participant("PA_alice", "alice")
    return [
        (
            "io.livekit.signal.join.v1",
            rtc.JoinResponse(
                room=_room(),
                participant=_participant("PA_bridge", "livekit-bridge"),
                other_participants=[alice],
                server_version="1.8.4",
                server_region="eu-west",
                ping_timeout=15,
                ping_interval=5,
                subscriber_primary=True,
                ice_servers=[rtc.ICEServer(urls=["turn:turn.example:3478"], username="[redacted]")],
                sif_trailer=b"\x01\x02trailer",
            ),
        ),
        ("io.livekit.signal.update.v1", rtc.ParticipantUpdate(participants=[alice])),
        (
            "io.livekit.signal.speakers_changed.v1",
            rtc.SpeakersChanged(
                speakers=[
                    models.SpeakerInfo(sid="PA_alice", level=0.73, active=True),
                    models.SpeakerInfo(sid="PA_bob", level=0.0, active=False),
                ]
            ),
        ),
        (
            "io.livekit.signal.connection_quality.v1",
            rtc.ConnectionQualityUpdate(
                updates=[
                    rtc.ConnectionQualityInfo(
                        participant_sid="PA_alice", quality=models.ConnectionQuality.EXCELLENT, score=4.6
                    ),
                    rtc.ConnectionQualityInfo(
                        participant_sid="PA_bob", quality=models.ConnectionQuality.LOST
                    ),
                ]
            ),
        ),
        ("io.livekit.signal.pong.v1", wrappers_pb2.Int64Value(value=1_718_000_000_123)),
        ("io.livekit.signal.pong_resp.v1", rtc.Pong(last_ping_timestamp=-5, timestamp=1_718_000_000_999)),
        ("io.livekit.signal.refresh_token.v1", wrappers_pb2.StringValue(value="[redacted]")),
        ("io.livekit.signal.room_update.v1", rtc.RoomUpdate(room=_room())),
        (
            "io.livekit.signal.leave.v1",
            rtc.LeaveRequest(
                can_reconnect=True,
                reason=models.DisconnectReason.SERVER_SHUTDOWN,
                action=rtc.LeaveRequest.Action.RECONNECT,
            ),
        ),
        (
            "io.livekit.signal.stream_state_update.v1",
            rtc.StreamStateUpdate(
                stream_states=[
                    rtc.StreamStateInfo(
                        participant_sid="PA_alice", track_sid="TR_video1", state=rtc.StreamState.PAUSED
                    )
                ]
            ),
        ),
        (
            "io.livekit.signal.subscription_response.v1",
            rtc.SubscriptionResponse(track_sid="TR_x", err=models.SubscriptionError.SE_TRACK_NOTFOUND),
        ),
        (
            "io.livekit.signal.track_unpublished.v1",
            rtc.TrackUnpublishedResponse(track_sid="TR_audio1"),
        ),
        (
            "io.livekit.signal.trickle.v1",
            rtc.TrickleRequest(candidateInit='{"candidate":"..."}', target=rtc.SignalTarget.SUBSCRIBER),
        ),
        (
            "io.livekit.data.user.v1",
            models.UserPacket(
                payload=b'{"hello":"world"}',
                topic="chat",
                destination_identities=["bob"],
                id="msg-1",
                start_time=1_718_000_000_000,
                end_time=18_446_744_073_709_551_615,
                nonce=b"\x00\xff",
            ),
        ),
        (
            "io.livekit.data.chat_message.v1",
            models.ChatMessage(
                id="chat-1", timestamp=1_718_000_000_000, edit_timestamp=1_718_000_000_500, message="hi"
            ),
        ),
        (
            "io.livekit.data.stream_header.v1",
            models.DataStream.Header(
                stream_id="st-1",
                topic="lk.chat",
                mime_type="text/plain",
                total_length=42,
                attributes={"k": "v"},
                text_header=models.DataStream.TextHeader(version=1),
            ),
        ),
        (
            "io.livekit.bridge.session_started.v1",
            events_pb2.SessionStarted(
                room="standup",
                room_sid="RM_abc",
                participant_sid="PA_bridge",
                identity="livekit-bridge",
                server_version="1.8.4",
                server_protocol=16,
                rejoin=True,
            ),
        ),
        (
            "io.livekit.bridge.session_resumed.v1",
            events_pb2.SessionResumed(room="standup", participant_sid="PA_bridge", resumes=2),
        ),
        (
            "io.livekit.bridge.session_ended.v1",
            events_pb2.SessionEnded(
                room="standup",
                reason="lease lost",
                ownership_lost=True,
                disconnect_reason=models.DisconnectReason.DUPLICATE_IDENTITY,
            ),
        ),
        (
            "io.livekit.bridge.room_snapshot.v1",
            events_pb2.RoomSnapshot(
                cause=events_pb2.RoomSnapshot.Cause.CAUSE_RESUME,
                room=_room(),
                participants=[alice],
                bridge_participant_sid="PA_bridge",
            ),
        ),
        (
            "io.livekit.bridge.gap.v1",
            events_pb2.Gap(bus="kafka", dropped=3, first_sequence=10, last_sequence=12, reason="outbox_full"),
        ),
        (
            "io.livekit.bridge.command_result.v1",
            events_pb2.CommandResult(
                command_id="cmd-1",
                command_type="io.livekit.command.bridge.send_data.v1",
                status=events_pb2.CommandResult.Status.STATUS_REJECTED,
                code="not_allowed",
                message="offer is plumbing",
                response=b"ok",
            ),
        ),
    ]


REALISTIC = _realistic()


def test_one_schema_per_event_type_and_an_index() -> None:
    assert sorted(GENERATED) == sorted(["index.json", *(f"events/{name}.json" for name in types.ALL)])
    index = json.loads(GENERATED["index.json"])["events"]
    assert set(index) == set(types.ALL)
    for name, etype in types.ALL.items():
        assert index[name] == {
            "file": f"events/{name}.json",
            "message": etype.message,
            "dataschema": etype.dataschema,
        }
        schema = _schema(name)
        assert schema["$id"] == etype.dataschema
        assert schema["title"] == etype.message
        assert schema["description"]


@pytest.mark.parametrize("etype", sorted(types.ALL))
def test_every_schema_is_valid_against_the_meta_schema(etype: str) -> None:
    Draft202012Validator.check_schema(_schema(etype))


def test_realistic_messages_cover_the_required_types() -> None:
    covered = {etype for etype, _ in REALISTIC}
    assert len([t for t in covered if ".signal." in t]) >= 10
    assert {f"io.livekit.bridge.{name}.v1" for name in types.BRIDGE} <= covered
    assert {"io.livekit.data.user.v1", "io.livekit.data.chat_message.v1"} <= covered


@pytest.mark.parametrize(("etype", "message"), REALISTIC, ids=[etype for etype, _ in REALISTIC])
def test_what_the_bridge_writes_validates(etype: str, message: Message) -> None:
    assert message.DESCRIPTOR.full_name == types.ALL[etype].message
    data = message_to_dict(message)
    assert data == json_format.MessageToDict(message)
    _validator(etype).validate(data)


def test_default_and_empty_messages_validate() -> None:
    for name, etype in types.ALL.items():
        if etype.message.startswith("google.protobuf."):
            continue
        _validator(name).validate({})


def test_special_floats_and_unknown_enum_numbers_validate() -> None:
    speakers = rtc.SpeakersChanged(speakers=[models.SpeakerInfo(sid="PA_a", level=math.inf)])
    _validator("io.livekit.signal.speakers_changed.v1").validate(message_to_dict(speakers))
    quality = rtc.ConnectionQualityInfo(participant_sid="PA_a")
    quality.quality = 99  # type: ignore[assignment]  # an enum value newer than our descriptors
    update = rtc.ConnectionQualityUpdate(updates=[quality])
    data = message_to_dict(update)
    assert data["updates"][0]["quality"] == 99
    _validator("io.livekit.signal.connection_quality.v1").validate(data)


@pytest.mark.parametrize(
    ("etype", "data"),
    [
        ("io.livekit.bridge.gap.v1", {"bus": "kafka", "unknownField": 1}),  # additionalProperties
        ("io.livekit.bridge.gap.v1", {"dropped": 3}),  # uint64 must be a string
        ("io.livekit.bridge.gap.v1", {"dropped": "-3"}),  # uint64 is not negative
        ("io.livekit.bridge.gap.v1", {"first_sequence": "1"}),  # proto name instead of json_name
        ("io.livekit.bridge.session_started.v1", {"rejoin": "yes"}),
        ("io.livekit.bridge.session_started.v1", {"serverProtocol": "16"}),  # uint32 is a number
        ("io.livekit.bridge.command_result.v1", {"status": "STATUS_BOGUS"}),
        ("io.livekit.bridge.room_snapshot.v1", {"participants": {"sid": "PA_a"}}),  # repeated -> array
        ("io.livekit.bridge.room_snapshot.v1", {"room": {"name": "r", "turnPass": "x"}}),  # nested
        ("io.livekit.signal.update.v1", {"participants": [{"attributes": {"k": 1}}]}),  # map values
        ("io.livekit.signal.speakers_changed.v1", {"speakers": [{"level": "loud"}]}),
        ("io.livekit.signal.pong.v1", 1_718_000_000_123),  # Int64Value is a string
        ("io.livekit.data.stream_header.v1", {"textHeader": {}, "byteHeader": {}}),  # oneof
    ],
)
def test_wrong_data_is_rejected(etype: str, data: object) -> None:
    assert not _validator(etype).is_valid(data)


def test_generation_is_deterministic_and_matches_the_committed_schemas(tmp_path: Path) -> None:
    assert schemas.render() == GENERATED
    for rel, data in GENERATED.items():
        assert data.endswith(b"\n")
        assert (COMMITTED / rel).read_bytes() == data, f"schemas/{rel} is stale: run `make schemas`"
    assert schemas.check(COMMITTED) == []
    written = schemas.write(tmp_path)
    assert {rel: (tmp_path / rel).read_bytes() for rel in written} == GENERATED


def test_cli_check_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schemas", "--out", str(tmp_path)]) == 0
    assert cli.main(["schemas", "--out", str(tmp_path), "--check"]) == 0
    target = tmp_path / "events" / "io.livekit.bridge.gap.v1.json"
    target.write_text(target.read_text().replace("Number of events dropped.", "edited"))
    (tmp_path / "events" / "io.livekit.signal.gone.v1.json").write_text("{}\n")
    assert cli.main(["schemas", "--out", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert "stale: events/io.livekit.signal.gone.v1.json" in err
    assert '-          "description": "edited"' in err or "edited" in err
    assert cli.main(["schemas", "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "events" / "io.livekit.signal.gone.v1.json").exists()
    assert cli.main(["schemas", "--out", str(tmp_path), "--check"]) == 0
