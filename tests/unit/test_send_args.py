"""``livekit-bridge send``: friendly arguments become the right command data, and mistakes are named."""

from __future__ import annotations

import pytest
from livekit.protocol import rtc

from bridge._proto import commands_pb2
from bridge.send import SendError, build_message, command_type


def test_names_resolve_to_full_types() -> None:
    assert command_type("mute") == "io.livekit.command.mute.v1"
    assert command_type("send_data") == "io.livekit.command.bridge.send_data.v1"
    assert command_type("bridge.leave_room") == "io.livekit.command.bridge.leave_room.v1"
    assert command_type("io.livekit.command.subscription.v1") == "io.livekit.command.subscription.v1"
    with pytest.raises(SendError, match="unknown command 'mutes'"):
        command_type("mutes")


def test_field_pairs_nest_parse_json_and_take_text_for_bytes() -> None:
    msg = build_message(
        command_type("send_data"),
        ["payload=hello there", "topic=chat", 'destination_identities=["bob"]', "lossy=true"],
        None,
    )
    assert msg == commands_pb2.SendData(
        payload=b"hello there", topic="chat", destination_identities=["bob"], lossy=True
    )
    upd = build_message(command_type("update_metadata"), ["metadata=42", "attributes.role=host"], None)
    assert upd == rtc.UpdateParticipantMetadata(metadata="42", attributes={"role": "host"})


def test_data_json_and_pairs_combine() -> None:
    msg = build_message(command_type("mute"), ["muted=true"], '{"sid": "TR_1"}')
    assert msg == rtc.MuteTrackRequest(sid="TR_1", muted=True)


@pytest.mark.parametrize(
    ("fields", "data", "problem"),
    [
        (["nosign"], None, "expected FIELD=VALUE"),
        (["colour=red"], None, "data for io.livekit.command.mute.v1"),
        ([], "[1]", "must be a JSON object"),
        ([], "{oops", "not JSON"),
    ],
)
def test_mistakes_are_named(fields: list[str], data: str | None, problem: str) -> None:
    with pytest.raises(SendError, match=problem):
        build_message(command_type("mute"), fields, data)
