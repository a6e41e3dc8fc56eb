"""Commands sent over a real NATS server reach a real LiveKit SDK participant the way LiveKit would
deliver them: room metadata, the participant's own metadata, data, a mute, an RPC, and removal."""

from __future__ import annotations

import pytest
from livekit.protocol import rtc

from bridge._proto import commands_pb2, events_pb2
from bridge.app import Bridge
from bridge.config import load_settings
from support.brokers import NatsServer, unique_name
from support.command_clients import NatsCommands
from support.sdk import sdk_client
from support.signal_client import API_KEY, API_SECRET, make_token
from support.simulator import running_sim
from support.waiting import eventually

pytestmark = [pytest.mark.sdk, pytest.mark.slow]

ROOM = "sdk-commands"
APPLIED = events_pb2.CommandResult.STATUS_APPLIED


async def test_commands_reach_a_real_sdk_participant(nats_server: NatsServer) -> None:
    prefix = unique_name("lksdk").replace("-", "_")
    client = NatsCommands(nats_server.url, prefix=prefix)
    await client.start()
    try:
        async with (
            running_sim() as (server, _),
            sdk_client(server.url, make_token("sdk-user", ROOM), mode="v1") as sdk,
        ):
            await sdk.wait_for("connected", within=30)
            await sdk.command("publish-audio")
            sid = (await sdk.wait_for("published"))["sid"]
            settings = load_settings(
                None,
                {
                    "BRIDGE_LIVEKIT__URL": server.url,
                    "BRIDGE_LIVEKIT__API_KEY": API_KEY,
                    "BRIDGE_LIVEKIT__API_SECRET": API_SECRET,
                    "BRIDGE_LIVEKIT__CAN_PUBLISH": "true",
                    "BRIDGE_ROOMS__STATIC": f"[{ROOM}]",
                    "BRIDGE_HTTP__LISTEN": "127.0.0.1:0",
                    "BRIDGE_NATS__SERVERS": nats_server.url,
                    "BRIDGE_NATS__SUBJECT_PREFIX": prefix,
                },
            )
            bridge = Bridge(settings)
            await bridge.start()
            try:
                await eventually(
                    lambda: (
                        bool(bridge.supervisor.sessions[ROOM].participant_sid)
                        and all(s.ready for s in bridge.command_sources)
                    ),
                    within=30,
                    what="bridge in the room and consuming commands",
                )

                async def applied(name: str, message: object) -> events_pb2.CommandResult:
                    cid = await client.send(ROOM, name, message)  # type: ignore[arg-type]
                    result = await client.result(cid)
                    assert (name, result.status, result.code) == (name, APPLIED, ""), result.message
                    return result

                await applied("bridge.update_room_metadata", commands_pb2.UpdateRoomMetadata(metadata="m1"))
                await sdk.wait_for("room_metadata", where=lambda e: e["metadata"] == "m1")

                update = commands_pb2.UpdateParticipant(identity="sdk-user", metadata="from-the-bus")
                await applied("bridge.update_participant", update)
                await sdk.wait_for(
                    "metadata",
                    where=lambda e: (e["identity"], e["metadata"]) == ("sdk-user", "from-the-bus"),
                )

                data = commands_pb2.SendData(
                    payload=b"hello sdk", topic="bus", destination_identities=["sdk-user"]
                )
                await applied("bridge.send_data", data)
                await sdk.wait_for("data", where=lambda e: (e["payload"], e["topic"]) == ("hello sdk", "bus"))

                await applied(
                    "bridge.mute_track",
                    commands_pb2.MuteTrack(identity="sdk-user", track_sid=sid, muted=True),
                )
                await sdk.wait_for("track_muted", where=lambda e: e["sid"] == sid)

                rpc = commands_pb2.PerformRpc(destination_identity="sdk-user", method="echo", payload="ping")
                result = await applied("bridge.perform_rpc", rpc)
                assert result.response == b"echo:ping"
                await sdk.wait_for("rpc", where=lambda e: e["payload"] == "ping")

                # A signal command runs as the bridge's own participant: LiveKit refuses a mute of a
                # track it does not own, and the refusal comes back as the result.
                cid = await client.send(ROOM, "mute", rtc.MuteTrackRequest(sid=sid, muted=False))
                refused = await client.result(cid)
                assert (refused.status, refused.code) == (
                    events_pb2.CommandResult.STATUS_FAILED,
                    "not_found",
                )

                await applied(
                    "bridge.remove_participant", commands_pb2.RemoveParticipant(identity="sdk-user")
                )
                gone = await sdk.wait_for("disconnected")
                assert "REMOVED" in gone["reason"]
            finally:
                await bridge.aclose()
    finally:
        await client.aclose()
