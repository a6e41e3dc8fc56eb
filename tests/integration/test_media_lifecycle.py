"""The end of forwards and published tracks: a real Bridge on the simulator, an in-memory bus.

- a forward stopped by ``bridge.stop_forward``, and one whose track goes away, each produce exactly one
  ``io.livekit.bridge.forward_finished.v1`` whose counters match what a UDP listener received;
- a file published without ``loop`` that reaches its end produces ``publish_finished`` (reason
  ``end_of_file``) and is unpublished by the bridge, freeing its ``media.max_published_tracks`` slot;
- ``bridge.unpublish_track`` produces exactly one ``publish_finished``, also when it races the end of
  the file; the events are numbered in the room session like every other bridge event.

"Exactly one" is checked after the bridge has closed: the session's end reports whatever is still
running, so a forward or track left behind would show up as a second event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest
from livekit.protocol import models

from bridge._proto import commands_pb2, events_pb2
from bridge.config import MediaSettings
from bridge.errors import MediaRefused
from bridge.events.cloudevent import CloudEvent
from bridge.rooms import session as session_module
from bridge.sim.ice import use_loopback_only
from support.media_bridge import MediaBridge, media_bridge
from support.media_files import write_ogg_opus
from support.waiting import eventually

ROOM = "lifecycle-e2e"
IDENTITY = "livekit-bridge"
TIMEOUT = 20.0
APPLIED = events_pb2.CommandResult.STATUS_APPLIED
FAILED = events_pb2.CommandResult.STATUS_FAILED
FORWARD_FINISHED = "io.livekit.bridge.forward_finished.v1"
PUBLISH_FINISHED = "io.livekit.bridge.publish_finished.v1"


@pytest.fixture(autouse=True)
def _loopback() -> None:
    use_loopback_only()


class _Listener(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.packets.append(data)


@dataclass
class _Forwarding:
    setup: MediaBridge
    listener: _Listener
    port: int
    sid: str


@contextlib.asynccontextmanager
async def _forwarding(kind: str, packets: int) -> AsyncIterator[_Forwarding]:
    """A bridge forwarding alice's new ``kind`` track to a UDP listener that has ``packets`` already.
    The bridge is closed on exit, the listener after it."""
    loop = asyncio.get_running_loop()
    transport, listener = await loop.create_datagram_endpoint(_Listener, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        async with media_bridge(ROOM, MediaSettings(forward_allow=("127.0.0.1/32",))) as setup:
            sid = setup.scenario.publish(ROOM, "alice", kind=kind)
            await eventually(
                lambda: setup.session._track_info(sid) is not None, within=TIMEOUT, what="the track"
            )
            msg = commands_pb2.ForwardTrack(track_sid=sid, host="127.0.0.1", port=port)
            result = await setup.command("bridge.forward_track", msg, f"fwd-{kind}")
            assert result.status == APPLIED, result
            await eventually(
                lambda: len(listener.packets) >= packets, within=TIMEOUT, what=f"{packets} RTP packets"
            )
            yield _Forwarding(setup, listener, port, sid)
    finally:
        transport.close()


def _numbered_in_the_session(setup: MediaBridge, event: CloudEvent) -> None:
    """``event`` belongs to the room session's numbering: same ``lksession``, sequence in order."""
    session_id = setup.session.session_id
    assert event.ctx.session == session_id
    sequences = [e.sequence for e in setup.bus.events if e.ctx.session == session_id]
    assert event.sequence in sequences
    assert sequences == sorted(set(sequences)), "one sequence per event, in order"


async def _forward_finished(
    setup: MediaBridge, listener: _Listener, sid: str, reason: str
) -> tuple[CloudEvent, events_pb2.ForwardFinished]:
    """The one ForwardFinished of ``sid``, once every packet it counts has reached ``listener``; its
    counters, numbering and reason checked."""
    await eventually(lambda: bool(setup.events(FORWARD_FINISHED)), within=TIMEOUT, what="ForwardFinished")
    (event,) = setup.events(FORWARD_FINISHED)
    done = events_pb2.ForwardFinished.FromString(event.data)
    assert (event.subject, done.track_sid, done.reason) == (sid, sid, reason), done
    # Packets already handed to the socket may still be on their way through the loopback.
    await eventually(lambda: len(listener.packets) >= done.packets, within=TIMEOUT, what="the last packets")
    assert done.packets > 0
    assert done.packets == len(listener.packets)
    assert done.bytes == sum(len(p) for p in listener.packets)
    assert done.dropped == 0
    assert 0 < done.frames <= done.packets  # a video frame takes one packet or more
    assert (done.host, done.address) == ("127.0.0.1", "127.0.0.1")
    _numbered_in_the_session(setup, event)
    assert not setup.session.forwarder.forwards
    return event, done


@pytest.mark.parametrize(("kind", "codec", "payload_type"), [("audio", "opus", 111), ("video", "vp8", 96)])
async def test_forward_stopped_by_command_reports_once(kind: str, codec: str, payload_type: int) -> None:
    async with _forwarding(kind, 30) as fwd:
        setup, sid = fwd.setup, fwd.sid
        result = await setup.command("bridge.stop_forward", commands_pb2.StopForward(track_sid=sid), "fwd-2")
        assert result.status == APPLIED, result
        _, done = await _forward_finished(setup, fwd.listener, sid, "stopped")
        assert (done.codec, done.port, done.payload_type) == (codec, fwd.port, payload_type)
        if codec == "opus":
            assert done.frames == done.packets  # one 20 ms frame per packet
            # 30 packets or more of 20 ms frames took at least about that long to arrive.
            assert done.duration_s >= 0.5, done
    assert len(setup.events(FORWARD_FINISHED)) == 1


async def test_forward_ended_by_the_track_going_away_reports_once() -> None:
    async with _forwarding("audio", 30) as fwd:
        setup, sid = fwd.setup, fwd.sid
        setup.scenario.unpublish(ROOM, "alice", track=sid)
        _, done = await _forward_finished(setup, fwd.listener, sid, "track_ended")
        assert done.codec == "opus"
        # Stopping it now finds nothing: it ended already.
        result = await setup.command("bridge.stop_forward", commands_pb2.StopForward(track_sid=sid), "fwd-x")
        assert (result.status, result.code) == (FAILED, "not_found"), result
    assert len(setup.events(FORWARD_FINISHED)) == 1


async def test_forward_still_running_when_the_bridge_leaves_reports_session_ended() -> None:
    async with _forwarding("audio", 10) as fwd:
        setup, sid = fwd.setup, fwd.sid
    (event,) = setup.events(FORWARD_FINISHED)
    done = events_pb2.ForwardFinished.FromString(event.data)
    assert (done.track_sid, done.reason) == (sid, "session_ended")
    assert done.packets >= 10
    # Reported before the session's last event.
    ended = [e for e in setup.bus.events if e.type == "io.livekit.bridge.session_ended.v1"]
    assert ended
    assert event.sequence < ended[-1].sequence


# ------------------------------------------------------------------------------------------ publish


def _published(setup: MediaBridge, sid: str) -> list[events_pb2.PublishFinished]:
    events = setup.events(PUBLISH_FINISHED)
    return [events_pb2.PublishFinished.FromString(e.data) for e in events if e.subject == sid]


async def _publish(setup: MediaBridge, msg: commands_pb2.PublishTrack, cid: str) -> str:
    result = await setup.command("bridge.publish_track", msg, cid)
    assert result.status == APPLIED, result
    return str(models.TrackInfo.FromString(result.response).sid)


def _packets_in(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for packet in container.demux(container.streams[0]) if packet.size)


async def test_a_file_that_ends_is_unpublished_and_frees_its_slot(tmp_path: Path) -> None:
    await asyncio.to_thread(write_ogg_opus, tmp_path / "short.ogg", 1.0)
    await asyncio.to_thread(write_ogg_opus, tmp_path / "long.ogg", 3.0)
    media = MediaSettings(publish_dir=tmp_path, max_published_tracks=1)
    async with media_bridge(ROOM, media, can_publish=True) as setup:
        session = setup.session
        sid = await _publish(setup, commands_pb2.PublishTrack(path="short.ogg"), "pub-1")
        # The slot is taken while it plays.
        long_msg = commands_pb2.PublishTrack(path="long.ogg", loop=True)
        busy = await setup.command("bridge.publish_track", long_msg, "pub-2")
        assert (busy.status, busy.code) == (FAILED, "limit"), busy

        await eventually(lambda: bool(_published(setup, sid)), within=TIMEOUT, what="PublishFinished")
        (done,) = _published(setup, sid)
        assert (done.reason, done.kind, done.source) == ("end_of_file", "audio", "short.ogg")
        assert (done.mime_type.lower(), done.passthrough) == ("audio/opus", True)
        assert done.frames == await asyncio.to_thread(_packets_in, tmp_path / "short.ogg"), done
        assert 0.8 <= done.duration_s < TIMEOUT, done
        assert sid not in session.published
        # Unpublished as unpublish_track does: muted at once, its m-line made inactive.
        sim_track = next(
            t for t in setup.server.rooms[ROOM].participants[IDENTITY].info.tracks if t.sid == sid
        )
        assert sim_track.muted
        assert session.publisher.stats.renegotiations == 2  # added, then made inactive
        (event,) = [e for e in setup.events(PUBLISH_FINISHED) if e.subject == sid]
        _numbered_in_the_session(setup, event)

        # Its slot is free: the next publish succeeds.
        again = await _publish(setup, long_msg, "pub-3")
        assert again in session.published
        # Unpublishing the ended one is refused: it is gone already.
        gone = await setup.command(
            "bridge.unpublish_track", commands_pb2.UnpublishTrack(track_sid=sid), "pub-4"
        )
        assert (gone.status, gone.code) == (FAILED, "not_found"), gone
    assert len(_published(setup, sid)) == 1
    # The looping one was still playing when the bridge left.
    assert [d.reason for d in _published(setup, again)] == ["session_ended"]


async def test_unpublish_track_reports_once(tmp_path: Path) -> None:
    await asyncio.to_thread(write_ogg_opus, tmp_path / "tone.ogg", 2.0)
    media = MediaSettings(publish_dir=tmp_path)
    async with media_bridge(ROOM, media, can_publish=True) as setup:
        msg = commands_pb2.PublishTrack(path="tone.ogg", loop=True)
        sid = await _publish(setup, msg, "unp-1")
        _, track = setup.session.published[sid]
        await eventually(lambda: track.sent >= 25, within=TIMEOUT, what="25 packets sent")
        unpublish = commands_pb2.UnpublishTrack(track_sid=sid)
        result = await setup.command("bridge.unpublish_track", unpublish, "unp-2")
        assert result.status == APPLIED, result
        (done,) = _published(setup, sid)  # emitted before the command's result
        assert (done.reason, done.source, done.kind) == ("unpublished", "tone.ogg", "audio")
        assert done.frames >= 25
        assert done.frames == track.sent
        result = await setup.command("bridge.unpublish_track", unpublish, "unp-3")
        assert (result.status, result.code) == (FAILED, "not_found"), result
    assert len(_published(setup, sid)) == 1


async def test_unpublish_track_racing_the_end_of_the_file_reports_once(tmp_path: Path) -> None:
    await asyncio.to_thread(write_ogg_opus, tmp_path / "short.ogg", 0.5)
    media = MediaSettings(publish_dir=tmp_path)
    async with media_bridge(ROOM, media, can_publish=True) as setup:
        session = setup.session
        sid = await _publish(setup, commands_pb2.PublishTrack(path="short.ogg"), "race-1")
        _, track = session.published[sid]

        async def unpublish_at_the_end() -> str:
            # Woken by the same stop as the bridge's own watcher: both try to unpublish the track.
            await track.stopped.wait()
            try:
                unpublish = commands_pb2.UnpublishTrack(track_sid=sid)
                await session.media_command("bridge.unpublish_track", unpublish)
            except MediaRefused as exc:
                return exc.code
            return "applied"

        outcome = await asyncio.wait_for(unpublish_at_the_end(), TIMEOUT)
        assert outcome in ("applied", "not_found")
        await eventually(lambda: bool(_published(setup, sid)), within=TIMEOUT, what="PublishFinished")
        assert sid not in session.published
    reasons = [d.reason for d in _published(setup, sid)]
    assert len(reasons) == 1, reasons
    assert reasons[0] in ("end_of_file", "unpublished")


async def test_a_full_rejoin_ends_every_published_track_once(tmp_path: Path) -> None:
    await asyncio.to_thread(write_ogg_opus, tmp_path / "tone.ogg", 2.0)
    media = MediaSettings(publish_dir=tmp_path, max_published_tracks=1)
    async with media_bridge(ROOM, media, can_publish=True) as setup:
        session = setup.session
        msg = commands_pb2.PublishTrack(path="tone.ogg", loop=True)
        sid = await _publish(setup, msg, "rejoin-1")
        _, track = session.published[sid]
        await eventually(lambda: track.sent >= 10, within=TIMEOUT, what="10 packets sent")

        # LiveKit replaces the bridge's participant: its tracks and its publisher PC are gone with it.
        setup.scenario.server_leave(ROOM, IDENTITY, reason="server_shutdown", action="reconnect")
        await eventually(lambda: session.rejoins == 1, within=TIMEOUT, what="a full rejoin")
        await eventually(lambda: bool(_published(setup, sid)), within=TIMEOUT, what="PublishFinished")
        (done,) = _published(setup, sid)
        assert (done.reason, done.source, done.kind) == ("session_rejoined", "tone.ogg", "audio")
        assert sid not in session.published
        assert track.readyState == "ended"
        assert done.frames == track.sent
        # Reported before the rejoined session's start, in the session's numbering.
        (event,) = [e for e in setup.events(PUBLISH_FINISHED) if e.subject == sid]
        _numbered_in_the_session(setup, event)
        started = [e for e in setup.events("io.livekit.bridge.session_started.v1") if e.sequence > 0]
        assert started
        assert event.sequence < started[-1].sequence

        # Its slot is free: the same file publishes again in the new session.
        again = await _publish(setup, msg, "rejoin-2")
        assert again != sid
        _, replay = session.published[again]
        await eventually(lambda: replay.sent >= 10, within=TIMEOUT, what="10 packets after the rejoin")
    assert len(_published(setup, sid)) == 1
    assert [d.reason for d in _published(setup, again)] == ["session_ended"]


async def test_a_track_livekit_announced_is_taken_back_when_its_publish_fails(tmp_path: Path) -> None:
    await asyncio.to_thread(write_ogg_opus, tmp_path / "tone.ogg", 1.0)
    media = MediaSettings(publish_dir=tmp_path)
    async with media_bridge(ROOM, media, can_publish=True) as setup:
        session = setup.session
        # The publisher PC cannot negotiate any more: LiveKit answers track_published, add_track fails.
        await session.publisher.aclose()
        msg = commands_pb2.PublishTrack(path="tone.ogg")
        result = await setup.command("bridge.publish_track", msg, "withdraw-1")
        assert (result.status, result.code) == (FAILED, "unavailable"), result
        assert "closing" in result.message  # the first error, not one of the clean-up

        announced = setup.server.rooms[ROOM].participants[IDENTITY].info.tracks
        assert len(announced) == 1
        await eventually(lambda: announced[0].muted, within=TIMEOUT, what="the announced track muted")
        assert not session.published
    assert not setup.events(PUBLISH_FINISHED)  # never published, so never finished


async def test_a_track_livekit_publishes_after_the_command_gave_up_is_taken_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await asyncio.to_thread(write_ogg_opus, tmp_path / "tone.ogg", 1.0)
    monkeypatch.setattr(session_module, "PUBLISH_TIMEOUT_S", 0.5)
    media = MediaSettings(publish_dir=tmp_path)
    async with media_bridge(ROOM, media, can_publish=True) as setup:
        setup.server.refusals.track_published_delay_s = 1.5  # LiveKit answers after the bridge gave up
        msg = commands_pb2.PublishTrack(path="tone.ogg")
        result = await setup.command("bridge.publish_track", msg, "late-1")
        assert (result.status, result.code) == (FAILED, "timeout"), result

        announced = setup.server.rooms[ROOM].participants[IDENTITY].info.tracks
        assert len(announced) == 1
        # The late track_published arrives: the bridge takes the track back instead of leaving it listed.
        await eventually(lambda: announced[0].muted, within=TIMEOUT, what="the late track muted")
        assert not setup.session.published
