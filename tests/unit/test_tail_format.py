"""The ``tail`` line formatter, JSON output and type globs, on events built the way the bridge builds them."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

from google.protobuf import json_format, wrappers_pb2
from google.protobuf.message import Message
from livekit.protocol import models, rtc

from bridge.bus.bindings import event_from_kafka, event_from_nats, kafka_record, nats_structured
from bridge.events import types
from bridge.events.cloudevent import JSON, PROTOBUF, CloudEvent, EventType, SessionContext
from bridge.tail import TypeMatcher, compact, event_json, format_line

CTX = SessionContext(source="livekit://lk.test/rooms/demo", room="demo", session="S1", room_sid="RM_1")
TIME = "2025-01-02T14:02:03.123Z"


def event(
    etype: EventType, message: Message, *, seq: int = 12, subject: str | None = None, as_json: bool = False
) -> CloudEvent:
    data = (
        json_format.MessageToJson(message, indent=None).encode() if as_json else message.SerializeToString()
    )
    return CloudEvent(
        CTX,
        etype,
        seq,
        TIME,
        data,
        datacontenttype=JSON if as_json else PROTOBUF,
        subject=subject,
    )


def via_kafka(ev: CloudEvent) -> dict[str, Any]:
    key, value, headers = kafka_record(ev)
    return event_from_kafka(key, value, headers)


def via_nats(ev: CloudEvent) -> dict[str, Any]:
    return event_from_nats(
        "livekit.events.demo.x", nats_structured(ev), {"Content-Type": "application/cloudevents+json"}
    )


SPEAKERS = rtc.SpeakersChanged(speakers=[models.SpeakerInfo(sid="PA_x", level=0.82, active=True)])


def test_one_line_shows_time_room_sequence_type_subject_and_decoded_data() -> None:
    ev = event(types.SIGNAL["speakers_changed"], SPEAKERS, subject="alice")
    expected = (
        "14:02:03.123 demo  #00000000000000000012 signal.speakers_changed     subject=alice  "
        "{speakers: [{sid: PA_x, level: 0.82, active: true}]}"
    )
    assert format_line(via_kafka(ev), tz=UTC) == expected
    assert format_line(via_nats(ev), tz=UTC) == expected  # base64 data in structured JSON, same line


def test_json_data_and_the_protobuf_decoding_give_the_same_line() -> None:
    binary = event(types.SIGNAL["speakers_changed"], SPEAKERS)
    as_json = event(types.SIGNAL["speakers_changed"], SPEAKERS, as_json=True)
    assert format_line(via_nats(as_json), tz=UTC) == format_line(via_kafka(binary), tz=UTC)
    assert format_line(via_kafka(as_json), tz=UTC) == format_line(via_kafka(binary), tz=UTC)


def test_long_lines_are_cut_to_the_width_and_stay_one_line() -> None:
    chat = models.ChatMessage(id="CM_1", message="line one\nline two " + "x" * 300)
    line = format_line(via_kafka(event(types.DATA["chat_message"], chat, subject="bob")), width=120, tz=UTC)
    assert len(line) == 120
    assert line.endswith("…")
    assert "\n" not in line
    assert 'message: "line one\\nline t' in line  # escaped, never a real line break


def test_text_bytes_are_readable_in_the_line_but_base64_in_json() -> None:
    user = models.UserPacket(payload=b'{"cpu": 0.4}', topic="telemetry")
    ev = via_kafka(event(types.DATA["user"], user, subject="bob"))
    assert format_line(ev, tz=UTC).endswith('subject=bob  {payload: "{\\"cpu\\": 0.4}", topic: telemetry}')
    assert event_json(ev)["data"] == {"payload": "eyJjcHUiOiAwLjR9", "topic": "telemetry"}
    binary = models.UserPacket(payload=b"\x00\xff", topic="t")
    assert "payload: AP8=" in format_line(via_kafka(event(types.DATA["user"], binary)), tz=UTC)


def test_json_output_has_every_attribute_and_the_protobuf_json_mapping() -> None:
    ev = event(types.SIGNAL["speakers_changed"], SPEAKERS, subject="alice")
    out = event_json(via_kafka(ev))
    for name, value in ev.attributes().items():
        assert out[name] == value
    assert out["data"] == json_format.MessageToDict(SPEAKERS)
    json.dumps(out)  # serialisable as is
    from_nats = event_json(via_nats(ev))
    assert from_nats["data"] == out["data"]
    assert "data_base64" not in from_nats


def test_wrapped_scalars_unknown_types_and_bridge_events() -> None:
    pong = event(types.SIGNAL["pong"], wrappers_pb2.Int64Value(value=42))
    assert format_line(via_kafka(pong), tz=UTC).endswith("signal.pong                 42")
    unknown = {"type": "com.example.other", "time": TIME, "lkroom": "r", "sequence": "1", "data": b"\x01\x02"}
    assert event_json(unknown)["data"] == {"data_base64": "AQI="}
    started = CloudEvent(CTX, types.BRIDGE["session_started"], 2, TIME, b"")
    assert "bridge.session_started" in format_line(via_kafka(started), tz=UTC)


def test_credentials_are_masked_even_if_a_producer_left_them_in() -> None:
    join = rtc.JoinResponse(ice_servers=[rtc.ICEServer(urls=["turn:x"], username="u", credential="hunter2")])
    ev = via_kafka(event(types.SIGNAL["join"], join))
    assert "hunter2" not in format_line(ev, tz=UTC)
    assert "hunter2" not in json.dumps(event_json(ev))
    assert event_json(ev)["data"]["iceServers"][0]["credential"] == "REDACTED"


def test_compact_rendering() -> None:
    assert compact({"a": [1, 2.5, True, None], "b": "two words", "c": "PA_x"}) == (
        '{a: [1, 2.5, true, null], b: "two words", c: PA_x}'
    )
    assert compact(0.8199999928474426) == "0.82"
    assert compact("true") == '"true"'  # a string that would read as a boolean stays quoted
    assert compact("") == '""'


def test_type_globs_accept_full_and_short_forms() -> None:
    speakers = "io.livekit.signal.speakers_changed.v1"
    chat = "io.livekit.data.chat_message.v1"
    update = "io.livekit.signal.update.v1"
    assert TypeMatcher(())(speakers)
    assert TypeMatcher(("speakers_changed",))(speakers)
    assert not TypeMatcher(("speakers_changed",))(update)
    assert TypeMatcher(("signal.update",))(update)
    assert not TypeMatcher(("signal.update",))(speakers)
    assert TypeMatcher(("data.*",))(chat)
    assert not TypeMatcher(("data.*",))(speakers)
    assert TypeMatcher(("io.livekit.signal.*",))(speakers)
    assert TypeMatcher(("*speakers*",))(speakers)
    assert TypeMatcher(("update", "chat_message"))(chat)
    assert not TypeMatcher(("date",))(update)
