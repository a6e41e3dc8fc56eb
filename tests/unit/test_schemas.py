"""Generated JSON Schemas: valid, accept what the bridge really writes, reject the rest, never drift."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import descriptor_pool, json_format, message_factory, wrappers_pb2
from google.protobuf.message import Message
from jsonschema import Draft202012Validator
from livekit.protocol import models, rtc
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from bridge import asyncapi, cli, schema_examples, schemas
from bridge._proto import events_pb2
from bridge.bus.bindings import room_token
from bridge.commands.model import COMMANDS, DEFAULT_ALLOWED, NEVER_TYPES
from bridge.commands.validate import CODES, RawCommand, validate
from bridge.errors import InvalidCommand
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
        (
            "io.livekit.bridge.text_stream.v1",
            events_pb2.TextStream(
                stream_id="st-1",
                topic="lk.chat",
                text="héllo",
                participant_identity="alice",
                timestamp=1749547812345,
                attributes={"k": "v"},
                mime_type="text/plain",
                operation_type=models.DataStream.OperationType.UPDATE,
                reply_to_stream_id="st-0",
                attached_stream_ids=["st-f"],
                generated=True,
                chunks=2,
                truncated=True,
                reason="interrupted",
            ),
        ),
        (
            "io.livekit.bridge.recording_finished.v1",
            events_pb2.RecordingFinished(
                track_sid="TR_1",
                path="a/b.ogg",
                codec="opus",
                frames=10,
                bytes=999,
                duration_s=0.2,
                dropped=1,
                reason="duration",
            ),
        ),
        (
            "io.livekit.bridge.forward_finished.v1",
            events_pb2.ForwardFinished(
                track_sid="TR_2",
                codec="h264",
                host="media.example.com",
                address="10.0.0.7",
                port=5004,
                payload_type=102,
                frames=30,
                packets=140,
                bytes=2**40,
                dropped=2,
                skipped=4,
                duration_s=1.5,
                reason="track_ended",
            ),
        ),
        (
            "io.livekit.bridge.publish_finished.v1",
            events_pb2.PublishFinished(
                track_sid="TR_3",
                kind="video",
                source="https://media.example.com/clip.mp4",
                mime_type="video/H264",
                passthrough=True,
                frames=75,
                duration_s=5.0,
                reason="error: MediaError: the source changed",
            ),
        ),
        (
            "io.livekit.bridge.ownership_changed.v1",
            events_pb2.OwnershipChanged(
                room="standup",
                acquired=True,
                mode="nats",
                replica="bridge-1",
                fencing_token=2**63 + 5,
                reason="lease change",
            ),
        ),
    ]


REALISTIC = _realistic()


def test_one_schema_per_event_type_and_an_index() -> None:
    assert {rel for rel in GENERATED if rel.startswith("events/")} == {f"events/{n}.json" for n in types.ALL}
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


@pytest.mark.parametrize("rel", sorted(rel for rel in GENERATED if rel.endswith(".json")))
def test_every_schema_is_valid_against_the_meta_schema(rel: str) -> None:
    schema = json.loads(GENERATED[rel])
    if rel == "index.json":
        return  # an index, not a schema
    assert schema["$schema"] == schemas.META_SCHEMA
    Draft202012Validator.check_schema(schema)


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
    assert {p.name for p in tmp_path.iterdir()} == {
        "asyncapi.yaml",
        "commands",
        "envelope",
        "events",
        "index.json",
    }
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


# --- command schemas, envelope, AsyncAPI document, README catalogues ----------------------------------


def test_one_schema_per_accepted_command_type_and_none_for_plumbing() -> None:
    accepted = {t for t in COMMANDS if t not in NEVER_TYPES}
    assert {rel for rel in GENERATED if rel.startswith("commands/")} == {
        f"commands/{t}.json" for t in accepted
    }
    index = json.loads(GENERATED["index.json"])
    assert set(index["commands"]) == accepted
    assert set(index["envelope"]) == {
        p.removeprefix("envelope/").removesuffix(".json") for p in GENERATED if p.startswith("envelope/")
    }
    for ctype in accepted:
        schema = json.loads(GENERATED[f"commands/{ctype}.json"])
        assert schema["title"] == COMMANDS[ctype].message_class.DESCRIPTOR.full_name
        assert schema["x-cloudevents-type"] == ctype
        assert schema["description"]
    # bridge command fields are documented from commands.proto
    send_data = json.loads(GENERATED["commands/io.livekit.command.bridge.send_data.v1.json"])
    lossy = send_data["$defs"]["livekit.bridge.v1.SendData"]["properties"]["lossy"]
    assert "on the lossy" in lossy["description"]


def _asyncapi() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(GENERATED["asyncapi.yaml"])
    return doc


ASYNCAPI = _asyncapi()
BASE = "file:///schemas/"


def _registry() -> Registry[Any]:
    resources = [
        (BASE + rel, Resource.from_contents(json.loads(data)))
        for rel, data in GENERATED.items()
        if rel.endswith(".json") and rel != "index.json"
    ]
    return Registry().with_resources(resources).crawl()  # crawl: also by $id, for the internal #/$defs refs


REGISTRY = _registry()


def _doc_validator(schema: dict[str, Any]) -> Draft202012Validator:
    """Validates against a schema written in asyncapi.yaml (relative $refs resolve as the parser's do)."""
    root = DRAFT202012.create_resource(schema)
    registry = REGISTRY.with_resource(BASE + "asyncapi.yaml", root)
    return Draft202012Validator(
        {"$ref": BASE + "asyncapi.yaml"},
        registry=registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def _effective(message: dict[str, Any]) -> dict[str, Any]:
    """The message with its traits applied (AsyncAPI: a trait never overrides what the message sets)."""
    out = dict(message)
    for trait_ref in message.get("traits", []):
        trait = ASYNCAPI["components"]["messageTraits"][trait_ref["$ref"].rsplit("/", 1)[1]]
        for key, value in trait.items():
            out.setdefault(key, value)
    return out


def _messages(prefix: str) -> list[tuple[str, dict[str, Any]]]:
    return [(n, _effective(m)) for n, m in ASYNCAPI["components"]["messages"].items() if n.startswith(prefix)]


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_asyncapi_document_shape() -> None:
    doc = ASYNCAPI
    assert doc["asyncapi"] == "3.0.0"
    assert set(doc["servers"]) == {"kafka", "nats"}
    channels = doc["channels"]
    assert {c["address"] for c in channels.values()} == {
        "livekit.events",
        "livekit.events.{room}.{type}",
        "livekit.commands",
        "livekit.commands.{room}",
        "livekit.events.{room}.bridge_command_result",
        None,  # the NATS reply subject
        "livekit.commands.dlq",
        "livekit.dlq.commands",
    }
    assert set(channels["natsEvents"]["parameters"]["type"]["enum"]) == {
        types.subject_token(e) for e in types.ALL.values()
    }
    messages = doc["components"]["messages"]
    accepted = {t for t in COMMANDS if t not in NEVER_TYPES}
    assert set(messages) == {*types.ALL, *accepted, "commandDeadLetter"}
    actions = {name: (op["action"], op["channel"]["$ref"]) for name, op in doc["operations"].items()}
    assert actions["receiveCommands"] == ("receive", "#/channels/commands")
    assert actions["receiveNatsCommands"] == ("receive", "#/channels/natsCommands")
    assert doc["operations"]["receiveNatsCommands"]["reply"]["channel"] == {
        "$ref": "#/channels/natsCommandReplies"
    }
    assert all(a == "send" for n, (a, _) in actions.items() if not n.startswith("receive"))
    for name, message in _messages(""):
        assert message["examples"], name
        assert message["bindings"]["kafka"]["key"]["type"] == "string"
        assert "nats" in message["bindings"]
        assert message.get("headers"), name
    for ref in _refs(doc) + [
        r for rel, d in GENERATED.items() if rel.endswith(".json") for r in _refs(json.loads(d))
    ]:
        assert ref.startswith(("#", "./")), f"non-local $ref {ref}"


def test_asyncapi_descriptions_come_from_the_registries() -> None:
    messages = ASYNCAPI["components"]["messages"]
    assert messages["io.livekit.signal.speakers_changed.v1"]["description"].startswith(
        "SpeakersChanged: active"
    )
    assert "left the room" in messages["io.livekit.bridge.session_ended.v1"]["description"]
    assert messages["io.livekit.command.bridge.perform_rpc.v1"]["description"].startswith(
        "Performs an RPC call"
    )
    assert messages["io.livekit.command.mute.v1"]["description"].startswith(
        "Mutes or unmutes one of the bridge's"
    )


@pytest.mark.parametrize("name", sorted(types.ALL))
def test_every_event_example_validates(name: str) -> None:
    message = _effective(ASYNCAPI["components"]["messages"][name])
    payload = _doc_validator(message["payload"])
    headers = _doc_validator(message["headers"])
    data = _validator(name)
    kafka, nats = message["examples"]
    assert (kafka["name"], nats["name"]) == ("kafka", "nats")
    for example in (kafka, nats):
        payload.validate(example["payload"])
        headers.validate(example["headers"])
    # Kafka binary mode: the value is the data; the headers are what bindings.kafka_record writes.
    data.validate(kafka["payload"])
    Draft202012Validator(json.loads(GENERATED["envelope/kafka-event-headers.json"])).validate(
        kafka["headers"]
    )
    assert kafka["headers"]["ce_type"] == name
    # NATS structured mode: a JSON event with the protobuf data in data_base64, which decodes to the example.
    event = nats["payload"]
    _doc_validator({"$ref": "./envelope/event.json"}).validate(event)
    decoded = _message_class(types.ALL[name].message).FromString(base64.b64decode(event["data_base64"]))
    assert message_to_dict(decoded) == kafka["payload"]
    assert event["type"] == name
    assert event["dataschema"] == types.ALL[name].dataschema


def _message_class(full_name: str) -> type[Message]:
    return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(full_name))


def test_command_result_example_carries_lkcommandid() -> None:
    message = ASYNCAPI["components"]["messages"]["io.livekit.bridge.command_result.v1"]
    kafka, nats = message["examples"]
    assert (
        kafka["headers"]["ce_lkcommandid"] == nats["payload"]["lkcommandid"] == kafka["payload"]["commandId"]
    )


COMMAND_MESSAGES = _messages("io.livekit.command.")


@pytest.mark.parametrize(("name", "message"), COMMAND_MESSAGES, ids=[n for n, _ in COMMAND_MESSAGES])
def test_every_command_example_is_accepted_on_kafka_and_nats(name: str, message: dict[str, Any]) -> None:
    kafka, nats = message["examples"]
    for example in (kafka, nats):
        _doc_validator(message["payload"]).validate(example["payload"])
        _doc_validator(message["headers"]).validate(example["headers"])
    _validator_for(f"commands/{name}.json").validate(kafka["payload"])
    room = kafka["headers"]["ce_lkroom"]
    record = RawCommand.from_kafka(
        room.encode(),
        json.dumps(kafka["payload"]).encode(),
        [(k, v.encode()) for k, v in kafka["headers"].items()],
    )
    via_kafka = validate(record, allowed=DEFAULT_ALLOWED, max_bytes=64 * 1024)
    subject = f"livekit.commands.{room_token(nats['payload']['lkroom'])}"
    msg = RawCommand.from_nats(
        subject, json.dumps(nats["payload"]).encode(), nats["headers"], prefix="livekit"
    )
    via_nats = validate(msg, allowed=DEFAULT_ALLOWED, max_bytes=64 * 1024)
    expected = json_format.ParseDict(kafka["payload"], COMMANDS[name].message_class())
    for cmd in (via_kafka, via_nats):
        assert cmd.type == name
        assert cmd.room == room
        assert cmd.message == expected


def _validator_for(rel: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(GENERATED[rel]))


def test_examples_exist_for_every_type() -> None:
    # The generator falls back to {} so a LiveKit upgrade still generates; this is where it is caught.
    for etype in types.ALL.values():
        assert asyncapi.example_data(etype) != {} or etype.type in EMPTY_OK, etype.type
    for ctype in schemas.accepted_commands():
        assert asyncapi.command_example_data(ctype), ctype.type
    known = {
        "signal": set(schema_examples.SIGNAL_EVENTS),
        "data": set(schema_examples.DATA_EVENTS),
        "bridge": set(schema_examples.BRIDGE_EVENTS),
    }
    for kind, names in known.items():
        assert names == {e.field for e in types.ALL.values() if e.kind == kind}, kind
    assert set(schema_examples.SIGNAL_COMMANDS) == {
        c.name for c in schemas.accepted_commands() if c.kind == "signal"
    }
    assert set(schema_examples.SIGNAL_COMMAND_DESCRIPTIONS) == set(schema_examples.SIGNAL_COMMANDS)
    assert set(schema_examples.BRIDGE_COMMANDS) == {
        c.name for c in schemas.accepted_commands() if c.kind == "bridge"
    }


EMPTY_OK: frozenset[str] = frozenset()


def test_dead_letter_examples_validate() -> None:
    message = ASYNCAPI["components"]["messages"]["commandDeadLetter"]
    kafka, nats = message["examples"]
    headers = _doc_validator(message["headers"])
    headers.validate(kafka["headers"])
    headers.validate(nats["headers"])
    _validator_for("envelope/kafka-dead-letter-headers.json").validate(kafka["headers"])
    _validator_for("envelope/nats-dead-letter-headers.json").validate(nats["headers"])
    assert kafka["headers"]["ce_bridgeerrorcode"] in CODES
    # The example really is a dead letter: the validator refuses it with the code it carries.
    record = RawCommand.from_kafka(
        b"standup",
        json.dumps(kafka["payload"]).encode(),
        [(k, v.encode()) for k, v in kafka["headers"].items()],
    )
    with pytest.raises(InvalidCommand) as err:
        validate(record, allowed=DEFAULT_ALLOWED, max_bytes=64 * 1024)
    assert err.value.code == kafka["headers"]["ce_bridgeerrorcode"]


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ("envelope/event.json", {"specversion": "1.0", "id": "x"}),  # required members missing
        ("envelope/kafka-event-headers.json", {"ce_specversion": "1.0"}),
        (
            "envelope/kafka-dead-letter-headers.json",
            {"ce_bridgeerrorcode": "exploded", "ce_bridgeerror": "x"},
        ),
        ("envelope/nats-dead-letter-headers.json", {"ce-bridgeerrorcode": "bad_data", "ce-bridgeerror": "x"}),
        (
            "envelope/command.json",
            {"specversion": "1.0", "id": "c", "source": "s", "type": "io.livekit.x.v1"},
        ),
        (
            "envelope/cloudevents.json",
            {"specversion": "1.0", "id": "c", "source": "s", "type": "t", "Bad_Name": 1},
        ),
    ],
)
def test_envelope_schemas_reject_wrong_values(schema: str, value: object) -> None:
    assert not _doc_validator({"$ref": f"./{schema}"}).is_valid(value)


def test_structured_event_envelope_rules() -> None:
    example = ASYNCAPI["components"]["messages"]["io.livekit.signal.mute.v1"]["examples"][1]["payload"]
    envelope = _doc_validator({"$ref": "./envelope/event.json"})
    envelope.validate(example)
    assert not envelope.is_valid({**example, "sequence": "12"})  # 20 digits
    assert not envelope.is_valid({**example, "data": {}})  # protobuf data goes in data_base64
    assert not envelope.is_valid({**example, "lkcommandid": "cmd-1"})  # only on command results
    assert not envelope.is_valid({**example, "traceparent": "nope"})
    assert not envelope.is_valid({**example, "surprise": "x"})


def test_asyncapi_yaml_has_no_aliases_and_is_deterministic() -> None:
    text = GENERATED["asyncapi.yaml"].decode()
    assert "&id" not in text
    assert "*id" not in text
    assert asyncapi.render_yaml(schemas._bridge_comments()) == GENERATED["asyncapi.yaml"]


def test_readme_catalogues_are_current(tmp_path: Path) -> None:
    readme = ROOT / "README.md"
    assert schemas.check(COMMITTED, readme=readme) == []
    text = readme.read_text(encoding="utf-8")
    for etype in types.ALL:
        assert f"| `{etype}` |" in text
    for ctype in schemas.accepted_commands():
        assert f"| `{ctype.type}` |" in text
    for never in NEVER_TYPES:
        assert f"`{never}`" not in text
    # drift is reported, and writing repairs it without touching the rest of the file
    copy = tmp_path / "README.md"
    head, _, tail = text.rpartition("| `io.livekit.bridge.gap.v1` |")  # the catalogue's row, the last one
    copy.write_text(f"{head}| `io.livekit.bridge.gone.v1` |{tail}")
    drift = schemas.check(COMMITTED, readme=copy)
    assert any("io.livekit.bridge.gone.v1" in line for line in drift)
    assert cli.main(["schemas", "--out", str(tmp_path / "s"), "--readme", str(copy)]) == 0
    assert copy.read_text(encoding="utf-8") == text
    (tmp_path / "plain.md").write_text("# no markers\n")
    assert any("markers" in line for line in schemas.check(COMMITTED, readme=tmp_path / "plain.md"))
