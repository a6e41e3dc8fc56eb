"""The bridge's own protobuf messages: they round-trip, embed LiveKit's real types, and match protos/."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message import Message
from livekit.protocol import models

from bridge._proto import commands_pb2, events_pb2

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "scripts" / "gen_proto.py"
COMMITTED = ROOT / "bridge" / "_proto"
GENERATED_FILES = ("__init__.py", "commands_pb2.py", "commands_pb2.pyi", "events_pb2.py", "events_pb2.pyi")


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_proto", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _room() -> models.Room:
    return models.Room(sid="RM_abc", name="standup", metadata='{"topic":"q3"}', num_participants=2)


def _alice() -> models.ParticipantInfo:
    return models.ParticipantInfo(
        sid="PA_alice",
        identity="alice",
        name="Alice",
        state=models.ParticipantInfo.State.ACTIVE,
        tracks=[models.TrackInfo(sid="TR_mic", type=models.TrackType.AUDIO, muted=True)],
        permission=models.ParticipantPermission(can_publish=True, can_subscribe=True),
        attributes={"role": "host"},
    )


MESSAGES: list[Message] = [
    events_pb2.SessionStarted(
        room="standup",
        room_sid="RM_abc",
        participant_sid="PA_bridge",
        identity="livekit-bridge",
        server_version="1.9.0",
        server_region="eu",
        server_protocol=16,
        rejoin=True,
    ),
    events_pb2.SessionResumed(room="standup", participant_sid="PA_bridge", resumes=3),
    events_pb2.SessionEnded(
        room="standup",
        reason="evicted by a second join",
        ownership_lost=True,
        disconnect_reason=models.DisconnectReason.DUPLICATE_IDENTITY,
    ),
    events_pb2.RoomSnapshot(
        cause=events_pb2.RoomSnapshot.CAUSE_RESUME,
        room=_room(),
        participants=[_alice()],
        bridge_participant_sid="PA_bridge",
    ),
    events_pb2.Gap(bus="kafka", dropped=3, first_sequence=41, last_sequence=43, reason="outbox_full"),
    events_pb2.CommandResult(
        command_id="c-1",
        command_type="io.livekit.command.bridge.perform_rpc.v1",
        status=events_pb2.CommandResult.STATUS_APPLIED,
        response=b"pong",
    ),
    commands_pb2.SendData(payload=b"\x00hi", topic="chat", destination_identities=["alice"], lossy=True),
    commands_pb2.JoinRoom(room="standup"),
    commands_pb2.LeaveRoom(room="standup"),
    commands_pb2.MuteTrack(identity="alice", track_sid="TR_mic", muted=True),
    commands_pb2.RemoveParticipant(identity="mallory"),
    commands_pb2.UpdateParticipant(
        identity="alice",
        metadata="m",
        name="Alice B.",
        attributes={"role": "guest", "old": ""},
        permission=models.ParticipantPermission(can_publish_data=True),
    ),
    commands_pb2.UpdateRoomMetadata(metadata='{"topic":"q4"}'),
    commands_pb2.PerformRpc(
        destination_identity="agent", method="ping", payload="{}", response_timeout_ms=5000
    ),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda message: type(message).__name__)
def test_every_message_round_trips(message: Message) -> None:
    data = message.SerializeToString()
    assert data  # every example sets at least one field
    parsed = type(message).FromString(data)
    assert parsed == message
    assert json_format.ParseDict(json_format.MessageToDict(message), type(message)()) == message


def test_room_snapshot_embeds_livekit_protocol_types() -> None:
    snapshot = events_pb2.RoomSnapshot(
        cause=events_pb2.RoomSnapshot.CAUSE_JOIN, room=_room(), participants=[_alice()]
    )
    parsed = events_pb2.RoomSnapshot.FromString(snapshot.SerializeToString())
    assert isinstance(parsed.room, models.Room)
    assert isinstance(parsed.participants[0], models.ParticipantInfo)
    assert parsed.room.name == "standup"
    assert parsed.participants[0].tracks[0].sid == "TR_mic"
    assert parsed.participants[0].permission.can_publish
    # The embedded message is byte-for-byte LiveKit's own encoding: a consumer can parse it with
    # livekit-protocol alone.
    assert models.Room.FromString(parsed.room.SerializeToString()) == _room()


def test_generated_files_link_to_the_file_livekit_protocol_registers() -> None:
    dependencies = [file.name for file in events_pb2.DESCRIPTOR.dependencies]
    assert dependencies == [models.DESCRIPTOR.name] == ["livekit_models.proto"]
    assert [file.name for file in commands_pb2.DESCRIPTOR.dependencies] == [models.DESCRIPTOR.name]
    room_field = events_pb2.RoomSnapshot.DESCRIPTOR.fields_by_name["room"]
    room_type = room_field.message_type
    assert room_type is not None
    assert room_type.full_name == models.Room.DESCRIPTOR.full_name
    assert room_type.file.name == models.DESCRIPTOR.name
    pool = descriptor_pool.Default()
    assert pool.FindMessageTypeByName("livekit.bridge.v1.RoomSnapshot").file.name == (
        "livekit/bridge/v1/events.proto"
    )
    assert events_pb2.RoomSnapshot.__module__ == "bridge._proto.events_pb2"


def test_command_result_json_uses_enum_names() -> None:
    result = events_pb2.CommandResult(
        command_id="c-7",
        command_type="io.livekit.command.bridge.mute_track.v1",
        status=events_pb2.CommandResult.STATUS_REJECTED,
        code="not_allowed",
        message="mute_track is not in the allowed command set",
    )
    as_dict = json_format.MessageToDict(result)
    assert as_dict == {
        "commandId": "c-7",
        "commandType": "io.livekit.command.bridge.mute_track.v1",
        "status": "STATUS_REJECTED",
        "code": "not_allowed",
        "message": "mute_track is not in the allowed command set",
    }
    ended = events_pb2.SessionEnded(disconnect_reason=models.DisconnectReason.ROOM_DELETED)
    assert json_format.MessageToDict(ended) == {"disconnectReason": "ROOM_DELETED"}


def _status_name(result: events_pb2.CommandResult) -> str:
    """A typed use of the generated module: mypy --strict checks it against events_pb2.pyi."""
    status: events_pb2.CommandResult.Status = result.status
    return events_pb2.CommandResult.Status.Name(status)


def test_generated_stubs_give_typed_access() -> None:
    snapshot: events_pb2.RoomSnapshot = events_pb2.RoomSnapshot(room=_room())
    room: models.Room = snapshot.room
    failed = events_pb2.CommandResult(status=events_pb2.CommandResult.STATUS_FAILED)
    assert room.sid == "RM_abc"
    assert _status_name(failed) == "STATUS_FAILED"


def test_enums_follow_buf_lint_conventions() -> None:
    enums = [events_pb2.RoomSnapshot.DESCRIPTOR.enum_types_by_name["Cause"]]
    enums.append(events_pb2.CommandResult.DESCRIPTOR.enum_types_by_name["Status"])
    for enum in enums:
        prefix = enum.name.upper() + "_"
        assert enum.values[0].number == 0
        assert enum.values[0].name == prefix + "UNSPECIFIED"
        assert all(value.name.startswith(prefix) for value in enum.values)
    for module in (events_pb2, commands_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            assert [field.number for field in message.fields] == list(range(1, len(message.fields) + 1))


def _generate(out: Path) -> dict[str, bytes]:
    completed = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(out)], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr
    return {path.name: path.read_bytes() for path in sorted(out.iterdir())}


def test_regeneration_is_deterministic_and_matches_the_committed_code(tmp_path: Path) -> None:
    first = _generate(tmp_path / "first")
    second = _generate(tmp_path / "second")
    assert sorted(first) == sorted(GENERATED_FILES)
    assert first == second
    committed = {name: (COMMITTED / name).read_bytes() for name in GENERATED_FILES}
    stale = sorted(name for name in first if first[name] != committed[name])
    assert not stale, f"bridge/_proto is out of date with protos/ (run `make proto`): {stale}"


def test_committed_gencode_imports_on_the_oldest_allowed_protobuf() -> None:
    floor = gen.protobuf_floor((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for name in ("events_pb2.py", "commands_pb2.py"):
        gencode = gen.gencode_version((COMMITTED / name).read_text(encoding="utf-8"))
        assert gencode <= floor
        assert gencode.major == floor.major


def test_gencode_guard_refuses_code_the_runtime_or_the_floor_would_reject() -> None:
    version = gen.Version
    gen.check_gencode(version(6, 30, 0), runtime=version(7, 36, 2), floor=version(6, 30, 0))
    with pytest.raises(
        gen.GenerationError, match=r"gencode 6\.31\.0, newer than the installed protobuf runtime"
    ):
        gen.check_gencode(version(6, 31, 0), runtime=version(6, 30, 2), floor=version(6, 30, 0))
    with pytest.raises(gen.GenerationError, match=r"allows protobuf>=6\.30\.0"):
        gen.check_gencode(version(7, 35, 1), runtime=version(7, 36, 2), floor=version(6, 30, 0))
    with pytest.raises(gen.GenerationError, match=r"allows protobuf>=6\.30\.0"):
        gen.check_gencode(version(5, 29, 0), runtime=version(6, 33, 6), floor=version(6, 30, 0))
    assert gen.protobuf_floor('[project]\ndependencies = ["x>=1", "protobuf>=6.30,<8"]\n') == version(
        6, 30, 0
    )
