"""End to end: the simulator makes every SignalResponse variant happen, the bridge publishes each one
as a CloudEvent on a real Kafka-protocol broker AND a real NATS server, and consumers on both check it."""

from __future__ import annotations

import json
from typing import Any

from aiortc import RTCPeerConnection
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from google.protobuf import descriptor_pool, message_factory
from livekit.protocol import models, rtc

from bridge.app import Bridge
from bridge.config import load_settings
from bridge.events import types
from bridge.sim.server import IceServer, SimServer
from support.bridge import bridge_settings
from support.brokers import KafkaBroker, NatsServer, unique_name
from support.bus_consumers import KafkaCollector, NatsCollector, Received, create_topic
from support.schema_files import problems
from support.simulator import running_sim
from support.waiting import eventually

IDENTITY = "livekit-bridge"
ROOM = "e2e.room one"  # a dot and a space: NATS subject tokens must escape both
TURN_USER, TURN_PASS = "turn-user-8f3a", "turn-pass-91c2"
SIGNAL_FIELDS = {f.name for f in rtc.SignalResponse.DESCRIPTOR.oneofs_by_name["message"].fields}


def message_class(name: str) -> Any:
    return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(name))


def active(server: SimServer) -> bool:
    r = server.rooms.get(ROOM)
    p = r.participants.get(IDENTITY) if r else None
    return p is not None and p.info.state == models.ParticipantInfo.ACTIVE


async def drive_every_variant(server: SimServer, bridge: Bridge, seen: NatsCollector) -> list[str]:
    """Make LiveKit send the bridge every SignalResponse variant (requests injected where needed);
    returns the kinds the simulator sent, in order."""
    from bridge.sim.scenario import Scenario

    scenario = Scenario(server)
    session = bridge.supervisor.sessions[ROOM]
    mic = scenario.publish(ROOM, "alice", kind="audio")
    pc = RTCPeerConnection()
    pc.createDataChannel("_reliable")
    await pc.setLocalDescription(await pc.createOffer())
    requests = [
        rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=pc.localDescription.sdp, id=1)),
        rtc.SignalRequest(add_track=rtc.AddTrackRequest(cid="c1", name="voice", type=models.AUDIO)),
        rtc.SignalRequest(ping=1),
        rtc.SignalRequest(ping_req=rtc.Ping(timestamp=1)),
        rtc.SignalRequest(subscription=rtc.UpdateSubscription(track_sids=["TR_missing"], subscribe=True)),
        rtc.SignalRequest(update_metadata=rtc.UpdateParticipantMetadata(metadata="x", request_id=3)),
        rtc.SignalRequest(publish_data_track_request=rtc.PublishDataTrackRequest(pub_handle=2, name="t")),
        rtc.SignalRequest(unpublish_data_track_request=rtc.UnpublishDataTrackRequest(pub_handle=2)),
        rtc.SignalRequest(
            store_data_blob_request=rtc.StoreDataBlobRequest(
                request_id=4, blob=models.DataBlob(key=models.DataBlobKey(generic="k"), contents=b"v")
            )
        ),
        rtc.SignalRequest(
            get_data_blob_request=rtc.GetDataBlobRequest(
                request_id=5, participant_identity=IDENTITY, key=models.DataBlobKey(generic="k")
            )
        ),
    ]
    for request in requests:
        assert session.send_request(request)
    sim_session = server.session(ROOM, IDENTITY)
    await eventually(lambda: "track_published" in sim_session.sent, within=10, what="track_published")
    own = server.rooms[ROOM].participant(IDENTITY).info.tracks[0].sid
    scenario.speak(ROOM, {"alice": 0.5})
    scenario.quality(ROOM, {"alice": "excellent"})
    scenario.set_room_metadata(ROOM, metadata="m")
    scenario.mute(ROOM, IDENTITY, track=own)
    scenario.stream_state(ROOM, IDENTITY, publisher="alice", track=mic)
    scenario.subscribed_quality(ROOM, IDENTITY, track=own)
    scenario.permission_update(ROOM, IDENTITY, publisher="alice", track=mic, allowed=True)
    scenario.subscribed(ROOM, IDENTITY, track=own)
    scenario.subscribed_audio_codec(ROOM, IDENTITY, track=own)
    scenario.media_sections(ROOM, IDENTITY)
    scenario.publish_data_track(ROOM, "alice", name="lidar")
    scenario.data_track_handles(ROOM, IDENTITY)
    scenario.unpublish(ROOM, IDENTITY, track=own)

    def bridged(field: str) -> bool:
        return any(r.attrs["type"] == f"io.livekit.signal.{field}.v1" for r in seen.received)

    # An aborted TCP connection loses what is still in flight: let the bridge have it all first.
    await eventually(lambda: bridged("track_unpublished"), within=10, what="track_unpublished bridged")
    scenario.drop_socket(ROOM, IDENTITY)  # -> reconnect
    await eventually(lambda: session.resumes == 1, within=10, what="resume")
    scenario.move(ROOM, IDENTITY, to_room=ROOM)  # room_moved (to the same room keeps the test simple)
    scenario.kick(ROOM, IDENTITY)  # leave
    await eventually(lambda: session.ended is not None, within=10, what="session end")
    await pc.close()
    return sim_session.sent


async def test_every_variant_reaches_kafka_and_nats_intact(
    nats_server: NatsServer, kafka_broker: KafkaBroker
) -> None:
    topic, prefix = unique_name("lk-events"), unique_name("lk").replace("-", "_")
    await create_topic(kafka_broker.bootstrap, topic)
    kafka = KafkaCollector(kafka_broker.bootstrap, topic)
    nats = NatsCollector(nats_server.url, prefix)
    await kafka.start()
    await nats.start()
    try:
        turn = IceServer(urls=("turn:127.0.0.1:9?transport=tcp",), username=TURN_USER, credential=TURN_PASS)
        async with running_sim(ice_servers=(turn,)) as (server, scenario):
            scenario.join(ROOM, "alice")
            env = bridge_settings(server, ROOM)
            settings = load_settings(
                None,
                {
                    "BRIDGE_LIVEKIT__URL": env.livekit.url,
                    "BRIDGE_LIVEKIT__API_KEY": env.livekit.api_key,
                    "BRIDGE_LIVEKIT__API_SECRET": env.livekit.api_secret.reveal(),
                    "BRIDGE_LIVEKIT__CAN_PUBLISH": "true",  # so add_track yields track_published
                    "BRIDGE_ROOMS__STATIC": f"['{ROOM}']",
                    "BRIDGE_HTTP__LISTEN": "127.0.0.1:0",
                    "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
                    "BRIDGE_KAFKA__EVENTS_TOPIC": topic,
                    "BRIDGE_KAFKA__ENABLE_IDEMPOTENCE": "false",
                    "BRIDGE_KAFKA__ACKS": "all",
                    "BRIDGE_NATS__SERVERS": nats_server.url,
                    "BRIDGE_NATS__SUBJECT_PREFIX": prefix,
                    # No commands topic here; commands have their own end-to-end tests.
                    "BRIDGE_COMMANDS__ENABLED": "false",
                },
            )
            bridge = Bridge(settings)
            await bridge.start()
            try:
                await eventually(lambda: active(server), within=15, what="bridge ACTIVE")
                sent_kinds = await drive_every_variant(server, bridge, nats)
                emitted = bridge.supervisor.sessions[ROOM].mapper.sequence
                await eventually(
                    lambda: len(kafka.received) >= emitted and len(nats.received) >= emitted,
                    within=20,
                    what=f"{emitted} events on both buses",
                )
            finally:
                await bridge.aclose()
    finally:
        await kafka.aclose()
        await nats.aclose()

    for name, received in (("kafka", kafka.received), ("nats", nats.received)):
        check_stream(name, received, sent_kinds)
    for message in kafka.received:
        assert message.key == ROOM.encode()
        parsed = ce_kafka.from_binary(
            ce_kafka.KafkaMessage(
                headers=dict(message.headers["list"]), key=message.key, value=message.payload
            ),
            JSONFormat(),
        )
        assert parsed.get_extension("lkroom") == ROOM
    for message in nats.received:
        assert message.subject is not None
        assert message.subject.startswith(f"{prefix}.events.e2e%2Eroom%20one.")
        structured = JSONFormat().read(None, message.payload)
        assert structured.get_type() == message.attrs["type"]


def check_stream(bus: str, received: list[Received], sim_sent: list[str]) -> None:
    seqs = [int(r.attrs["sequence"]) for r in received]
    assert seqs == sorted(seqs), f"{bus}: not in order"
    assert seqs == list(range(1, len(seqs) + 1)), f"{bus}: sequence has gaps or repeats"
    signal = [r for r in received if r.attrs["type"].startswith("io.livekit.signal.")]
    fields = [r.attrs["type"].split(".")[3] for r in signal]
    assert set(fields) == SIGNAL_FIELDS, f"{bus}: missing {SIGNAL_FIELDS - set(fields)}"
    for r in received:
        etype = types.ALL[r.attrs["type"]]
        assert r.attrs["dataschema"] == etype.dataschema
        assert r.attrs["lkroom"] == ROOM
        assert r.attrs["partitionkey"] == ROOM
        assert r.attrs["id"] == f"{r.attrs['lksession']}-{r.attrs['sequence']}"
        message_class(etype.message).FromString(r.attrs["data"])  # parses as the right message
        blob = r.payload + json.dumps(r.attrs, default=str).encode()
        for secret in (TURN_USER, TURN_PASS):
            assert secret.encode() not in blob, f"{bus}: {r.attrs['type']} leaks a TURN credential"
        assert b"eyJ" not in r.attrs["data"], f"{bus}: {r.attrs['type']} carries a token"
    bridge_events = [r.attrs["type"] for r in received if r.attrs["type"].startswith("io.livekit.bridge.")]
    assert "io.livekit.bridge.session_started.v1" in bridge_events
    assert bridge_events.count("io.livekit.bridge.room_snapshot.v1") >= 2  # join + resume (+ move)
    assert len(sim_sent) > 30
    assert fields == sim_sent, f"{bus}: per-room order differs from LiveKit's"


async def test_json_mode_events_match_their_published_schemas(nats_server: NatsServer) -> None:
    """Every event the bridge emits with ``events.data_format: json`` validates against schemas/: its data
    against the event type's schema, the structured envelope against schemas/envelope/event.json."""
    prefix = unique_name("lkjson").replace("-", "_")
    nats = NatsCollector(nats_server.url, prefix)
    await nats.start()
    try:
        async with running_sim(ice_servers=()) as (server, scenario):
            scenario.join(ROOM, "alice")
            env = bridge_settings(server, ROOM)
            settings = load_settings(
                None,
                {
                    "BRIDGE_LIVEKIT__URL": env.livekit.url,
                    "BRIDGE_LIVEKIT__API_KEY": env.livekit.api_key,
                    "BRIDGE_LIVEKIT__API_SECRET": env.livekit.api_secret.reveal(),
                    "BRIDGE_LIVEKIT__CAN_PUBLISH": "true",
                    "BRIDGE_ROOMS__STATIC": f"['{ROOM}']",
                    "BRIDGE_HTTP__LISTEN": "127.0.0.1:0",
                    "BRIDGE_EVENTS__DATA_FORMAT": "json",
                    "BRIDGE_NATS__SERVERS": nats_server.url,
                    "BRIDGE_NATS__SUBJECT_PREFIX": prefix,
                    "BRIDGE_COMMANDS__ENABLED": "false",
                },
            )
            bridge = Bridge(settings)
            await bridge.start()
            try:
                await eventually(lambda: active(server), within=15, what="bridge ACTIVE")
                await drive_every_variant(server, bridge, nats)
                emitted = bridge.supervisor.sessions[ROOM].mapper.sequence
                await eventually(lambda: len(nats.received) >= emitted, within=20, what=f"{emitted} events")
            finally:
                await bridge.aclose()
    finally:
        await nats.aclose()

    seen: set[str] = set()
    for r in nats.received:
        etype = r.attrs["type"]
        assert r.attrs["datacontenttype"] == "application/json"
        document = json.loads(r.payload)
        assert not (errors := problems("envelope/event.json", document)), f"{etype}: envelope: {errors}"
        assert not (errors := problems(f"events/{etype}.json", document["data"])), f"{etype}: data: {errors}"
        seen.add(etype)
    assert {f"io.livekit.signal.{f}.v1" for f in SIGNAL_FIELDS} <= seen  # every signal variant was checked
