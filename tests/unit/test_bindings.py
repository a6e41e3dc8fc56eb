"""The wire bindings: Kafka binary records, NATS subjects, structured JSON and binary headers.

Every encoding is checked against an independent reader: the ``cloudevents`` SDK for Kafka and structured
JSON, ``json.loads`` plus the JSON-format rules, and the percent-decoding rules of the NATS binding.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import time

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from hypothesis import given
from hypothesis import strategies as st

from bridge.bus import bindings
from bridge.bus.bindings import (
    event_from_kafka,
    event_from_nats,
    kafka_record,
    nats_binary_block,
    nats_binary_headers,
    nats_structured,
    nats_subject,
    percent_decode,
    percent_encode,
    room_token,
)
from bridge.bus.nats_wire import header_block
from bridge.events.cloudevent import JSON, PROTOBUF
from support.events import TYPES, context, make_event, mixed_events

REQUIRED_KAFKA = {
    "ce_specversion",
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_time",
    "ce_dataschema",
    "ce_lkroom",
    "ce_lksession",
    "ce_sequence",
    "ce_partitionkey",
    "content-type",
}
NATS_TOKEN = re.compile(r"[^\s.*>]+")


# -- Kafka ---------------------------------------------------------------------------------------------


def test_kafka_record_has_every_header_and_the_data_untouched() -> None:
    event = make_event(context("eu.west room"), 7, subject="alice", traceparent="00-ab-cd-01")
    key, value, headers = kafka_record(event)
    names = [name for name, _ in headers]
    assert len(names) == len(set(names)), "no header twice"
    assert REQUIRED_KAFKA | {"ce_subject", "ce_traceparent", "ce_lkroomsid"} == set(names)
    assert key == b"eu.west room"
    assert value is event.data
    h = dict(headers)
    assert h["ce_id"] == b"%s-00000000000000000007" % event.ctx.session.encode()
    assert h["ce_sequence"] == b"00000000000000000007"
    assert h["content-type"] == PROTOBUF.encode()
    assert h["ce_partitionkey"] == h["ce_lkroom"] == b"eu.west room"


def test_kafka_optional_headers_are_absent_when_unset() -> None:
    event = make_event(context("r", room_sid=""), 1, subject=None, traceparent=None)
    names = {name for name, _ in kafka_record(event)[2]}
    assert names == REQUIRED_KAFKA


@pytest.mark.parametrize("event", mixed_events(3), ids=lambda e: f"{e.ctx.room[:12]}-{e.sequence}")
def test_kafka_record_parses_with_the_cloudevents_sdk(event: object) -> None:
    from bridge.events.cloudevent import CloudEvent

    assert isinstance(event, CloudEvent)
    key, value, headers = kafka_record(event)
    parsed = ce_kafka.from_binary(
        ce_kafka.KafkaMessage(headers=dict(headers), key=key, value=value), JSONFormat()
    )
    attrs = parsed.get_attributes()
    expected = event.attributes()
    assert attrs.pop("time").isoformat().replace("+00:00", "Z") == expected.pop("time")
    assert attrs == expected
    data = parsed.get_data()
    if event.datacontenttype == JSON:
        assert data == json.loads(event.data)
    else:
        assert data == event.data
    assert event_from_kafka(key, value, headers) == {**event.attributes(), "data": event.data}


# -- NATS subject ---------------------------------------------------------------------------------------


def test_room_token_examples() -> None:
    assert room_token("standup") == "standup"
    assert room_token("eu.west") == "eu%2Ewest"
    assert room_token("a b") == "a%20b"
    assert room_token("é") == "%C3%A9"
    assert room_token("*>") == "%2A%3E"
    assert room_token("50%") == "50%25"
    with pytest.raises(ValueError, match="empty"):
        room_token("")


@given(st.text(min_size=1, max_size=80))
def test_any_room_name_is_one_valid_token_that_decodes_back(room: str) -> None:
    try:
        room.encode()
    except UnicodeEncodeError:
        return  # lone surrogates are not valid CloudEvents strings (spec: type system)
    token = room_token(room)
    assert NATS_TOKEN.fullmatch(token)
    assert re.fullmatch(r"(?:[A-Za-z0-9_-]|%[0-9A-F]{2})+", token)
    assert percent_decode(token) == room


def test_subject_layout() -> None:
    event = make_event(context("eu.west room"), 1, TYPES[1])
    assert nats_subject("livekit", event) == "livekit.events.eu%2Ewest%20room.update"
    assert nats_subject("acme.lk", event).split(".")[2:] == ["events", "eu%2Ewest%20room", "update"]


def test_percent_decode_rejects_bad_escapes_and_invalid_utf8() -> None:
    assert percent_decode("%c3%a9") == "é"  # lower-case hex and unneeded escapes are accepted
    assert percent_decode("%41") == "A"
    with pytest.raises(ValueError, match="hex"):
        percent_decode("50%")
    with pytest.raises(UnicodeDecodeError):
        percent_decode("%C3")


# -- NATS structured ------------------------------------------------------------------------------------


@pytest.mark.parametrize("event", mixed_events(3), ids=lambda e: f"{e.ctx.room[:12]}-{e.sequence}")
def test_structured_payload_follows_the_json_format(event: object) -> None:
    from bridge.events.cloudevent import CloudEvent

    assert isinstance(event, CloudEvent)
    payload = nats_structured(event)
    doc = json.loads(payload)
    # JSON format 1.0.2: the required attributes, extensions as top-level members, data vs data_base64.
    for required in ("id", "source", "specversion", "type"):
        assert isinstance(doc[required], str)
        assert doc[required]
    assert doc["specversion"] == "1.0"
    attrs = {k: v for k, v in doc.items() if k not in ("data", "data_base64")}
    assert attrs == event.attributes()
    assert all(re.fullmatch(r"[a-z0-9]{1,20}", name) for name in attrs), "CE attribute naming rules"
    if event.datacontenttype == JSON:
        assert "data_base64" not in doc
        assert doc["data"] == json.loads(event.data), "JSON data is embedded as a value, not a string"
    else:
        assert "data" not in doc
        assert base64.b64decode(doc["data_base64"]) == event.data
    # And the SDK's JSON format reads it too.
    sdk = JSONFormat().read(None, payload)
    assert sdk.get_id() == event.id
    assert sdk.get_extension("lkroom") == event.ctx.room
    decoded = event_from_nats(nats_subject("p", event), payload, bindings.NATS_STRUCTURED_HEADERS)
    if event.datacontenttype == JSON:
        assert decoded.pop("data_json") == json.loads(event.data)
        decoded["data"] = event.data
    assert decoded == {**event.attributes(), "data": event.data}


def test_structured_json_without_data_has_no_data_member() -> None:
    event = make_event(context("r"), 1, json_data=True)
    empty = type(event)(event.ctx, event.etype, 1, event.time, b"", JSON)
    assert "data" not in json.loads(nats_structured(empty))


def test_structured_escapes_every_string() -> None:
    ctx = context('quote" back\\slash\nnewline')
    event = make_event(ctx, 1, subject='say "hi"\t', traceparent=None)
    doc = json.loads(nats_structured(event))
    assert doc["lkroom"] == ctx.room
    assert doc["subject"] == 'say "hi"\t'


# -- NATS binary ----------------------------------------------------------------------------------------


def test_binary_headers_cover_every_attribute_percent_encoded() -> None:
    event = make_event(context("eu.west room ✓"), 3, subject='50% "off"', traceparent="00-ab-cd-01")
    headers = nats_binary_headers(event)
    assert {k.removeprefix("ce-") for k in headers} == set(event.attributes())
    assert headers["ce-datacontenttype"] == PROTOBUF
    assert headers["ce-subject"] == "50%25%20%22off%22"
    assert headers["ce-lkroom"] == "eu.west%20room%20%E2%9C%93"
    for value in headers.values():
        assert re.fullmatch(r"[\x21\x23\x24\x26-\x7e]*|(?:[\x21\x23\x24\x26-\x7e]|%[0-9A-F]{2})*", value)
    decoded = event_from_nats(nats_subject("p", event), event.data, headers)
    assert decoded == {**event.attributes(), "data": event.data}


def test_binary_block_is_the_block_of_the_binary_headers() -> None:
    """The core publisher joins the block from cached parts; JetStream (and nats-py) encode the dict."""
    with_extensions = dataclasses.replace(
        make_event(context("r"), 9, subject=None), extensions=(("lkcommandid", "cmd 1%"), ("lkattempt", "2"))
    )
    for event in [*mixed_events(12), with_extensions]:
        assert nats_binary_block(event) == header_block(nats_binary_headers(event)), event


def test_binary_block_refuses_a_header_name_nats_would_not_carry() -> None:
    event = dataclasses.replace(make_event(context("r"), 1), extensions=(("bad name", "x"),))
    with pytest.raises(ValueError, match="invalid NATS header name"):
        nats_binary_block(event)


@given(st.text(max_size=40))
def test_percent_encode_round_trips(value: str) -> None:
    try:
        value.encode()
    except UnicodeEncodeError:
        return
    encoded = percent_encode(value)
    assert all(0x21 <= ord(c) <= 0x7E and c not in '"' for c in encoded)
    assert percent_decode(encoded) == value


def test_caches_stay_bounded() -> None:
    bindings.clear_caches()
    for i in range(bindings._CTX_CACHE_MAX + 10):
        kafka_record(make_event(context(f"room-{i}"), 1))
    assert len(bindings._ctx_cache) <= bindings._CTX_CACHE_MAX


def test_per_event_cost_is_printed() -> None:
    """Not an assertion on speed (CI machines vary): run with ``-s`` to see µs per event."""
    events = mixed_events(50)
    n = len(events)
    for name, fn in (
        ("kafka_record", kafka_record),
        ("nats_structured", nats_structured),
        ("nats_binary_headers", nats_binary_headers),
        ("nats_binary_block", nats_binary_block),
        ("nats_subject", lambda e: nats_subject("livekit", e)),
    ):
        began = time.perf_counter()
        for _ in range(20):
            for event in events:
                fn(event)
        print(f"\n{name}: {(time.perf_counter() - began) / (20 * n) * 1e6:.2f} µs/event", end="")
