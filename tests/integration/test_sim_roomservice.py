"""The simulator's RoomService (Twirp) and the bridge's ServerApi adapter, against connected clients.

Every method is called through the real ``livekit.api`` client and through ``ServerApi``; the assertions
are on what a connected signaling client receives, as it would from LiveKit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from livekit import api
from livekit.api.twirp_client import TwirpClient
from livekit.protocol import models, rtc
from livekit.protocol import room as proto

from bridge._proto import commands_pb2
from bridge.errors import ServerApiError
from bridge.rooms.server_api import ServerApi
from bridge.sim.scenario import Scenario
from bridge.sim.server import SimServer
from support.bridge import bridge_settings
from support.data_peer import data_peer
from support.signal_client import API_KEY, API_SECRET, SignalClient, make_token
from support.simulator import running_sim
from support.waiting import eventually

ROOM = "r1"


@dataclass
class Env:
    server: SimServer
    scenario: Scenario
    lk: api.LiveKitAPI
    bridge: ServerApi

    async def client(self, identity: str, room: str = ROOM) -> SignalClient:
        client = await SignalClient.open(self.server.url, make_token(identity, room))
        await client.expect("join")
        return client


@contextlib.asynccontextmanager
async def environment(**config: object) -> AsyncIterator[Env]:
    async with running_sim(**config) as (server, scenario):
        bridge = ServerApi(bridge_settings(server, ROOM).livekit, timeout_s=5)
        async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET, failover=False) as lk:
            try:
                yield Env(server, scenario, lk, bridge)
            finally:
                await bridge.aclose()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with environment() as e:
        yield e


async def next_update_of(
    client: SignalClient,
    identity: str,
    *,
    after: int,
    where: Callable[[models.ParticipantInfo], bool] = lambda info: True,
) -> models.ParticipantInfo:
    """The first ParticipantInfo of ``identity`` matching ``where`` in an update at index >= ``after``."""

    def find() -> models.ParticipantInfo | None:
        for response in client.responses[after:]:
            if response.WhichOneof("message") == "update":
                for info in response.update.participants:
                    if info.identity == identity and where(info):
                        return info
        return None

    await eventually(lambda: find() is not None, within=5, what=f"a participant_update about {identity}")
    found = find()
    assert found is not None
    return found


# --------------------------------------------------------------------------- participants


async def test_update_participant_reaches_everyone_as_a_versioned_update(env: Env) -> None:
    alice, bob = await env.client("alice"), await env.client("bob")
    try:
        start = env.server.rooms[ROOM].participant("alice").info.version
        seen, seen_a = len(bob.responses), len(alice.responses)
        info = await env.lk.room.update_participant(
            proto.UpdateParticipantRequest(
                room=ROOM, identity="alice", metadata="m1", name="Alice", attributes={"a": "1", "b": "2"}
            )
        )
        assert (info.metadata, info.name, dict(info.attributes)) == ("m1", "Alice", {"a": "1", "b": "2"})
        got = await next_update_of(bob, "alice", after=seen)
        assert (got.metadata, got.name, dict(got.attributes)) == ("m1", "Alice", {"a": "1", "b": "2"})
        assert got.version > start
        await alice.expect("refresh_token", after=seen_a)  # the token carries the new name and metadata

        # Through the bridge: an empty value deletes an attribute; the permission is replaced.
        seen, version = len(bob.responses), got.version
        msg = commands_pb2.UpdateParticipant(
            identity="alice",
            attributes={"a": ""},
            permission=models.ParticipantPermission(can_subscribe=True, can_publish=False),
        )
        await env.bridge.update_participant(ROOM, msg)
        # The attribute change and the new permission arrive as two updates, as in LiveKit.
        got = await next_update_of(
            bob, "alice", after=seen, where=lambda info: not info.permission.can_publish
        )
        assert dict(got.attributes) == {"b": "2"}
        assert got.metadata == "m1"  # empty fields leave the value alone
        assert not got.permission.can_publish_data
        assert got.version > version
        assert env.server.stats["twirp_UpdateParticipant"] == 2
    finally:
        await alice.close()
        await bob.close()


async def test_get_and_list_participants(env: Env) -> None:
    alice = await env.client("alice")
    try:
        env.scenario.join(ROOM, "sim-carol")
        info = await env.lk.room.get_participant(proto.RoomParticipantIdentity(room=ROOM, identity="alice"))
        assert info.identity == "alice"
        assert info.sid == env.server.rooms[ROOM].participant("alice").sid
        listed = await env.lk.room.list_participants(proto.ListParticipantsRequest(room=ROOM))
        assert sorted(p.identity for p in listed.participants) == ["alice", "sim-carol"]
    finally:
        await alice.close()


async def test_remove_participant_sends_leave_participant_removed(env: Env) -> None:
    alice, bob, carol = await env.client("alice"), await env.client("bob"), await env.client("carol")
    try:
        seen = len(bob.responses)
        await env.lk.room.remove_participant(proto.RoomParticipantIdentity(room=ROOM, identity="alice"))
        leave = await alice.expect("leave")
        assert (leave.reason, leave.action) == (models.PARTICIPANT_REMOVED, rtc.LeaveRequest.DISCONNECT)
        gone = await next_update_of(bob, "alice", after=seen)
        assert gone.state == models.ParticipantInfo.DISCONNECTED
        assert gone.disconnect_reason == models.PARTICIPANT_REMOVED

        await env.bridge.remove_participant(ROOM, commands_pb2.RemoveParticipant(identity="carol"))
        leave = await carol.expect("leave")
        assert leave.reason == models.PARTICIPANT_REMOVED
        assert "carol" not in env.server.rooms[ROOM].participants

        with pytest.raises(ServerApiError) as caught:
            await env.bridge.remove_participant(ROOM, commands_pb2.RemoveParticipant(identity="carol"))
        assert (caught.value.code, caught.value.retriable) == ("not_found", False)
    finally:
        for c in (alice, bob, carol):
            await c.close()


# --------------------------------------------------------------------------------- tracks


async def publish(client: SignalClient, cid: str = "mic-1") -> str:
    seen = len(client.responses)
    await client.send(
        rtc.SignalRequest(add_track=rtc.AddTrackRequest(cid=cid, name="mic", type=models.AUDIO))
    )
    published = await client.expect("track_published", after=seen)
    return str(published.track.sid)


async def test_mute_published_track_tells_the_publisher_and_the_room() -> None:
    async with environment(remote_unmute=True) as env:
        alice, bob = await env.client("alice"), await env.client("bob")
        try:
            sid = await publish(alice)
            seen_a, seen_b = len(alice.responses), len(bob.responses)
            reply = await env.lk.room.mute_published_track(
                proto.MuteRoomTrackRequest(room=ROOM, identity="alice", track_sid=sid, muted=True)
            )
            assert reply.track.sid == sid
            assert reply.track.muted
            mute = await alice.expect("mute", after=seen_a)
            assert (mute.sid, mute.muted) == (sid, True)
            got = await next_update_of(bob, "alice", after=seen_b)
            assert got.tracks[0].muted

            seen_a, seen_b = len(alice.responses), len(bob.responses)
            await env.bridge.mute_track(
                ROOM, commands_pb2.MuteTrack(identity="alice", track_sid=sid, muted=False)
            )
            mute = await alice.expect("mute", after=seen_a)
            assert (mute.sid, mute.muted) == (sid, False)
            got = await next_update_of(bob, "alice", after=seen_b)
            assert not got.tracks[0].muted

            with pytest.raises(ServerApiError) as caught:
                await env.bridge.mute_track(
                    ROOM, commands_pb2.MuteTrack(identity="alice", track_sid="TR_nope", muted=True)
                )
            assert caught.value.code == "not_found"
        finally:
            await alice.close()
            await bob.close()


async def test_remote_unmute_is_refused_by_default(env: Env) -> None:
    alice = await env.client("alice")
    try:
        sid = await publish(alice)
        with pytest.raises(ServerApiError) as caught:
            await env.bridge.mute_track(
                ROOM, commands_pb2.MuteTrack(identity="alice", track_sid=sid, muted=False)
            )
        assert (caught.value.code, caught.value.status, caught.value.retriable) == (
            "failed_precondition",
            412,
            False,
        )
        assert "mute" not in alice.kinds()
    finally:
        await alice.close()


# ---------------------------------------------------------------------------------- rooms


async def test_update_room_metadata_sends_room_update(env: Env) -> None:
    bob = await env.client("bob")
    try:
        seen = len(bob.responses)
        room = await env.lk.room.update_room_metadata(
            proto.UpdateRoomMetadataRequest(room=ROOM, metadata="one")
        )
        assert room.metadata == "one"
        assert (await bob.expect("room_update", after=seen)).room.metadata == "one"
        seen = len(bob.responses)
        await env.bridge.update_room_metadata(ROOM, commands_pb2.UpdateRoomMetadata(metadata="two"))
        assert (await bob.expect("room_update", after=seen)).room.metadata == "two"

        with pytest.raises(ServerApiError) as caught:
            await env.bridge.update_room_metadata("nowhere", commands_pb2.UpdateRoomMetadata(metadata="x"))
        assert (caught.value.code, caught.value.status, caught.value.retriable) == ("not_found", 404, False)
    finally:
        await bob.close()


async def test_create_list_and_delete_rooms(env: Env) -> None:
    created = await env.lk.room.create_room(
        proto.CreateRoomRequest(name="fresh", metadata="hello", empty_timeout=7)
    )
    assert (created.name, created.metadata, created.empty_timeout) == ("fresh", "hello", 7)
    assert created.sid.startswith("RM_")
    listed = await env.lk.room.list_rooms(proto.ListRoomsRequest(names=["fresh"]))
    assert [r.name for r in listed.rooms] == ["fresh"]

    alice = await SignalClient.open(env.server.url, make_token("alice", "fresh"))
    try:
        await alice.expect("join")
        assert "fresh" in await env.bridge.list_rooms()
        await env.lk.room.delete_room(proto.DeleteRoomRequest(room="fresh"))
        leave = await alice.expect("leave")
        assert (leave.reason, leave.action) == (models.ROOM_DELETED, rtc.LeaveRequest.DISCONNECT)
        assert "fresh" not in await env.bridge.list_rooms()
        with pytest.raises(api.TwirpError) as caught:
            await env.lk.room.delete_room(proto.DeleteRoomRequest(room="fresh"))
        assert (caught.value.code, caught.value.status) == ("not_found", 404)
    finally:
        await alice.close()


# ------------------------------------------------------------------------- data and RPC


async def test_send_data_arrives_on_the_data_channel_without_a_sender(env: Env) -> None:
    async with (
        data_peer(env.server.url, "bob", ROOM) as bob,
        data_peer(env.server.url, "carol", ROOM) as carol,
    ):
        await env.lk.room.send_data(
            proto.SendDataRequest(
                room=ROOM,
                data=b"for bob",
                kind=models.DataPacket.RELIABLE,
                topic="t1",
                destination_identities=["bob"],
            )
        )
        label, packet = await bob.next_packet("user")
        assert label == "_reliable"
        assert (packet.user.payload, packet.user.topic, packet.kind) == (
            b"for bob",
            "t1",
            models.DataPacket.RELIABLE,
        )
        assert (packet.participant_identity, packet.participant_sid) == ("", "")

        # To everyone, lossy, through the bridge.
        seen_b, seen_c = len(bob.received), len(carol.received)
        await env.bridge.send_data(ROOM, commands_pb2.SendData(payload=b"all", topic="t2", lossy=True))
        for peer, seen in ((bob, seen_b), (carol, seen_c)):
            label, packet = await peer.next_packet("user", after=seen)
            assert (label, packet.user.payload, packet.user.topic) == ("_lossy", b"all", "t2")
            assert packet.kind == models.DataPacket.LOSSY
            assert packet.participant_identity == ""

        # Reliable is ordered: once carol has this one, she would have had "for bob" already.
        seen_c = len(carol.received)
        await env.bridge.send_data(ROOM, commands_pb2.SendData(payload=b"after"))
        _, packet = await carol.next_packet("user", after=seen_c)
        assert packet.user.payload == b"after"
        assert b"for bob" not in [p.user.payload for _, p in carol.received]


async def test_perform_rpc_round_trip_and_errors(env: Env) -> None:
    async with data_peer(env.server.url, "bob", ROOM) as bob:

        def answer(packet: models.DataPacket) -> None:
            if packet.WhichOneof("value") != "rpc_request":
                return
            req = packet.rpc_request
            back = [packet.participant_identity]  # LiveKit puts the request id where the caller goes
            bob.send(models.DataPacket(destination_identities=back, rpc_ack=models.RpcAck(request_id=req.id)))
            if req.method == "boom":
                response = models.RpcResponse(
                    request_id=req.id, error=models.RpcError(code=1500, message="it broke", data="d")
                )
            else:
                response = models.RpcResponse(request_id=req.id, payload=f"{req.method}:{req.payload}")
            bob.send(models.DataPacket(destination_identities=back, rpc_response=response))

        bob.on_packet = answer
        msg = commands_pb2.PerformRpc(
            destination_identity="bob", method="echo", payload="hi", response_timeout_ms=3000
        )
        assert await env.bridge.perform_rpc(ROOM, msg) == "echo:hi"
        _, packet = await bob.next_packet("rpc_request")
        assert packet.rpc_request.response_timeout_ms == 3000
        assert packet.rpc_request.version == 1

        # livekit-api has no perform_rpc method: its own Twirp client speaks the same wire format.
        async with aiohttp.ClientSession() as session:
            token = api.AccessToken(API_KEY, API_SECRET).with_grants(
                api.VideoGrants(room_admin=True, room=ROOM)
            )
            reply = await TwirpClient(session, env.server.http_url, "livekit", failover=False).request(
                "RoomService",
                "PerformRpc",
                proto.PerformRpcRequest(room=ROOM, destination_identity="bob", method="ping", payload="x"),
                {"Authorization": f"Bearer {token.to_jwt()}"},
                proto.PerformRpcResponse,
            )
        assert reply.payload == "ping:x"

        with pytest.raises(ServerApiError) as caught:
            await env.bridge.perform_rpc(
                ROOM, commands_pb2.PerformRpc(destination_identity="bob", method="boom")
            )
        assert caught.value.code == "internal"
        assert "RpcError 1500: it broke: d" in caught.value.message

        with pytest.raises(ServerApiError) as caught:
            await env.bridge.perform_rpc(
                ROOM, commands_pb2.PerformRpc(destination_identity="nobody", method="x")
            )
        assert (caught.value.code, caught.value.retriable) == ("not_found", False)
        # The replies to the server's RPCs never reached anyone else, and nothing is left pending.
        assert env.server.rooms[ROOM].rpc_replies == {}


async def test_perform_rpc_without_an_ack_times_out(env: Env) -> None:
    async with data_peer(env.server.url, "bob", ROOM) as bob:
        with pytest.raises(ServerApiError) as caught:
            await env.bridge.perform_rpc(
                ROOM, commands_pb2.PerformRpc(destination_identity="bob", method="m", response_timeout_ms=300)
            )
        assert caught.value.code == "canceled"
        assert caught.value.message == "RpcError 1501: Connection timeout"  # no ack within LiveKit's 2 s
        await bob.next_packet("rpc_request")


# ------------------------------------------------------------------------------ auth and wire


async def post(
    server: SimServer,
    method: str,
    body: bytes | str,
    *,
    token: str | None,
    content_type: str = "application/json",
) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = f"{server.http_url}/twirp/livekit.RoomService/{method}"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_json_bodies_are_answered_in_json(env: Env) -> None:
    env.scenario.join(ROOM, "alice", metadata="m")
    token = make_token("admin", ROOM, room_admin=True)
    status, body = await post(env.server, "ListParticipants", '{"room": "r1"}', token=token)
    assert status == 200
    participants = body["participants"]
    assert isinstance(participants, list)
    assert [(p["identity"], p["metadata"]) for p in participants] == [("alice", "m")]
    status, body = await post(
        env.server, "UpdateParticipant", '{"room": "r1", "identity": "alice", "metadata": "n"}', token=token
    )
    assert (status, body["metadata"], body["identity"]) == (200, "n", "alice")
    status, body = await post(
        env.server, "GetParticipant", '{"room": "r1", "identity": "alice"}', token=token
    )
    assert "joined_at" in body
    # camelCase keys are accepted too, and replies use proto field names.
    status, body = await post(
        env.server,
        "CreateRoom",
        '{"name": "j", "emptyTimeout": 9}',
        token=make_token("x", "", room_create=True),
    )
    assert (status, body["name"], body["empty_timeout"]) == (200, "j", 9)


@pytest.mark.parametrize(
    ("token", "status", "code"),
    [
        (
            make_token("x", ROOM, room_admin=True, secret="wrong-secret-wrong-secret-wrong-32"),
            401,
            "unauthenticated",
        ),
        (None, 401, "unauthenticated"),
        (make_token("x", ROOM), 403, "permission_denied"),  # no roomAdmin
        (make_token("x", "other", room_admin=True), 403, "permission_denied"),  # admin of another room
    ],
)
async def test_admin_methods_need_room_admin_for_that_room(
    env: Env, token: str | None, status: int, code: str
) -> None:
    got, body = await post(env.server, "UpdateRoomMetadata", '{"room": "r1", "metadata": "x"}', token=token)
    assert (got, body["code"]) == (status, code)
    assert isinstance(body["msg"], str)
    assert body["msg"]
    assert env.server.rooms.get(ROOM) is None or env.server.rooms[ROOM].info.metadata != "x"


async def test_room_list_and_create_grants(env: Env) -> None:
    admin = make_token("x", ROOM, room_admin=True)
    assert (await post(env.server, "ListRooms", "{}", token=admin))[1]["code"] == "permission_denied"
    assert (await post(env.server, "CreateRoom", '{"name": "n"}', token=admin))[0] == 403
    assert (await post(env.server, "ListRooms", "{}", token=make_token("x", "", room_list=True)))[0] == 200
    status, body = await post(env.server, "Nope", "{}", token=admin)
    assert (status, body["code"]) == (404, "bad_route")
    # The body names the room a grant is checked against, so it is parsed first.
    status, body = await post(
        env.server, "ListRooms", b"\xff\xff", token=admin, content_type="application/protobuf"
    )
    assert (status, body["code"]) == (400, "malformed")
    status, body = await post(env.server, "ListRooms", "{}", token=admin, content_type="text/plain")
    assert (status, body["code"]) == (404, "bad_route")


async def test_wrong_secret_is_unauthenticated_and_never_echoed() -> None:
    async with running_sim() as (server, _):
        wrong = "a-wrong-secret-that-must-not-leak-32"
        settings = bridge_settings(server, ROOM, api_secret=wrong).livekit
        bridge = ServerApi(settings, timeout_s=5)
        try:
            with pytest.raises(ServerApiError) as caught:
                await bridge.list_rooms()
        finally:
            await bridge.aclose()
        err = caught.value
        assert (err.code, err.status, err.retriable) == ("unauthenticated", 401, False)
        assert wrong not in str(err)
        assert "eyJ" not in str(err)


async def test_a_stopped_simulator_is_a_retriable_error() -> None:
    async with running_sim() as (server, _):
        settings = bridge_settings(server, ROOM).livekit
    bridge = ServerApi(settings, timeout_s=5)
    try:
        with pytest.raises(ServerApiError) as caught:
            await bridge.list_rooms()
    finally:
        await bridge.aclose()
    assert (caught.value.code, caught.value.retriable) == ("unavailable", True)
    assert API_SECRET not in str(caught.value)


async def test_a_server_that_never_answers_times_out_retriably() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    async with running_sim() as (server, _):
        settings = bridge_settings(server, ROOM, url=f"ws://127.0.0.1:{port}").livekit
    bridge = ServerApi(settings, timeout_s=0.3)
    try:
        with pytest.raises(ServerApiError) as caught:
            await bridge.list_rooms()
    finally:
        await bridge.aclose()
        for writer in accepted:
            writer.close()
        silent.close()
        await silent.wait_closed()
    assert (caught.value.code, caught.value.retriable) == ("timeout", True)
