"""The bridge's HTTP listener against the simulator: probes, metrics, LiveKit webhooks, ListRooms discovery.

Real parts only: the simulator (which signs and POSTs webhooks the way LiveKit does), the bridge on a free
loopback port, an in-memory bus and command source.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest
from livekit import api
from livekit.protocol import models
from livekit.protocol import room as proto

from bridge.app import Bridge
from bridge.bus.memory import InMemoryBus
from bridge.bus.memory_commands import MemoryCommandSource
from bridge.config import load_settings
from bridge.sim.server import SimServer
from bridge.sim.webhooks import sign_webhook, webhook_body
from support.bridge import bridge_environ
from support.metrics import Family, parse
from support.signal_client import API_KEY, API_SECRET
from support.simulator import running_sim
from support.waiting import eventually

WITHIN = 15.0


@contextlib.asynccontextmanager
async def started(
    server: SimServer, *rooms: str, environ: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[Bridge, InMemoryBus, aiohttp.ClientSession]]:
    bus = InMemoryBus()
    settings = load_settings(None, {**bridge_environ(server, *rooms), **(environ or {})})
    bridge = Bridge(
        settings,
        publishers=[bus],
        command_sources=[MemoryCommandSource()],
    )
    await bridge.start()
    try:
        async with aiohttp.ClientSession(base_url=bridge.ops.url) as http:
            yield bridge, bus, http
    finally:
        await bridge.aclose()


async def get(http: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    async with http.get(path) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def scrape(http: aiohttp.ClientSession) -> dict[str, Family]:
    async with http.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(await response.text())


def joined(bridge: Bridge, room: str) -> bool:
    session = bridge.supervisor.sessions.get(room)
    return session is not None and session.ended is None and bool(session.participant_sid)


async def test_livez_and_readyz_follow_rooms_and_buses() -> None:
    async with running_sim() as (server, _):
        server.refusals.joins_status = 503  # LiveKit is overloaded: the room cannot join yet
        async with started(server, "r1") as (bridge, bus, http):
            assert bridge.ops.url.startswith("http://127.0.0.1:")
            assert await get(http, "/livez") == (200, "ok\n")
            status, body = await get(http, "/readyz")
            assert status == 503
            assert body["ready"] is False
            assert body["problems"] == ["rooms: 1 of 1 static rooms not joined yet (r1)"]

            server.refusals.joins_status = None
            await eventually(lambda: joined(bridge, "r1"), within=WITHIN, what="r1 joined")
            assert await get(http, "/readyz") == (200, {"ready": True})

            bus.available = False  # the broker went away
            status, body = await get(http, "/readyz")
            assert (status, body["problems"]) == (503, ["bus memory: not connected"])
            assert await get(http, "/livez") == (200, "ok\n")
            bus.available = True
            assert (await get(http, "/readyz"))[0] == 200

            bridge.supervisor.sessions["r1"].connection.drop()  # a reconnect later does not unready us
            assert (await get(http, "/readyz"))[0] == 200
            port = bridge.ops.port
        with pytest.raises(aiohttp.ClientConnectionError):  # closed with the bridge
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/livez"):
                pass


async def test_a_command_source_that_is_not_subscribed_is_not_ready() -> None:
    async with running_sim() as (server, _), started(server) as (bridge, _, http):
        assert (await get(http, "/readyz"))[0] == 200  # no static rooms: nothing to wait for
        await bridge.command_sources[0].aclose(0)
        assert await get(http, "/readyz") == (
            503,
            {"ready": False, "problems": ["commands memory: not subscribed"]},
        )


async def test_metrics_count_what_the_bridge_does_and_never_name_a_room() -> None:
    async with running_sim() as (server, scenario):
        scenario.join("secret-room-name", "alice")
        async with started(server, "secret-room-name") as (bridge, bus, http):
            await eventually(lambda: joined(bridge, "secret-room-name"), within=WITHIN, what="joined")
            await eventually(lambda: bus.published > 0, within=WITHIN, what="first events published")
            first = await scrape(http)
            assert first["bridge_rooms"].value() == 1
            assert first["bridge_rooms_by_state"].value(state="joined") == 1
            assert first["bridge_bus_connected"].value(bus="memory") == 1
            published = first["bridge_events_published_total"].value(bus="memory")
            assert published > 0
            assert first["bridge_publish_latency_seconds"].samples[-1][2] == published  # _count

            scenario.join("secret-room-name", "bob")  # more room activity -> more events
            await eventually(lambda: bus.published > published, within=WITHIN, what="more events")
            second = await scrape(http)
            assert second["bridge_events_published_total"].value(bus="memory") > published
            async with http.get("/metrics") as response:
                assert "secret-room-name" not in await response.text()


async def test_a_signed_webhook_joins_and_a_finished_room_is_left() -> None:
    async with (
        running_sim() as (server, scenario),
        started(server, environ={"BRIDGE_DISCOVERY__WEBHOOK": "true"}) as (bridge, _, http),
    ):
        assert server.webhooks is not None
        server.webhooks.urls.append(f"{bridge.ops.url}/webhook")
        scenario.join("fresh", "alice")  # LiveKit creates the room: room_started
        await eventually(lambda: joined(bridge, "fresh"), within=WITHIN, what="bridge joined via webhook")
        assert ("room_started", "fresh", 200) in server.webhooks.sent

        async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:
            await lk.room.delete_room(proto.DeleteRoomRequest(room="fresh"))
        sent = server.webhooks.sent
        await eventually(lambda: ("room_finished", "fresh", 200) in sent, within=WITHIN, what="room_finished")
        session = bridge.supervisor.sessions["fresh"]
        await eventually(lambda: session.ended is not None, within=WITHIN, what="session over")
        metrics = await scrape(http)
        accepted = metrics["bridge_webhooks_accepted_total"]
        assert (accepted.value(event="room_started"), accepted.value(event="room_finished")) == (1, 1)
        assert metrics["bridge_discovery_joins_total"].value() == 1


async def test_a_forged_webhook_is_refused_and_joins_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async with (
        running_sim() as (server, _),
        started(server, environ={"BRIDGE_DISCOVERY__WEBHOOK": "true"}) as (bridge, _, http),
    ):
        body = webhook_body("room_started", models.Room(name="intruder", sid="RM_x"))
        forged = sign_webhook(body, API_KEY, "guessed-secret-guessed-secret-guessed")
        caplog.set_level(logging.WARNING, logger="bridge.ops.server")
        async with http.post("/webhook", data=body, headers={"Authorization": forged}) as response:
            assert response.status == 401
            assert await response.json() == {"error": "bad_token"}
        async with http.post("/webhook", data=body) as response:
            assert response.status == 401
        tampered = webhook_body("room_started", models.Room(name="other", sid="RM_y"))
        genuine = sign_webhook(tampered, API_KEY, API_SECRET)
        async with http.post("/webhook", data=body, headers={"Authorization": genuine}) as response:
            assert response.status == 401
        assert bridge.supervisor.sessions == {}
        refusals = [r for r in caplog.records if r.name == "bridge.ops.server" and "refused" in r.message]
        assert [r.levelno for r in refusals] == [logging.WARNING] * 3
        assert all(forged not in r.getMessage() and genuine not in r.getMessage() for r in refusals)
        refused = (await scrape(http))["bridge_webhooks_refused_total"]
        assert refused.value(reason="bad_token") == 1
        assert refused.value(reason="missing_header") == 1
        assert refused.value(reason="body_mismatch") == 1


async def test_webhooks_are_not_served_unless_enabled() -> None:
    async with running_sim() as (server, _), started(server) as (_, _, http):
        body = webhook_body("room_started", models.Room(name="r", sid="RM_r"))
        headers = {"Authorization": sign_webhook(body, API_KEY, API_SECRET)}
        async with http.post("/webhook", data=body, headers=headers) as response:
            assert response.status in (404, 405)


async def test_list_rooms_reconciliation_joins_new_rooms_and_leaves_deleted_ones() -> None:
    environ = {"BRIDGE_DISCOVERY__LIST_ROOMS_INTERVAL_S": "0.1"}
    async with (
        running_sim(rooms=("listed",)) as (server, _),
        started(server, environ=environ) as (bridge, _, http),
    ):
        await eventually(lambda: joined(bridge, "listed"), within=WITHIN, what="existing room joined")
        server.room("later")  # created while we were running, and no webhook told us
        await eventually(lambda: joined(bridge, "later"), within=WITHIN, what="new room joined")

        # The room disappears without its participants being told (a missed room_finished): only the
        # listing says so, and the bridge leaves.
        server.rooms.pop("later").close()
        session = bridge.supervisor.sessions["later"]
        await eventually(lambda: session.ended is not None, within=WITHIN, what="left the vanished room")
        assert session.ended is not None
        assert session.ended.reason == "CLIENT_INITIATED"  # our leave, not the server ending it
        rounds = bridge.discovery.stats.reconciliations
        await eventually(
            lambda: bridge.discovery.stats.reconciliations >= rounds + 2,
            within=WITHIN,
            what="two more rounds",
        )
        assert "later" not in server.rooms  # not joined (and so re-created) again
        assert joined(bridge, "listed")
        metrics = await scrape(http)
        assert metrics["bridge_discovery_joins_total"].value() == 2
        assert metrics["bridge_discovery_leaves_total"].value() == 1
        assert metrics["bridge_discovery_reconciliations_total"].value(outcome="failed") == 0
