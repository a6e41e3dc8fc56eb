"""Commands: the type registry, validation (every failure a coded InvalidCommand), translation, correlation.

Messages for the round trips are filled field by field from their descriptors, so a variant LiveKit adds
is exercised without editing this file.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livekit.protocol import rtc

from bridge._proto import commands_pb2
from bridge.bus.bindings import room_token
from bridge.commands.model import (
    BRIDGE_COMMANDS,
    COMMANDS,
    DEFAULT_ALLOWED,
    NEVER_FROM_BUS,
    NEVER_TYPES,
    SIGNAL_COMMANDS,
    Command,
    allowed_types,
    bridge_type,
    signal_type,
)
from bridge.commands.translate import correlate, request_key, response_key, to_signal_request
from bridge.commands.validate import CODES, CommandRejected, RawCommand, validate
from bridge.errors import InvalidCommand

PB = "application/x-protobuf"
JSON = "application/json"
MAX = 64 * 1024
ROOM = "stand.up é"


# --- helpers ---------------------------------------------------------------------------------------------


def _scalar(field: Any) -> Any:  # Any: the stubs type descriptors as a python/upb union
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return f"v-{field.name}"
    if t == FieldDescriptor.TYPE_BYTES:
        return b"\x00\xffx"
    if t == FieldDescriptor.TYPE_BOOL:
        return True
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return 1.5
    if t == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return field.enum_type.values[-1].number
    return 7


def fill(msg: Message, depth: int = 0) -> Message:
    """Set every field (one element for repeated/map fields) down to a few levels of nesting."""
    desc = msg.DESCRIPTOR
    for field in desc.fields:
        if field.containing_oneof is not None and msg.WhichOneof(field.containing_oneof.name):
            continue  # one member per oneof
        entry = field.message_type if _is_map(field) else None
        if entry is not None:
            value_field = entry.fields_by_name["value"]
            mapping = getattr(msg, field.name)
            key = _scalar(entry.fields_by_name["key"])
            if value_field.message_type is not None:
                if depth < 3:
                    fill(mapping[key], depth + 1)
            else:
                mapping[key] = _scalar(value_field)
        elif field.message_type is not None:
            if depth >= 3:
                continue
            if field.is_repeated:
                fill(getattr(msg, field.name).add(), depth + 1)
            else:
                sub = getattr(msg, field.name)
                fill(sub, depth + 1)
                sub.SetInParent()
        elif field.is_repeated:
            getattr(msg, field.name).append(_scalar(field))
        else:
            setattr(msg, field.name, _scalar(field))
    return msg


def _is_map(field: Any) -> bool:
    return field.message_type is not None and bool(field.message_type.GetOptions().map_entry)


def raw(
    ctype: str,
    data: bytes = b"",
    *,
    content_type: str | None = PB,
    room: str | None = ROOM,
    transport_room: str | None = ROOM,
    **extra: Any,
) -> RawCommand:
    attrs: dict[str, Any] = {"specversion": "1.0", "id": "cmd-1", "source": "urn:test", "type": ctype}
    if room is not None:
        attrs["lkroom"] = room
    if content_type is not None:
        attrs["datacontenttype"] = content_type
    attrs.update(extra)
    return RawCommand(attrs, data, transport_room=transport_room)


def check(r: RawCommand, allowed: frozenset[str] = DEFAULT_ALLOWED) -> Command:
    return validate(r, allowed=allowed, max_bytes=MAX)


def code_of(r: RawCommand, allowed: frozenset[str] = DEFAULT_ALLOWED) -> str:
    with pytest.raises(InvalidCommand) as info:
        check(r, allowed)
    return info.value.code


# --- registry ---------------------------------------------------------------------------------------------


def test_registry_covers_every_signal_request_variant() -> None:
    fields = rtc.SignalRequest.DESCRIPTOR.oneofs_by_name["message"].fields
    assert len(fields) == 22
    for f in fields:
        t = signal_type(f.name)
        assert t in SIGNAL_COMMANDS or f.name in NEVER_FROM_BUS, f"{f.name} is neither mapped nor refused"
        if f.message_type is None:
            assert f.name in NEVER_FROM_BUS  # scalars (legacy ping) have no message to carry
        else:
            assert SIGNAL_COMMANDS[t].message_class.DESCRIPTOR is f.message_type
        assert (t in DEFAULT_ALLOWED) == (f.name not in NEVER_FROM_BUS)
    assert {f.name for f in fields} >= NEVER_FROM_BUS


def test_bridge_commands_and_default_allowed() -> None:
    names = {c.name for c in BRIDGE_COMMANDS.values()}
    assert names == {
        "send_data",
        "join_room",
        "leave_room",
        "mute_track",
        "remove_participant",
        "update_participant",
        "update_room_metadata",
        "perform_rpc",
        "record_track",
        "stop_recording",
        "forward_track",
        "stop_forward",
        "publish_track",
        "unpublish_track",
    }
    assert all(t in DEFAULT_ALLOWED for t in BRIDGE_COMMANDS)
    assert len(DEFAULT_ALLOWED) == 22 - len(NEVER_FROM_BUS) + 14
    assert bridge_type("send_data") == "io.livekit.command.bridge.send_data.v1"


def test_allowed_types_setting() -> None:
    assert allowed_types(["mute", "bridge.send_data", "io.livekit.command.add_track.v1"]) == {
        signal_type("mute"),
        bridge_type("send_data"),
        signal_type("add_track"),
    }
    with pytest.raises(ValueError, match="plumbing"):
        allowed_types(["offer"])
    with pytest.raises(ValueError, match="not a known"):
        allowed_types(["mutee"])


# --- round trips ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ctype", sorted(DEFAULT_ALLOWED))
@pytest.mark.parametrize("fmt", ["protobuf", "json", "structured"])
def test_every_allowed_type_round_trips(ctype: str, fmt: str) -> None:
    spec = COMMANDS[ctype]
    msg = fill(spec.message_class())
    if spec.name in ("join_room", "leave_room"):
        msg.room = ROOM  # type: ignore[attr-defined]
    if fmt == "protobuf":
        r = raw(ctype, msg.SerializeToString(), content_type="application/protobuf")
    elif fmt == "json":
        r = raw(
            ctype, json_format.MessageToJson(msg).encode(), content_type="application/json; charset=utf-8"
        )
    else:  # structured JSON event: data is a JSON object, as event_from_nats leaves it
        doc = json_format.MessageToDict(msg)
        r = raw(ctype, json.dumps(doc).encode(), content_type=None, data_json=doc)
    cmd = check(r)
    assert (cmd.type, cmd.name, cmd.kind, cmd.room, cmd.id) == (ctype, spec.name, spec.kind, ROOM, "cmd-1")
    assert cmd.message == msg
    if spec.kind == "signal":
        req = to_signal_request(cmd, itertools.count(1))
        assert req.WhichOneof("message") == spec.name
        sent = getattr(req, spec.name)
        if spec.name in ("update_metadata", "store_data_blob_request", "get_data_blob_request"):
            assert sent.request_id == 7  # filled non-zero: kept
        assert rtc.SignalRequest.FromString(req.SerializeToString()) == req
        assert sent == msg
    else:
        with pytest.raises(ValueError, match="bridge-level"):
            to_signal_request(cmd, itertools.count(1))


def test_from_kafka_and_from_nats() -> None:
    data = rtc.MuteTrackRequest(sid="TR_1", muted=True).SerializeToString()
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"k1"),
        ("ce_source", b"urn:x"),
        ("ce_type", signal_type("mute").encode()),
        ("ce_lkroom", ROOM.encode()),
        ("ce_traceparent", b"00-aa-bb-01"),
        ("content-type", PB.encode()),
    ]
    cmd = check(RawCommand.from_kafka(ROOM.encode(), data, headers))
    assert (cmd.received_via, cmd.traceparent, cmd.message) == (
        "kafka",
        "00-aa-bb-01",
        rtc.MuteTrackRequest(sid="TR_1", muted=True),
    )
    assert code_of(RawCommand.from_kafka(b"other", data, headers)) == "room_mismatch"
    with pytest.raises(InvalidCommand) as info:
        RawCommand.from_kafka(b"\xff", data, headers)
    assert info.value.code == "bad_envelope"

    subject = f"livekit.commands.{room_token(ROOM)}"
    payload = json.dumps(
        {
            "specversion": "1.0",
            "id": "n1",
            "source": "urn:x",
            "type": bridge_type("send_data"),
            "lkroom": ROOM,
            "datacontenttype": JSON,
            "data": {"payload": base64.b64encode(b"hi").decode(), "topic": "chat"},
        }
    ).encode()
    cmd = check(RawCommand.from_nats(subject, payload, None, prefix="livekit"))
    assert cmd.received_via == "nats"
    assert cmd.message == commands_pb2.SendData(payload=b"hi", topic="chat")
    with pytest.raises(InvalidCommand) as info:
        RawCommand.from_nats("livekit.commands.a%2", payload, None, prefix="livekit")
    assert info.value.code == "room_mismatch"
    with pytest.raises(InvalidCommand) as info:
        RawCommand.from_nats(subject, b"{not json", None, prefix="livekit")
    assert info.value.code == "bad_envelope"


def test_kafka_header_not_utf8() -> None:
    with pytest.raises(InvalidCommand) as info:
        RawCommand.from_kafka(b"r", b"", [("ce_id", b"\xff")])
    assert info.value.code == "bad_envelope"


# --- invalid cases ----------------------------------------------------------------------------------------

MUTE = signal_type("mute")
MUTE_PB = rtc.MuteTrackRequest(sid="TR_1").SerializeToString()


@pytest.mark.parametrize(
    ("r", "code"),
    [
        (raw(MUTE, b"x" * (MAX + 1)), "too_large"),
        (RawCommand({"specversion": "1.0"}, b"", wire_size=MAX + 1), "too_large"),
        (raw(MUTE, MUTE_PB, specversion="0.3"), "bad_envelope"),
        (raw(MUTE, MUTE_PB, id=""), "bad_envelope"),
        (raw(MUTE, MUTE_PB, id=5), "bad_envelope"),
        (raw(MUTE, MUTE_PB, source=None), "bad_envelope"),
        (raw("", MUTE_PB), "bad_envelope"),
        (raw(MUTE, MUTE_PB, traceparent=1), "bad_envelope"),
        (raw("io.livekit.command.mutee.v1", MUTE_PB), "unknown_type"),
        (raw("io.livekit.signal.mute.v1", MUTE_PB), "unknown_type"),
        (raw(MUTE, MUTE_PB, room=None), "room_missing"),
        (raw(MUTE, MUTE_PB, room=""), "room_missing"),
        (raw(MUTE, MUTE_PB, transport_room="other"), "room_mismatch"),
        (raw(bridge_type("join_room"), commands_pb2.JoinRoom(room="x").SerializeToString()), "room_mismatch"),
        (raw(MUTE, b"\xff\xff\xff"), "bad_data"),
        (raw(MUTE, rtc.AddTrackRequest(cid="c", name="n").SerializeToString()), "bad_data"),  # wrong message
        (raw(MUTE, b'{"sid": "TR_1"', content_type=JSON), "bad_data"),
        (raw(MUTE, b'{"sidd": "TR_1"}', content_type=JSON), "bad_data"),  # typo caught
        (raw(MUTE, b'["TR_1"]', content_type=JSON), "bad_data"),
        (raw(MUTE, b'{"muted": "yes"}', content_type=JSON), "bad_data"),
        (raw(MUTE, b"\xff{}", content_type=JSON), "bad_data"),
        (raw(MUTE, b"", content_type=None, data_json=["x"]), "bad_data"),
        (raw(MUTE, b"", data_json={"sid": "x"}), "bad_data"),  # JSON data but protobuf content type
        (raw(MUTE, MUTE_PB, content_type="text/plain"), "bad_content_type"),
        (raw(MUTE, MUTE_PB, content_type=None), "bad_content_type"),
    ],
)
def test_invalid_cases(r: RawCommand, code: str) -> None:
    assert code_of(r) == code


@pytest.mark.parametrize("field", sorted(NEVER_FROM_BUS))
def test_plumbing_is_rejected_not_dead_lettered(field: str) -> None:
    ctype = signal_type(field)
    spec = COMMANDS.get(ctype)
    data = spec.message_class().SerializeToString() if spec else b""
    everything = DEFAULT_ALLOWED | NEVER_TYPES  # even a setting that lists them cannot allow them
    with pytest.raises(CommandRejected) as info:
        check(raw(ctype, data), everything)
    assert (info.value.code, info.value.command_id, info.value.room) == ("not_allowed", "cmd-1", ROOM)


def test_not_in_allowed_set_is_rejected() -> None:
    with pytest.raises(CommandRejected) as info:
        check(raw(MUTE, MUTE_PB), frozenset({bridge_type("send_data")}))
    assert info.value.command_type == MUTE
    assert "allowed set" in str(info.value)
    # malformed data is a dead letter even for a type that is not allowed
    assert not isinstance(_raises(raw(MUTE, b"\xff"), frozenset()), CommandRejected)


def _raises(r: RawCommand, allowed: frozenset[str]) -> InvalidCommand:
    with pytest.raises(InvalidCommand) as info:
        check(r, allowed)
    return info.value


# --- fuzz -------------------------------------------------------------------------------------------------

_types = st.sampled_from([*COMMANDS, *NEVER_TYPES, "io.livekit.command.nope.v1", "", "x"])
_text = st.text(max_size=20)
_attr_value = st.one_of(_text, st.integers(), st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
_content = st.one_of(
    st.sampled_from([PB, JSON, "application/protobuf", "text/plain", "application/json; charset=x", ""]),
    st.sampled_from([PB, JSON]),
    st.none(),
)
_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _text),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=10,
)


def _mostly(valid: Any, other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the valid value, so that the fuzz gets past the envelope to the later checks."""
    return st.integers(0, 5).flatmap(lambda i: other if i == 0 else st.just(valid))


@st.composite
def raw_commands(draw: st.DrawFn) -> RawCommand:
    attrs: dict[str, Any] = {
        "specversion": draw(_mostly("1.0", st.sampled_from(["0.3", "", 1]))),
        "id": draw(_mostly("id", _attr_value)),
        "source": draw(_mostly("urn:s", _attr_value)),
        "type": draw(_types),
    }
    room = draw(_mostly(ROOM, st.one_of(st.just("other"), _attr_value)))
    if room is not None:
        attrs["lkroom"] = room
    ct = draw(_content)
    if ct is not None:
        attrs["datacontenttype"] = ct
    extras = st.dictionaries(st.sampled_from(["traceparent", "data_json", "extra"]), _attr_value)
    attrs.update(draw(_mostly({}, extras)))
    kind = draw(st.sampled_from(["bytes", "message", "message", "json", "json_message", "wrong_message"]))
    spec = COMMANDS.get(attrs["type"]) if isinstance(attrs["type"], str) else None
    other = draw(st.sampled_from(list(COMMANDS.values())))
    if kind == "message" and spec is not None:
        data = fill(spec.message_class()).SerializeToString()
    elif kind == "wrong_message":
        data = fill(other.message_class()).SerializeToString()
    elif kind in ("json", "json_message"):
        msg = fill((spec or other).message_class())
        doc = json_format.MessageToDict(msg) if kind == "json_message" else draw(_json_values)
        data = json.dumps(doc).encode()
        if draw(st.booleans()):
            attrs["data_json"] = doc
    else:
        data = draw(st.binary(max_size=200))
    return RawCommand(
        attrs,
        data,
        transport_room=draw(st.sampled_from([None, ROOM, ROOM, "other"])),
        wire_size=draw(_mostly(None, st.sampled_from([10, 2000]))),
    )


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(raw_commands())
def test_fuzz_only_coded_invalid_command(r: RawCommand) -> None:
    outcome = _outcome(lambda: validate(r, allowed=DEFAULT_ALLOWED, max_bytes=1000))
    if isinstance(outcome, InvalidCommand):
        assert outcome.code in CODES
        assert (outcome.code == "not_allowed") == isinstance(outcome, CommandRejected)
        return
    assert outcome.type in DEFAULT_ALLOWED
    if outcome.kind == "signal":
        to_signal_request(outcome, itertools.count())


def _outcome(run: Callable[[], Command]) -> Command | InvalidCommand:
    """The command, or the InvalidCommand raised; anything else propagates and fails the test."""
    try:
        return run()
    except InvalidCommand as exc:
        return exc


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.dictionaries(st.text(max_size=10), st.binary(max_size=20), max_size=5))
def test_fuzz_transport_constructors(payload: bytes, headers: dict[str, bytes]) -> None:
    def kafka() -> Command:
        r = RawCommand.from_kafka(b"r", payload, list(headers.items()))
        return validate(r, allowed=DEFAULT_ALLOWED, max_bytes=1000)

    def nats() -> Command:
        text_headers = {k: v.decode("latin-1") for k, v in headers.items()}
        r = RawCommand.from_nats("p.commands.r", payload, text_headers, prefix="p")
        return validate(r, allowed=DEFAULT_ALLOWED, max_bytes=1000)

    for run in (kafka, nats):
        outcome = _outcome(run)
        assert not isinstance(outcome, InvalidCommand) or outcome.code in CODES


# --- translation and correlation --------------------------------------------------------------------------


def _cmd(name: str, msg: Message) -> Command:
    return check(raw(signal_type(name), msg.SerializeToString()))


def test_update_metadata_gets_request_id_without_touching_the_command() -> None:
    cmd = _cmd("update_metadata", rtc.UpdateParticipantMetadata(metadata="m"))
    ids = itertools.count(0)  # 0 is "not set": skipped
    req = to_signal_request(cmd, ids)
    assert req.update_metadata.request_id == 1
    assert cmd.message == rtc.UpdateParticipantMetadata(metadata="m")
    assert to_signal_request(cmd, ids).update_metadata.request_id == 2
    assert to_signal_request(cmd, iter([2**32, 2**32 + 5])).update_metadata.request_id == 5  # uint32 wrap
    given_id = _cmd("update_metadata", rtc.UpdateParticipantMetadata(metadata="m", request_id=9))
    assert to_signal_request(given_id, ids).update_metadata.request_id == 9


RR = rtc.RequestResponse


@pytest.mark.parametrize(
    ("request_", "match", "other"),
    [
        (
            rtc.SignalRequest(update_metadata=rtc.UpdateParticipantMetadata(request_id=4)),
            RR(request_id=4, reason=RR.NOT_ALLOWED),
            RR(request_id=5),
        ),
        (
            rtc.SignalRequest(add_track=rtc.AddTrackRequest(cid="c1")),
            RR(reason=RR.QUEUED, add_track=rtc.AddTrackRequest(cid="c1")),
            RR(add_track=rtc.AddTrackRequest(cid="c2")),
        ),
        (
            rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid="TR_1")),
            RR(reason=RR.NOT_FOUND, mute=rtc.MuteTrackRequest(sid="TR_1", muted=True)),
            RR(add_track=rtc.AddTrackRequest(cid="TR_1")),  # same value, other request kind
        ),
        (
            rtc.SignalRequest(update_audio_track=rtc.UpdateLocalAudioTrack(track_sid="TR_a")),
            RR(update_audio_track=rtc.UpdateLocalAudioTrack(track_sid="TR_a")),
            RR(update_video_track=rtc.UpdateLocalVideoTrack(track_sid="TR_a")),
        ),
        (
            rtc.SignalRequest(update_video_track=rtc.UpdateLocalVideoTrack(track_sid="TR_v")),
            RR(update_video_track=rtc.UpdateLocalVideoTrack(track_sid="TR_v")),
            RR(update_video_track=rtc.UpdateLocalVideoTrack(track_sid="TR_w")),
        ),
        (
            rtc.SignalRequest(publish_data_track_request=rtc.PublishDataTrackRequest(pub_handle=3)),
            RR(reason=RR.DUPLICATE_HANDLE, publish_data_track=rtc.PublishDataTrackRequest(pub_handle=3)),
            RR(unpublish_data_track=rtc.UnpublishDataTrackRequest(pub_handle=3)),
        ),
        (
            rtc.SignalRequest(unpublish_data_track_request=rtc.UnpublishDataTrackRequest(pub_handle=3)),
            RR(unpublish_data_track=rtc.UnpublishDataTrackRequest(pub_handle=3)),
            RR(unpublish_data_track=rtc.UnpublishDataTrackRequest(pub_handle=4)),
        ),
        (
            rtc.SignalRequest(get_data_blob_request=rtc.GetDataBlobRequest(request_id=8)),
            RR(request_id=8, reason=RR.NOT_FOUND),
            RR(request_id=4),
        ),
    ],
)
def test_correlate(
    request_: rtc.SignalRequest, match: rtc.RequestResponse, other: rtc.RequestResponse
) -> None:
    assert correlate(request_, match)
    assert not correlate(request_, other)
    assert request_key(request_) == response_key(match)


def test_no_key_no_correlation() -> None:
    assert request_key(rtc.SignalRequest(subscription=rtc.UpdateSubscription())) is None
    assert request_key(rtc.SignalRequest(update_metadata=rtc.UpdateParticipantMetadata())) is None
    assert request_key(rtc.SignalRequest()) is None
    assert response_key(RR()) is None
    assert response_key(RR(trickle=rtc.TrickleRequest())) is None
    assert not correlate(rtc.SignalRequest(subscription=rtc.UpdateSubscription()), RR())
