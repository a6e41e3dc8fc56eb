"""The real LiveKit client SDK accepts the simulator, in single-PC (v1) and dual-PC (v0) mode."""

from __future__ import annotations

import pytest

from support.sdk import sdk_client
from support.signal_client import make_token
from support.simulator import running_sim
from support.waiting import eventually

pytestmark = [pytest.mark.sdk, pytest.mark.slow]


@pytest.mark.parametrize("mode", ["v1", "v0"])
async def test_real_sdk_joins_sees_hears_talks_and_is_kicked(mode: str) -> None:
    async with running_sim() as (server, scenario):
        scenario.join("conf", "alice", name="Alice", metadata="before")
        tone = scenario.publish("conf", "alice", kind="audio")
        pattern = scenario.publish("conf", "alice", kind="video")
        token = make_token("sdk-user", "conf")
        async with sdk_client(server.url, token, mode=mode) as sdk:
            connected = await sdk.wait_for("connected", within=30)
            assert connected["room"] == "conf"
            assert sorted(connected["remote"]["alice"]) == sorted([tone, pattern])
            transport = "v1 single PC" if mode == "v1" else "v0 dual PC"
            assert server.session("conf", "sdk-user").params.mode.value == (
                "single_pc" if mode == "v1" else "dual_pc"
            ), transport

            # Media from the simulator reaches the SDK: the synthetic tone and test pattern.
            await sdk.wait_for("track_subscribed", where=lambda e: e["sid"] == tone)
            await sdk.wait_for("track_subscribed", where=lambda e: e["sid"] == pattern)
            await sdk.wait_for("frames", where=lambda e: e["kind"] == "audio" and e["count"] >= 25, within=20)
            await sdk.wait_for("frames", where=lambda e: e["kind"] == "video" and e["count"] >= 25, within=20)

            # Data both ways; the server stamps the sender's identity.
            assert scenario.send_data("conf", "alice", payload="hi from alice", topic="chat") == 1
            data = await sdk.wait_for("data")
            assert (data["payload"], data["topic"], data["sender"]) == ("hi from alice", "chat", "alice")
            await sdk.command("send-data hello simulator")
            room = server.rooms["conf"]

            def got_sdk_data() -> bool:
                return any(
                    sender == "sdk-user" and p.user.payload == b"hello simulator"
                    for sender, p, _ in room.data_received
                )

            await eventually(got_sdk_data, within=10, what="SDK data packet at the simulator")

            # The SDK publishes audio; the simulator receives frames of it.
            await sdk.command("publish-audio")
            await sdk.wait_for("published")
            media = server.session("conf", "sdk-user").media

            def frames_in() -> int:
                return sum(media.received_frames.values())

            await eventually(lambda: frames_in() >= 25, within=20, what="SDK audio frames at the simulator")

            # Metadata changes arrive as participant updates.
            scenario.set_metadata("conf", "alice", metadata="after")
            changed = await sdk.wait_for("metadata")
            assert (changed["identity"], changed["metadata"]) == ("alice", "after")

            # Kicked: the SDK is told why.
            scenario.kick("conf", "sdk-user")
            gone = await sdk.wait_for("disconnected")
            assert "REMOVED" in gone["reason"].upper()


async def test_real_sdk_falls_back_to_v0_when_the_server_has_no_v1() -> None:
    token = make_token("old-server-user", "conf")
    async with running_sim(v1_enabled=False) as (server, _), sdk_client(server.url, token, mode="v1") as sdk:
        await sdk.wait_for("connected", within=30)
        assert server.session("conf", "old-server-user").params.mode.value == "dual_pc"
