"""Every allowed command type through a real broker (Kafka-protocol and NATS) into the simulator, with
its effect checked there; every plumbing type refused with a result; bad input dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
import tempfile
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from livekit.protocol import models, rtc

from bridge._proto import commands_pb2, events_pb2
from bridge.app import Bridge
from bridge.commands.model import DEFAULT_ALLOWED, NEVER_TYPES
from bridge.config import Settings, load_settings
from bridge.sim.scenario import Scenario
from bridge.sim.server import SimServer
from support.brokers import unique_name
from support.bus_consumers import create_topic
from support.command_clients import CommandClient, KafkaCommands, NatsCommands
from support.commands import command_type
from support.data_peer import DataPeer, data_peer
from support.signal_client import API_KEY, API_SECRET
from support.simulator import running_sim
from support.waiting import eventually

IDENTITY = "livekit-bridge"
ROOM = "cmd.room 1"  # a dot and a space: the NATS subject token escapes both
OTHER = "cmd-other"
Result = events_pb2.CommandResult
APPLIED = Result.STATUS_APPLIED


@dataclass
class Env:
    server: SimServer
    scenario: Scenario
    bridge: Bridge
    client: CommandClient
    bob: DataPeer
    alice_mic: str

    def bridge_requests(self, kind: str) -> list[rtc.SignalRequest]:
        participant = self.server.rooms[ROOM].participants[IDENTITY]
        requests = getattr(participant.connection, "requests", [])
        return [r for r in requests if r.WhichOneof("message") == kind]

    def participant(self, identity: str, room: str = ROOM) -> Any:
        return self.server.rooms[room].participants.get(identity)


RECORDINGS = tempfile.mkdtemp(prefix="bridge-e2e-recordings-")  # record_track writes below it
PUBLISH = tempfile.mkdtemp(prefix="bridge-e2e-publish-")  # publish_track plays a file from it


def _write_wav(path: Path, seconds: float = 2.0, rate: int = 16000) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(struct.pack(f"<{int(rate * seconds)}h", *([3000, -3000] * int(rate * seconds / 2))))


_write_wav(Path(PUBLISH) / "clip.wav")


def settings_for(server: SimServer, bus: str, names: dict[str, str], broker: Any) -> Settings:
    environ = {
        "BRIDGE_LIVEKIT__URL": server.url,
        "BRIDGE_LIVEKIT__API_KEY": API_KEY,
        "BRIDGE_LIVEKIT__API_SECRET": API_SECRET,
        "BRIDGE_LIVEKIT__CAN_PUBLISH": "true",
        "BRIDGE_LIVEKIT__CAN_UPDATE_OWN_METADATA": "true",
        "BRIDGE_ROOMS__STATIC": f"['{ROOM}']",
        "BRIDGE_HTTP__LISTEN": "127.0.0.1:0",
        "BRIDGE_MEDIA__RECORDINGS_DIR": RECORDINGS,
        "BRIDGE_MEDIA__PUBLISH_DIR": PUBLISH,
        "BRIDGE_MEDIA__FORWARD_ALLOW": "['127.0.0.1']",
    }
    if bus == "kafka":
        environ |= {
            "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
            "BRIDGE_KAFKA__EVENTS_TOPIC": names["events"],
            "BRIDGE_KAFKA__COMMANDS_TOPIC": names["commands"],
            "BRIDGE_KAFKA__DEAD_LETTER_TOPIC": names["dlq"],
            "BRIDGE_KAFKA__COMMANDS_STATE_TOPIC": names["state"],
            "BRIDGE_KAFKA__COMMANDS_GROUP_ID": names["group"],
            "BRIDGE_KAFKA__COMMANDS_OFFSET_RESET": "earliest",
            "BRIDGE_KAFKA__ENABLE_IDEMPOTENCE": "false",
        }
    else:
        environ |= {"BRIDGE_NATS__SERVERS": broker.url, "BRIDGE_NATS__SUBJECT_PREFIX": names["prefix"]}
    return load_settings(None, environ)


@contextlib.asynccontextmanager
async def environment(bus: str, broker: Any) -> AsyncIterator[Env]:
    names = {
        "events": unique_name("cmd-events"),
        "commands": unique_name("cmd-commands"),
        "dlq": unique_name("cmd-dlq"),
        "state": unique_name("cmd-state"),
        "group": unique_name("cmd-group"),
        "prefix": unique_name("lk").replace("-", "_"),
    }
    client: KafkaCommands | NatsCommands
    if bus == "kafka":
        for topic in (names["events"], names["commands"], names["dlq"], names["state"]):
            await create_topic(broker.bootstrap, topic, partitions=2)
        client = KafkaCommands(
            broker.bootstrap,
            commands_topic=names["commands"],
            events_topic=names["events"],
            dlq_topic=names["dlq"],
        )
    else:
        client = NatsCommands(broker.url, prefix=names["prefix"])
    await client.start()
    try:
        async with running_sim(ice_servers=()) as (server, scenario):
            scenario.join(ROOM, "alice")
            scenario.join(ROOM, "carol")
            alice_mic = scenario.publish(ROOM, "alice", kind="audio")
            async with data_peer(server.url, "bob", ROOM) as bob:
                bridge = Bridge(settings_for(server, bus, names, broker))
                await bridge.start()
                try:
                    await eventually(
                        lambda: (
                            bool(bridge.supervisor.sessions[ROOM].participant_sid)
                            and all(s.ready for s in bridge.command_sources)
                        ),
                        within=30,
                        what="bridge joined and consuming commands",
                    )
                    yield Env(server, scenario, bridge, client, bob, alice_mic)
                finally:
                    await bridge.aclose()
    finally:
        await client.aclose()


Check = Callable[[Env, Result], bool]


@dataclass
class Case:
    name: str
    message: Callable[[Env], Message]
    effect: Check


def received(kind: str) -> Check:
    return lambda env, _: bool(env.bridge_requests(kind))


def own_track(env: Env) -> models.TrackInfo:
    tracks: list[models.TrackInfo] = list(env.participant(IDENTITY).info.tracks)
    return next(t for t in tracks if t.name == "bus-mic")


# In order: later cases use what earlier ones created (the bridge's own track, the blob).
CASES: list[Case] = [
    Case(
        "update_metadata",
        lambda env: rtc.UpdateParticipantMetadata(metadata="via-bus", attributes={"role": "recorder"}),
        lambda env, _: env.participant(IDENTITY).info.metadata == "via-bus",
    ),
    Case(
        "add_track",
        lambda env: rtc.AddTrackRequest(cid="bus-cid", name="bus-mic", type=models.AUDIO),
        lambda env, r: (
            rtc.TrackPublishedResponse.FromString(r.response).track.name == "bus-mic"
            and own_track(env).sid != ""
        ),
    ),
    Case(
        "mute",
        lambda env: rtc.MuteTrackRequest(sid=own_track(env).sid, muted=True),
        lambda env, _: own_track(env).muted,
    ),
    Case(
        "update_audio_track",
        lambda env: rtc.UpdateLocalAudioTrack(track_sid=own_track(env).sid, features=[models.TF_NO_DTX]),
        lambda env, _: list(own_track(env).audio_features) == [models.TF_NO_DTX],
    ),
    Case(
        "update_video_track",
        lambda env: rtc.UpdateLocalVideoTrack(track_sid=own_track(env).sid, width=640, height=360),
        lambda env, _: own_track(env).width == 640,
    ),
    Case(
        "subscription",
        lambda env: rtc.UpdateSubscription(track_sids=[env.alice_mic], subscribe=True),
        lambda env, _: IDENTITY in env.participant("alice").subscribed_by.get(env.alice_mic, set()),
    ),
    Case(
        "track_setting",
        lambda env: rtc.UpdateTrackSettings(track_sids=[env.alice_mic], disabled=True),
        received("track_setting"),
    ),
    Case(
        "update_layers",
        lambda env: rtc.UpdateVideoLayers(track_sid=env.alice_mic),
        received("update_layers"),
    ),
    Case(
        "subscription_permission",
        lambda env: rtc.SubscriptionPermission(all_participants=True),
        received("subscription_permission"),
    ),
    Case(
        "publish_data_track_request",
        lambda env: rtc.PublishDataTrackRequest(pub_handle=3, name="bus-data"),
        lambda env, r: (
            rtc.PublishDataTrackResponse.FromString(r.response).info.name == "bus-data"
            and [t.name for t in env.participant(IDENTITY).info.data_tracks] == ["bus-data"]
        ),
    ),
    Case(
        "unpublish_data_track_request",
        lambda env: rtc.UnpublishDataTrackRequest(pub_handle=3),
        lambda env, _: not env.participant(IDENTITY).info.data_tracks,
    ),
    Case(
        "update_data_subscription",
        lambda env: rtc.UpdateDataSubscription(),
        received("update_data_subscription"),
    ),
    Case(
        "store_data_blob_request",
        lambda env: rtc.StoreDataBlobRequest(
            blob=models.DataBlob(key=models.DataBlobKey(generic="notes"), contents=b"v1")
        ),
        lambda env, _: env.participant(IDENTITY).data_blobs != {},
    ),
    Case(
        "get_data_blob_request",
        lambda env: rtc.GetDataBlobRequest(
            participant_identity=IDENTITY, key=models.DataBlobKey(generic="notes")
        ),
        lambda env, r: rtc.GetDataBlobResponse.FromString(r.response).blob.contents == b"v1",
    ),
    Case(
        "bridge.update_room_metadata",
        lambda env: commands_pb2.UpdateRoomMetadata(metadata="room-meta"),
        lambda env, _: env.server.rooms[ROOM].info.metadata == "room-meta",
    ),
    Case(
        "bridge.update_participant",
        lambda env: commands_pb2.UpdateParticipant(identity="alice", metadata="a2", attributes={"k": "v"}),
        lambda env, _: (
            env.participant("alice").info.metadata == "a2"
            and dict(env.participant("alice").info.attributes) == {"k": "v"}
        ),
    ),
    Case(
        "bridge.record_track",
        lambda env: commands_pb2.RecordTrack(track_sid=env.alice_mic, path=f"{unique_name('rec')}/mic.ogg"),
        lambda env, _: any(
            r.frames > 0 for r in env.bridge.supervisor.sessions[ROOM].recorder.recordings.values()
        ),
    ),
    Case(
        "bridge.stop_recording",
        lambda env: commands_pb2.StopRecording(track_sid=env.alice_mic),
        lambda env, _: not env.bridge.supervisor.sessions[ROOM].recorder.recordings,
    ),
    Case(
        # Nobody listens on the port: the packets are sent all the same (ICMP errors are only counted).
        "bridge.forward_track",
        lambda env: commands_pb2.ForwardTrack(track_sid=env.alice_mic, host="127.0.0.1", port=9),
        lambda env, r: (
            b"RTP/AVP 111" in r.response
            and any(f.packets > 0 for f in env.bridge.supervisor.sessions[ROOM].forwarder.forwards.values())
        ),
    ),
    Case(
        "bridge.stop_forward",
        lambda env: commands_pb2.StopForward(track_sid=env.alice_mic),
        lambda env, _: not env.bridge.supervisor.sessions[ROOM].forwarder.forwards,
    ),
    Case(
        "bridge.publish_track",
        lambda env: commands_pb2.PublishTrack(path="clip.wav", name="bus-file", loop=True),
        lambda env, r: (
            models.TrackInfo.FromString(r.response).sid
            in {t.sid for t in env.participant(IDENTITY).info.tracks}
            and sum(env.server.session(ROOM, IDENTITY).media.received_frames.values()) > 0
        ),
    ),
    Case(
        "bridge.unpublish_track",
        lambda env: commands_pb2.UnpublishTrack(
            track_sid=next(t.sid for t in env.participant(IDENTITY).info.tracks if t.name == "bus-file")
        ),
        lambda env, _: not env.bridge.supervisor.sessions[ROOM].published,
    ),
    Case(
        "bridge.mute_track",
        lambda env: commands_pb2.MuteTrack(identity="alice", track_sid=env.alice_mic, muted=True),
        lambda env, _: next(t for t in env.participant("alice").info.tracks if t.sid == env.alice_mic).muted,
    ),
    Case(
        "bridge.send_data",
        lambda env: commands_pb2.SendData(payload=b"hello bob", topic="t1", destination_identities=["bob"]),
        lambda env, _: any(
            p.WhichOneof("value") == "user" and p.user.payload == b"hello bob" and p.user.topic == "t1"
            for _, p in env.bob.received
        ),
    ),
    Case(
        "bridge.perform_rpc",
        lambda env: commands_pb2.PerformRpc(destination_identity="bob", method="echo", payload="hi"),
        lambda env, r: r.response == b"echo:hi",
    ),
    Case(
        "bridge.remove_participant",
        lambda env: commands_pb2.RemoveParticipant(identity="carol"),
        lambda env, _: env.participant("carol") is None,
    ),
]


def answer_rpcs(bob: DataPeer) -> None:
    def on_packet(packet: models.DataPacket) -> None:
        if packet.WhichOneof("value") != "rpc_request":
            return
        req = packet.rpc_request
        back = [packet.participant_identity]
        bob.send(models.DataPacket(destination_identities=back, rpc_ack=models.RpcAck(request_id=req.id)))
        bob.send(
            models.DataPacket(
                destination_identities=back,
                rpc_response=models.RpcResponse(request_id=req.id, payload=f"{req.method}:{req.payload}"),
            )
        )

    bob.on_packet = on_packet


@pytest.fixture(params=["kafka", "nats"])
def bus(request: pytest.FixtureRequest) -> tuple[str, Any]:
    name = str(request.param)
    broker = request.getfixturevalue("kafka_broker" if name == "kafka" else "nats_server")
    return name, broker


@pytest.mark.slow
async def test_every_allowed_command_has_its_effect(bus: tuple[str, Any]) -> None:
    covered = {command_type(c.name) for c in CASES} | {
        command_type(n) for n in ("bridge.join_room", "bridge.leave_room")
    }
    # A new allowed type (a LiveKit upgrade adds a SignalRequest variant) must get a case here.
    assert covered == DEFAULT_ALLOWED

    async with environment(*bus) as env:
        answer_rpcs(env.bob)
        for case in CASES:
            cid = await env.client.send(ROOM, case.name, case.message(env))
            result = await env.client.result(cid)
            assert (case.name, result.status, result.code) == (case.name, APPLIED, ""), result.message
            assert result.command_type == command_type(case.name)
            await eventually(partial(case.effect, env, result), within=10, what=f"effect of {case.name}")

        env.scenario.join(OTHER, "dave")
        cid = await env.client.send(OTHER, "bridge.join_room", commands_pb2.JoinRoom(room=OTHER))
        assert (await env.client.result(cid)).status == APPLIED
        assert env.participant(IDENTITY, OTHER) is not None
        cid = await env.client.send(OTHER, "bridge.leave_room", commands_pb2.LeaveRoom())
        assert (await env.client.result(cid)).status == APPLIED
        await eventually(lambda: env.participant(IDENTITY, OTHER) is None, within=10, what="bridge left")

        # Exactly one result per command, each numbered in the room's session.
        results = env.client.results()
        assert all(len(v) == 1 for v in results.values())
        assert len(results) == len(CASES) + 2


@pytest.mark.slow
async def test_plumbing_is_rejected_and_bad_input_dead_lettered(bus: tuple[str, Any]) -> None:
    async with environment(*bus) as env:
        plumbing: dict[str, Message] = {
            "offer": rtc.SessionDescription(type="offer", sdp="v=0"),
            "answer": rtc.SessionDescription(type="answer", sdp="v=0"),
            "trickle": rtc.TrickleRequest(candidateInit="{}"),
            "leave": rtc.LeaveRequest(),
            "sync_state": rtc.SyncState(),
            "simulate": rtc.SimulateScenario(speaker_update=1),
            "ping_req": rtc.Ping(timestamp=1),
            "ping": rtc.Ping(),  # the legacy scalar: any data, the type alone is refused
        }
        assert {command_type(n) for n in plumbing} == NEVER_TYPES
        # The bridge itself answers offers, trickles and pings; these it never sends on its own here.
        watched = ("offer", "leave", "sync_state", "simulate")
        before = {kind: len(env.bridge_requests(kind)) for kind in watched}
        for name, message in plumbing.items():
            cid = await env.client.send(ROOM, name, message)
            result = await env.client.result(cid)
            assert (name, result.status, result.code) == (name, Result.STATUS_REJECTED, "not_allowed")
        assert {kind: len(env.bridge_requests(kind)) for kind in watched} == before

        bad_headers = [("ce_specversion", b"0.3"), ("ce_id", b"x"), ("content-type", b"application/json")]
        await env.client.send_raw(ROOM, b"{not json", bad_headers)
        await env.client.send_raw(ROOM, b"\x00\x01garbage", [])
        await eventually(lambda: len(env.client.dead()) == 2, within=15, what="two dead letters")
        codes = sorted(
            h.get("ce_bridgeerrorcode", h.get("ce-bridgeerrorcode", "")) for h, _ in env.client.dead()
        )
        assert codes == ["bad_envelope", "bad_envelope"]
        payloads = sorted(p for _, p in env.client.dead())
        assert payloads == sorted([b"{not json", b"\x00\x01garbage"])  # the original bytes, unchanged
        assert all(
            h.get("ce_bridgeerror") or h.get("ce-bridgeerror") for h, _ in env.client.dead()
        )  # and a reason
        # The bridge kept going: a good command after the bad ones is applied.
        cid = await env.client.send(ROOM, "update_metadata", rtc.UpdateParticipantMetadata(metadata="after"))
        assert (await env.client.result(cid)).status == APPLIED
        assert env.bridge.commands.stats.dead_lettered == 2


async def run_cli(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_send_cli_prints_the_result(bus: tuple[str, Any]) -> None:
    async with environment(*bus) as env:
        client = env.client
        if isinstance(client, KafkaCommands):
            where = [
                "--kafka",
                client.bootstrap,
                "--topic",
                client.commands_topic,
                "--events-topic",
                client.events.topic,
            ]
        else:
            assert isinstance(client, NatsCommands)
            where = ["--nats", client.url, "--prefix", client.prefix]
        code, out, err = await run_cli("send", ROOM, "update_metadata", "metadata=from-cli", *where)
        assert (code, err) == (0, ""), out
        assert out.startswith("applied io.livekit.command.update_metadata.v1 id=")
        assert env.participant(IDENTITY).info.metadata == "from-cli"

        code, out, _ = await run_cli("send", ROOM, "offer", "--data", '{"type": "offer"}', *where)
        assert code == 2
        assert out.startswith("rejected io.livekit.command.offer.v1")
        assert "code=not_allowed" in out

        code, out, _ = await run_cli("send", "nowhere", "bridge.remove_participant", "identity=x", *where)
        assert code == 2
        assert "code=room_not_owned" in out

        code, _, err = await run_cli("send", ROOM, "mutes", *where)
        assert code == 1
        assert "unknown command 'mutes'" in err
