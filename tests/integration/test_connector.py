"""The room connector against the simulator, with fault injection: it stays, recovers, and stops right."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from livekit.protocol import models

from bridge.rooms.session import RoomSession
from bridge.rooms.supervisor import RoomSupervisor
from bridge.signaling.protocol import Ended, SessionState
from bridge.sim.scenario import Scenario
from bridge.sim.server import SimServer
from support.bridge import bridge_settings
from support.signal_client import SignalClient, make_token
from support.simulator import running_sim
from support.waiting import eventually

IDENTITY = "livekit-bridge"
Sim = tuple[SimServer, Scenario]


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    async with running_sim(join_timeout_s=3, ping_interval_s=1, ping_timeout_s=3) as pair:
        yield pair


def active(server: SimServer, room: str) -> bool:
    r = server.rooms.get(room)
    p = r.participants.get(IDENTITY) if r else None
    return p is not None and p.info.state == models.ParticipantInfo.ACTIVE


async def start(server: SimServer, room: str = "r1") -> tuple[RoomSession, asyncio.Task[Ended | None]]:
    session = RoomSession(settings=bridge_settings(server, room).livekit, room=room)
    task = asyncio.create_task(session.run())
    await eventually(lambda: active(server, room), within=15, what=f"bridge ACTIVE in {room}")
    return session, task


async def stop(session: RoomSession, task: asyncio.Task[Ended | None]) -> None:
    session.leave()
    await asyncio.wait_for(task, 10)


async def test_joins_hidden_connects_webrtc_and_outlives_the_join_timeout(sim: Sim) -> None:
    server, scenario = sim
    scenario.join("r1", "alice")
    session, task = await start(server)
    participant = server.rooms["r1"].participant(IDENTITY)
    assert participant.hidden
    assert session.media.connected
    joined_at = time.monotonic()
    # The simulator removes participants whose PeerConnection is not up 3 s after join.
    await asyncio.sleep(max(0.0, 3.5 - (time.monotonic() - joined_at)))
    assert active(server, "r1")
    assert session.state is SessionState.JOINED
    await stop(session, task)
    assert IDENTITY not in server.rooms["r1"].participants


async def test_auto_subscribe_setting_receives_and_drains_media(sim: Sim) -> None:
    server, scenario = sim
    scenario.join("r1", "alice")
    tone = scenario.publish("r1", "alice", kind="audio")
    session = RoomSession(settings=bridge_settings(server, "r1", auto_subscribe=True).livekit, room="r1")
    task = asyncio.create_task(session.run())
    try:
        await eventually(
            lambda: any(t.track_id == tone and t.frames >= 25 for t in session.media.tracks()),
            within=15,
            what="25 frames of alice's tone drained",
        )
    finally:
        await stop(session, task)


async def test_without_auto_subscribe_no_media_is_sent(sim: Sim) -> None:
    server, scenario = sim
    scenario.join("r1", "alice")
    scenario.publish("r1", "alice", kind="audio")
    session, task = await start(server)
    assert session.media.tracks() == []
    assert server.rooms["r1"].participant("alice").subscribed_by == {}
    await stop(session, task)


async def test_socket_drop_is_resumed_with_the_same_sid_and_state_resynced(sim: Sim) -> None:
    server, scenario = sim
    session, task = await start(server)
    sid = session.participant_sid
    scenario.drop_socket("r1", IDENTITY)
    await eventually(lambda: session.resumes == 1, within=10, what="a resume")
    assert session.participant_sid == sid
    assert server.rooms["r1"].participant(IDENTITY).sid == sid
    requests = server.session("r1", IDENTITY).requests
    await eventually(
        lambda: any(r.WhichOneof("message") == "sync_state" for r in requests),
        within=5,
        what="sync_state after the resume",
    )
    assert session.rejoins == 0
    await stop(session, task)


async def test_refreshed_token_is_the_one_used_to_resume(sim: Sim) -> None:
    server, scenario = sim
    session, task = await start(server)
    fresh = scenario.refresh_token("r1", IDENTITY)
    await eventually(lambda: session.protocol.token == fresh, within=5, what="refresh_token adopted")
    scenario.drop_socket("r1", IDENTITY)
    await eventually(lambda: session.resumes == 1, within=10, what="a resume")
    assert server.session("r1", IDENTITY).token == fresh
    await stop(session, task)


async def test_silent_socket_is_detected_by_the_ping_timeout(sim: Sim) -> None:
    server, scenario = sim
    session, task = await start(server)
    scenario.silence("r1", IDENTITY)
    began = time.monotonic()
    await eventually(lambda: session.resumes == 1, within=10, what="resume after ping timeout")
    assert time.monotonic() - began >= 2.0  # not before the 3 s timeout (minus polling slack)
    await stop(session, task)


@pytest.mark.parametrize("action", ["resume", "reconnect"])
async def test_server_leave_resume_or_reconnect_recovers(sim: Sim, action: str) -> None:
    server, scenario = sim
    session, task = await start(server)
    sid = session.participant_sid
    scenario.server_leave("r1", IDENTITY, reason="server_shutdown", action=action)
    if action == "resume":
        await eventually(lambda: session.resumes == 1, within=10, what="resume after leave{RESUME}")
        assert session.participant_sid == sid
    else:
        await eventually(lambda: session.rejoins == 1, within=10, what="rejoin after leave{RECONNECT}")
        assert session.participant_sid != sid
    await eventually(lambda: active(server, "r1"), within=15, what="ACTIVE again")
    await stop(session, task)


async def test_refused_resume_falls_back_to_a_full_rejoin(sim: Sim) -> None:
    server, scenario = sim
    session, task = await start(server)
    scenario.refuse_resumes()
    scenario.drop_socket("r1", IDENTITY)
    await eventually(lambda: session.rejoins == 1, within=10, what="a full rejoin")
    await eventually(lambda: active(server, "r1"), within=15, what="ACTIVE after the rejoin")
    assert server.stats["resumes_refused"] >= 1
    await stop(session, task)


async def test_leave_disconnect_ends_the_session_with_its_reason(sim: Sim) -> None:
    server, scenario = sim
    _, task = await start(server)
    scenario.kick("r1", IDENTITY)
    ended = await asyncio.wait_for(task, 10)
    assert ended is not None
    assert ended.reason == "PARTICIPANT_REMOVED"
    assert not ended.ownership_lost


async def test_duplicate_identity_stops_the_room_and_never_rejoins(sim: Sim) -> None:
    server, _ = sim
    _, task = await start(server)
    joins = server.stats["joins"]
    async with await SignalClient.open(server.url, make_token(IDENTITY, "r1")) as usurper:
        await usurper.expect("join")
        ended = await asyncio.wait_for(task, 10)
        assert ended is not None
        assert ended.ownership_lost
        assert server.stats["joins"] == joins + 1  # the usurper's join, and none of ours


async def test_room_moved_adopts_the_new_room_sid_and_token(sim: Sim) -> None:
    server, scenario = sim
    session, task = await start(server)
    scenario.move("r1", IDENTITY, to_room="r2")
    await eventually(lambda: session.room == "r2", within=5, what="the session to follow the move")
    moved = server.rooms["r2"].participant(IDENTITY)
    assert session.participant_sid == moved.sid
    claims = jwt.decode(session.protocol.token, options={"verify_signature": False})
    assert claims["video"]["room"] == "r2"
    # A resume after the move goes to the new room with the token LiveKit gave for it.
    scenario.drop_socket("r2", IDENTITY)
    await eventually(lambda: session.resumes == 1, within=10, what="a resume in the new room")
    assert server.rooms["r2"].participant(IDENTITY).sid == moved.sid
    assert server.session("r2", IDENTITY).token == session.protocol.token
    await stop(session, task)


async def test_missing_room_is_a_clear_permanent_error() -> None:
    async with running_sim(auto_create_rooms=False) as (server, _):
        session = RoomSession(settings=bridge_settings(server, "nope").livekit, room="nope")
        ended = await asyncio.wait_for(session.run(), 10)
        assert ended is not None
        assert "404" in ended.reason
        assert "rooms.static" in ended.reason
        assert server.stats["rejected_404"] == 1


async def test_bad_credentials_are_reported_once_and_not_retried(
    sim: Sim, caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = sim
    settings = bridge_settings(server, "r1", api_secret="x" * 40)
    session = RoomSession(settings=settings.livekit, room="r1")
    with caplog.at_level(logging.WARNING):
        ended = await asyncio.wait_for(session.run(), 10)
    assert ended is not None
    assert not ended.retriable
    assert "401" in ended.reason
    assert "livekit.api_key and livekit.api_secret" in ended.reason
    assert "x" * 40 not in caplog.text
    assert server.stats["rejected_401"] == 1


async def test_unreachable_livekit_backs_off_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    async with running_sim() as (server, _):
        settings = bridge_settings(server, "r1")
    # The simulator is gone: its port refuses connections now.
    session = RoomSession(settings=settings.livekit, room="r1")
    with caplog.at_level(logging.WARNING):
        task = asyncio.create_task(session.run())
        await eventually(lambda: session.protocol.attempts >= 4, within=10, what="several attempts")
        session.leave()
        await asyncio.wait_for(task, 5)
    unreachable = [r for r in caplog.records if "LiveKit unreachable" in r.getMessage()]
    assert len(unreachable) == 1
    assert "check livekit.url" in unreachable[0].getMessage()


@pytest.mark.slow
async def test_a_hundred_rooms_in_one_process() -> None:
    async with running_sim(join_timeout_s=60) as (server, _):
        rooms = [f"room-{i:03d}" for i in range(100)]
        supervisor = RoomSupervisor(bridge_settings(server, *rooms).livekit)
        for room in rooms:
            supervisor.join(room)
        await eventually(lambda: all(active(server, r) for r in rooms), within=120, what="100 rooms ACTIVE")
        assert all(s.state is SessionState.JOINED for s in supervisor.sessions.values())
        await supervisor.aclose()
        assert not any(IDENTITY in server.rooms[r].participants for r in rooms)
        assert supervisor.crashes == 0


async def test_sigterm_leaves_every_room_and_exits_zero(sim: Sim, tmp_path: Path) -> None:
    server, _ = sim
    rooms = ["a", "b", "c"]
    config = tmp_path / "bridge.yaml"
    settings = bridge_settings(server, *rooms)
    config.write_text(
        "livekit:\n"
        f"  url: {settings.livekit.url}\n"
        f"  api_key: {settings.livekit.api_key}\n"
        f"  api_secret: {settings.livekit.api_secret.reveal()}\n"
        f"rooms:\n  static: [{', '.join(rooms)}]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "--log-level",
        "INFO",
        "run",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        await eventually(lambda: all(active(server, r) for r in rooms), within=30, what="3 rooms ACTIVE")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    for room in rooms:
        assert IDENTITY not in server.rooms[room].participants
        assert f"room session ended room={room}" in log
    assert "CLIENT_INITIATED" in log
    assert settings.livekit.api_secret.reveal() not in log
