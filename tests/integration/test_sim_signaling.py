"""The simulator's signaling behaves like LiveKit's for a client on the wire (no WebRTC needed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from livekit.protocol import models, rtc

from bridge.sim.scenario import Scenario
from bridge.sim.server import SimServer
from support.signal_client import SignalClient, make_token, participant_states, v1_join_request
from support.simulator import running_sim
from support.waiting import eventually

Sim = tuple[SimServer, Scenario]


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    async with running_sim(refresh_interval_s=0.3, join_timeout_s=60) as pair:
        yield pair


async def test_join_comes_first_with_a_realistic_join_response(sim: Sim) -> None:
    server, scenario = sim
    scenario.join("r1", "alice", metadata="m")
    scenario.publish("r1", "alice", kind="audio", synthetic=False)
    async with await SignalClient.open(server.url, make_token("bob", "r1", hidden=True)) as client:
        join = await client.expect("join")
        assert client.kinds()[0] == "join"
        assert join.participant.identity == "bob"
        assert join.participant.sid.startswith("PA_")
        assert join.participant.permission.hidden
        assert join.room.sid.startswith("RM_")
        assert [p.identity for p in join.other_participants] == ["alice"]
        assert join.other_participants[0].tracks[0].mime_type == "audio/opus"
        assert (join.ping_interval, join.ping_timeout) == (5, 15)
        assert join.subscriber_primary
        assert join.server_info.protocol >= 16
        # A refresh_token right away, an offer for the subscriber PC, and our candidates trickled.
        token = await client.expect("refresh_token")
        assert token.count(".") == 2
        offer = await client.expect("offer")
        assert offer.type == "offer"
        assert "m=application" in offer.sdp
        trickle = await client.expect("trickle")
        assert trickle.target == rtc.SUBSCRIBER
        assert '"candidate"' in trickle.candidateInit


async def test_pings_are_answered_and_tokens_refresh_periodically(sim: Sim) -> None:
    server, _ = sim
    async with await SignalClient.open(server.url, make_token("alice", "r1")) as client:
        await client.expect("join")
        sent_at = int(time.time() * 1000)
        await client.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=sent_at, rtt=12)))
        pong = await client.expect("pong_resp")
        assert pong.last_ping_timestamp == sent_at
        assert pong.timestamp >= sent_at
        await client.send(rtc.SignalRequest(ping=sent_at))
        assert await client.expect("pong") >= sent_at
        await eventually(
            lambda: len(client.of("refresh_token")) >= 3, within=5, what="periodic refresh_token"
        )


async def test_json_text_frames_switch_replies_to_json(sim: Sim) -> None:
    server, _ = sim
    async with await SignalClient.open(server.url, make_token("alice", "r1")) as client:
        await client.expect("join")
        assert client.text_frames == 0  # the JoinResponse is always binary
        seen = len(client.responses)
        await client.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=1)), json_mode=True)
        await client.expect("pong_resp", after=seen)
        assert client.text_frames >= 1
        seen = len(client.responses)
        text_before = client.text_frames
        await client.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=2)))
        await client.expect("pong_resp", after=seen)
        await eventually(lambda: client.binary_frames > 1, within=2, what="binary replies again")
        assert client.text_frames == text_before


async def test_malformed_frame_closes_only_that_client(sim: Sim) -> None:
    server, _ = sim
    async with (
        await SignalClient.open(server.url, make_token("good", "r1")) as good,
        await SignalClient.open(server.url, make_token("bad", "r1")) as bad,
    ):
        await good.expect("join")
        await bad.expect("join")
        await bad.send_raw(b"\xff\xff\xff\xff not protobuf")
        await asyncio.wait_for(bad.closed.wait(), 5)
        assert bad.ws.close_code == 1007
        assert server.stats["malformed_frames"] == 1
        seen = len(good.responses)
        await good.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=5)))
        await good.expect("pong_resp", after=seen)
        # The others see the bad client go: it never connected WebRTC, so it is removed at once.
        await eventually(
            lambda: "bad" not in server.rooms["r1"].participants, within=5, what="bad client removed"
        )


async def test_duplicate_identity_evicts_the_first_session(sim: Sim) -> None:
    server, _ = sim
    async with await SignalClient.open(server.url, make_token("alice", "r1")) as first:
        await first.expect("join")
        async with await SignalClient.open(server.url, make_token("alice", "r1")) as second:
            await second.expect("join")
            leave = await first.expect("leave")
            assert leave.reason == models.DUPLICATE_IDENTITY
            assert leave.action == rtc.LeaveRequest.DISCONNECT
            await asyncio.wait_for(first.closed.wait(), 5)


async def test_resume_after_socket_drop_gets_reconnect_updates_and_offer(sim: Sim) -> None:
    server, scenario = sim
    token = make_token("alice", "r1")
    client = await SignalClient.open(server.url, token)
    join = await client.expect("join")
    server.session("r1", "alice")._on_connected()  # as if ICE had connected (no WebRTC in this test)
    scenario.drop_socket("r1", "alice")
    await asyncio.wait_for(client.closed.wait(), 5)
    await client.close()
    params = {"reconnect": "1", "sid": join.participant.sid, "reconnect_reason": "1"}
    async with await SignalClient.open(server.url, token, params=params) as resumed:
        reconnect = await resumed.expect("reconnect")
        assert reconnect.server_info.protocol >= 16
        assert resumed.kinds()[0] == "reconnect"
        update = await resumed.expect("update")
        assert "alice" in participant_states(update)
        await resumed.expect("room_update")
        await resumed.expect("offer")
        assert server.stats["resumes"] == 1


async def test_resume_of_unknown_or_refused_session_gets_state_mismatch(sim: Sim) -> None:
    server, scenario = sim
    params = {"reconnect": "1", "sid": "PA_unknown", "reconnect_reason": "1"}
    async with await SignalClient.open(server.url, make_token("ghost", "r1"), params=params) as client:
        leave = await client.expect("leave")
        assert (leave.reason, leave.action) == (models.STATE_MISMATCH, rtc.LeaveRequest.RECONNECT)
    # A live session is refused too when the scenario says so.
    token = make_token("alice", "r1")
    client = await SignalClient.open(server.url, token)
    join = await client.expect("join")
    server.session("r1", "alice")._on_connected()
    scenario.refuse_resumes()
    scenario.drop_socket("r1", "alice")
    await asyncio.wait_for(client.closed.wait(), 5)
    await client.close()
    params["sid"] = join.participant.sid
    async with await SignalClient.open(server.url, token, params=params) as again:
        leave = await again.expect("leave")
        assert leave.action == rtc.LeaveRequest.RECONNECT


async def test_participant_that_never_connects_webrtc_is_removed_with_join_failure() -> None:
    async with running_sim(join_timeout_s=0.5) as (server, scenario):
        scenario.join("r1", "watcher")
        async with await SignalClient.open(server.url, make_token("alice", "r1")) as client:
            await client.expect("join")
            leave = await client.expect("leave", within=5)
            assert (leave.reason, leave.action) == (models.JOIN_FAILURE, rtc.LeaveRequest.DISCONNECT)
            assert "alice" not in server.rooms["r1"].participants


async def test_socket_closed_before_ice_removes_participant_at_once(sim: Sim) -> None:
    server, _ = sim
    async with await SignalClient.open(server.url, make_token("watcher", "r1")) as watcher:
        await watcher.expect("join")
        client = await SignalClient.open(server.url, make_token("alice", "r1"))
        await client.expect("join")
        await client.close()

        def alice_gone() -> bool:
            return any(
                participant_states(u).get("alice") == models.ParticipantInfo.DISCONNECTED
                for u in watcher.of("update")
            )

        await eventually(alice_gone, within=5, what="DISCONNECTED update for alice")
        gone = [u for u in watcher.of("update") if "alice" in participant_states(u)][-1]
        assert gone.participants[0].disconnect_reason == models.SIGNAL_CLOSE


async def test_v1_join_request_is_honoured(sim: Sim) -> None:
    server, _ = sim
    join_request = rtc.JoinRequest(
        client_info=models.ClientInfo(sdk=models.ClientInfo.PYTHON, protocol=17),
        metadata="from-join-request",
        participant_attributes={"role": "bot"},
    )
    params = {"join_request": v1_join_request(join_request)}
    async with await SignalClient.open(
        server.url,
        make_token("alice", "r1", can_update_own_metadata=True),
        path="/rtc/v1",
        params=params,
        bearer=True,
    ) as client:
        join = await client.expect("join")
        assert join.participant.metadata == "from-join-request"
        assert join.participant.attributes["role"] == "bot"
        assert not join.subscriber_primary  # single PC: the client offers


@pytest.mark.parametrize(
    ("action", "stays"),
    [("resume", True), ("reconnect", False), ("disconnect", False)],
)
async def test_server_leave_with_each_action(sim: Sim, action: str, stays: bool) -> None:
    server, scenario = sim
    async with await SignalClient.open(server.url, make_token("alice", "r1")) as client:
        await client.expect("join")
        server.session("r1", "alice")._on_connected()
        scenario.server_leave("r1", "alice", reason="server_shutdown", action=action)
        leave = await client.expect("leave")
        assert leave.reason == models.SERVER_SHUTDOWN
        assert rtc.LeaveRequest.Action.Name(leave.action) == action.upper()
        await asyncio.wait_for(client.closed.wait(), 5)
        # RESUME keeps the participant for a resume; the others end it.
        assert ("alice" in server.rooms["r1"].participants) is stays
