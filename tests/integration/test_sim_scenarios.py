"""Scenarios from YAML files, from the admin endpoints, and load mode all drive real rooms."""

from __future__ import annotations

import asyncio
import io
import secrets
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from bridge.demo import run_demo
from bridge.errors import BadRequest
from bridge.sim.load import LoadGenerator
from support.signal_client import API_SECRET, SignalClient, make_token
from support.simulator import running_sim
from support.waiting import eventually


async def test_yaml_scenario_file_plays_against_a_connected_client(tmp_path: Path) -> None:
    script = tmp_path / "s.yaml"
    script.write_text(
        "room: yaml-room\n"
        "steps:\n"
        "  - {action: wait_for_client}\n"
        "  - {action: join, identity: carol, metadata: m1}\n"
        "  - {action: speak, levels: {carol: 0.5}}\n"
        "  - {action: set_room_metadata, metadata: from-yaml}\n"
    )
    async with running_sim() as (server, scenario):
        client = await SignalClient.open(server.url, make_token("watch", "yaml-room"))
        async with client:
            await client.expect("join")
            await scenario.run_file(script)
            speakers = await client.expect("speakers_changed")
            assert speakers.speakers[0].level == pytest.approx(0.5)
            update = await client.expect("room_update")
            assert update.room.metadata == "from-yaml"


async def test_bad_scenario_steps_say_what_is_wrong(tmp_path: Path) -> None:
    async with running_sim() as (_, scenario):
        with pytest.raises(BadRequest, match="unknown scenario action 'explode'"):
            await scenario.apply({"action": "explode"}, room="r")
        with pytest.raises(BadRequest, match="'join'"):
            await scenario.apply({"action": "join", "identity": "x", "colour": "red"}, room="r")
        bad = tmp_path / "bad.yaml"
        bad.write_text("- just a list\n")
        with pytest.raises(BadRequest, match="steps"):
            await scenario.run_file(bad)


async def test_admin_endpoints_run_actions_and_show_state() -> None:
    async with running_sim() as (server, _):
        url = f"{server.http_url}/admin/rooms/adm/actions"
        steps = [
            {"action": "join", "identity": "dave"},
            {"action": "publish", "identity": "dave", "kind": "video"},
        ]
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=steps) as resp:
                assert resp.status == 401
            auth = {"Authorization": f"Bearer {API_SECRET}"}
            async with http.post(url, json=steps, headers=auth) as resp:
                assert resp.status == 200
                sid, track = (await resp.json())["results"]
                assert sid.startswith("PA_")
                assert track.startswith("TR_")
            async with http.post(url, json={"action": "nope"}, headers=auth) as resp:
                assert resp.status == 400
                assert "unknown scenario action" in (await resp.json())["error"]
            # A token with roomAdmin works as well as the secret; one without is refused.
            admin = {"Authorization": f"Bearer {make_token('ops', 'adm', room_admin=True)}"}
            async with http.get(f"{server.http_url}/admin/rooms/adm", headers=admin) as resp:
                state = await resp.json()
                assert [p["identity"] for p in state["participants"]] == ["dave"]
                assert state["participants"][0]["tracks"][0]["type"] == "VIDEO"
            plain = {"Authorization": f"Bearer {make_token('ops', 'adm')}"}
            async with http.get(f"{server.http_url}/admin/rooms", headers=plain) as resp:
                assert resp.status == 401


async def test_load_mode_spreads_events_over_rooms_at_the_rate() -> None:
    async with running_sim() as (server, _):
        load = LoadGenerator(server, rooms=5, rate_per_s=500)
        clients = [await SignalClient.open(server.url, make_token("bridge", room)) for room in load.rooms[:2]]
        for client in clients:
            await client.expect("join")
        task = asyncio.create_task(load.run())
        await eventually(lambda: load.sent >= 250, within=5, what="250 load events")
        load.stop()
        await task
        for client in clients:
            kinds = set(client.kinds())
            assert {"speakers_changed", "connection_quality", "update"} <= kinds
            await client.close()


@pytest.mark.parametrize("use_nats", [True, False], ids=["embedded-nats", "in-memory-fallback"])
async def test_demo_prints_the_scripted_room(use_nats: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "per-run-secret-" + "x" * 32
    monkeypatch.setattr(secrets, "token_urlsafe", lambda _n=None: secret)
    out = io.StringIO()
    assert await run_demo(out, use_nats=use_nats) == 0
    text = out.getvalue()
    if use_nats:
        assert "nats-server  nats://127.0.0.1:" in text
        assert "CloudEvents from NATS nats://127.0.0.1:" in text
    else:
        assert "CloudEvents from the in-memory bus" in text
    for kind in (
        "signal.join",
        "signal.update",
        "signal.speakers_changed",
        "signal.connection_quality",
        "signal.room_update",
        "data.chat_message",  # over the bridge's data channel
        "data.user",
        "bridge.session_started",
        "bridge.room_snapshot",
        "bridge.session_ended",
    ):
        assert f" {kind} " in text, kind
    assert 'message: "hello bridge"' in text
    assert "demo done:" in text
    assert secret not in text
    assert "eyJ" not in text  # no token in the output


def test_sim_command_starts_and_stops_cleanly() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "sim", "--port", "0", "--api-key", "k", "--api-secret", "s" * 32],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("simulator listening on ws://127.0.0.1:")
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        assert proc.stdout is not None
        proc.stdout.close()
