"""The simulator's HTTP gate answers like LiveKit: statuses and bodies a client can act on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import jwt
import pytest
import websockets
from livekit.protocol import rtc

from bridge.sim.server import SimServer
from support.signal_client import API_KEY, API_SECRET, SignalClient, make_token, v1_join_request
from support.simulator import running_sim


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with running_sim(auto_create_rooms=False, rooms=("lobby",)) as (server, _):
        yield server


async def upgrade_status(sim: SimServer, path: str, **params: str) -> tuple[int, str]:
    """Try the WebSocket upgrade; return the HTTP status and body of the refusal."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    try:
        ws = await websockets.connect(f"{sim.url}{path}?{query}")
    except websockets.InvalidStatus as exc:
        return exc.response.status_code, exc.response.body.decode() if exc.response.body else ""
    await ws.close()
    return 101, ""


async def validate(sim: SimServer, path: str, **params: str) -> tuple[int, str, str | None]:
    async with aiohttp.ClientSession() as http, http.get(f"{sim.http_url}{path}", params=params) as resp:
        return resp.status, await resp.text(), resp.headers.get("Access-Control-Allow-Origin")


@pytest.mark.parametrize(
    ("token", "status", "body"),
    [
        (None, 401, "permissions denied"),
        ("not-a-jwt", 401, "invalid authorization token"),
        (
            make_token("a", "lobby", secret="wrong-secret-wrong-secret-wrong-x"),
            401,
            "invalid authorization token",
        ),
        (make_token("a", "lobby", key="otherkey"), 401, "invalid API key"),
        (make_token("a", "lobby", ttl_s=-3600), 401, "expired"),
        (make_token("a", "lobby", room_join=False), 401, "permissions denied"),
        (make_token("", "lobby"), 400, "identity"),
        (make_token("a", ""), 400, "room name"),
        (make_token("a", "no-such-room"), 404, "requested room does not exist"),
    ],
)
async def test_bad_joins_get_livekit_statuses(
    sim: SimServer, token: str | None, status: int, body: str
) -> None:
    params = {"access_token": token} if token else {}
    got_status, got_body = await upgrade_status(sim, "/rtc", **params)
    assert got_status == status
    assert body in got_body
    # The validate endpoints give the same answer over plain HTTP, readable from a browser.
    for path in ("/rtc/validate", "/rtc/v1/validate"):
        v_status, v_body, cors = await validate(sim, path, **params)
        assert (v_status, cors) == (status, "*")
        assert body in v_body


async def test_token_without_exp_is_refused(sim: SimServer) -> None:
    token = jwt.encode(
        {"iss": API_KEY, "sub": "a", "video": {"roomJoin": True, "room": "lobby"}},
        API_SECRET,
        algorithm="HS256",
    )
    assert (await upgrade_status(sim, "/rtc", access_token=token))[0] == 401


async def test_valid_token_validates_and_upgrades(sim: SimServer) -> None:
    token = make_token("alice", "lobby")
    assert await validate(sim, "/rtc/validate", access_token=token) == (200, "success", "*")
    async with await SignalClient.open(sim.url, token) as client:
        join = await client.expect("join")
        assert join.room.name == "lobby"


async def test_bearer_header_wins_over_query(sim: SimServer) -> None:
    good = make_token("alice", "lobby")
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {good}"}
        async with http.get(
            f"{sim.http_url}/rtc/validate", params={"access_token": "junk"}, headers=headers
        ) as r:
            assert r.status == 200
        async with http.get(f"{sim.http_url}/rtc/validate", headers={"Authorization": "Basic abc"}) as r:
            assert r.status == 401
            assert "Must start with Bearer" in await r.text()


async def test_v1_requires_a_valid_join_request(sim: SimServer) -> None:
    token = make_token("alice", "lobby")
    assert (await upgrade_status(sim, "/rtc/v1", access_token=token))[0] == 400
    status, body = await upgrade_status(sim, "/rtc/v1", access_token=token, join_request="!!notbase64")
    assert status == 400
    assert "join_request" in body
    good = v1_join_request(rtc.JoinRequest(metadata="m"))
    assert (await validate(sim, "/rtc/v1/validate", access_token=token, join_request=good))[0] == 200


async def test_plain_get_on_rtc_is_404(sim: SimServer) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{sim.http_url}/rtc") as resp:
        assert resp.status == 404


async def test_v1_can_be_switched_off_for_fallback_tests() -> None:
    async with running_sim(v1_enabled=False) as (server, _):
        token = make_token("alice", "lobby")
        assert (await upgrade_status(server, "/rtc/v1", access_token=token))[0] == 404
        # JS clients fall back to v0 on a 404 from /rtc/v1/validate whose body is not "room does not exist".
        status, body, _ = await validate(server, "/rtc/v1/validate", access_token=token)
        assert status == 404
        assert "requested room does not exist" not in body
        assert (await validate(server, "/rtc/validate", access_token=token))[0] == 200
