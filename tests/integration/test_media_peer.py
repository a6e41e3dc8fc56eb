"""MediaPeer (the bridge's subscriber PC) against the room simulator and against plain aiortc peers.

The simulator tests wire a raw :class:`SignalClient` (v0 ``/rtc``, ``auto_subscribe=0``, protocol
17, hidden token) to a :class:`MediaPeer` the way the room session will: ``join`` -> ICE servers,
``offer`` -> ``handle_offer``, ``trickle`` -> ``handle_trickle``, and ``MediaPeer.send`` -> the socket.

The simulator cannot put a VP9 m-line in an offer (its aiortc encoders only speak VP8/H.264, so a
track labelled ``video/VP9`` still goes out as VP8). The unsupported-codec path is therefore
exercised with a plain aiortc offerer whose offer is rewritten to VP9-only on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from livekit.protocol import models, rtc

from bridge.errors import NegotiationFailed
from bridge.media.peer import MediaPeer, ice_servers_to_aiortc
from bridge.sim.ice import use_loopback_only
from bridge.sim.session import trickles_from_sdp
from bridge.sim.tracks import PatternTrack, ToneTrack
from support.signal_client import SignalClient, make_token
from support.simulator import running_sim
from support.waiting import eventually

ROOM = "media-room"
IDENTITY = "bridge-1"
TIMEOUT = 15.0


@pytest.fixture(autouse=True)
def _loopback() -> None:
    use_loopback_only()


class Wiring:
    """A SignalClient and a MediaPeer glued together like the room session will glue them."""

    def __init__(self, client: SignalClient) -> None:
        self.client = client
        self.data: list[tuple[bytes, str]] = []
        self.errors: list[BaseException] = []
        self.outbox: asyncio.Queue[rtc.SignalRequest] = asyncio.Queue()
        self.peer = MediaPeer(
            send=self.outbox.put_nowait, room=ROOM, on_data=lambda p, label: self.data.append((p, label))
        )
        self._tasks = [asyncio.create_task(self._dispatch()), asyncio.create_task(self._write())]

    async def _dispatch(self) -> None:
        seen = 0
        # SignalClient records responses under a Condition; waiting on it avoids polling.
        changed = self.client._changed
        while True:
            async with changed:
                await changed.wait_for(functools.partial(self._ready, seen))
            if len(self.client.responses) <= seen:
                return  # socket closed
            response = self.client.responses[seen]
            seen += 1
            kind = response.WhichOneof("message")
            try:
                if kind == "join":
                    self.peer.set_ice_servers(response.join.ice_servers)
                elif kind == "offer":
                    await self.peer.handle_offer(response.offer)
                elif kind == "trickle":
                    await self.peer.handle_trickle(response.trickle)
            except NegotiationFailed as exc:
                self.errors.append(exc)

    def _ready(self, seen: int) -> bool:
        return len(self.client.responses) > seen or self.client.closed.is_set()

    async def _write(self) -> None:
        while True:
            request = await self.outbox.get()
            await self.client.send(request)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.peer.aclose()
        await self.client.close()


@contextlib.asynccontextmanager
async def bridge_client(url: str, identity: str = IDENTITY) -> AsyncIterator[Wiring]:
    token = make_token(identity, ROOM, hidden=True, can_publish=False)
    client = await SignalClient.open(url, token, params={"protocol": "17", "auto_subscribe": "0"})
    wiring = Wiring(client)
    try:
        yield wiring
    finally:
        await wiring.aclose()


def data_packets(wiring: Wiring, label: str) -> list[models.DataPacket]:
    packets = []
    for payload, got in wiring.data:
        if got == label:
            packet = models.DataPacket()
            packet.ParseFromString(payload)
            packets.append(packet)
    return packets


# ------------------------------------------------------------------------------------- simulator


async def test_connects_becomes_active_and_outlives_the_join_timeout() -> None:
    async with running_sim(join_timeout_s=2) as (server, _scenario):
        started = time.monotonic()
        async with bridge_client(server.url) as wiring:
            assert await wiring.peer.wait_connected(TIMEOUT), "subscriber PC never connected"
            elapsed = time.monotonic() - started
            logging.getLogger(__name__).info("MediaPeer connected %.3fs after the socket opened", elapsed)
            await eventually(
                lambda: server.rooms[ROOM].participant(IDENTITY).info.state == models.ParticipantInfo.ACTIVE,
                within=TIMEOUT,
                what="the simulator to mark the bridge ACTIVE",
            )
            first_offer = await wiring.client.expect("offer")
            offer, sent = wiring.peer.last_offer_answer()
            assert offer is not None
            assert sent is not None
            assert sent.type == "answer"
            assert sent.id == first_offer.id == offer.id

            # A control participant that never does WebRTC, joined after the bridge: once the
            # simulator has removed it, the bridge's own (earlier) deadline has passed too.
            control_token = make_token("control", ROOM, hidden=True, can_publish=False)
            async with await SignalClient.open(server.url, control_token) as control:
                leave = await control.expect("leave", within=TIMEOUT)
                assert leave.reason == models.JOIN_FAILURE

            assert server.rooms[ROOM].participant(IDENTITY).info.state == models.ParticipantInfo.ACTIVE
            assert "leave" not in wiring.client.kinds()
            assert not wiring.client.closed.is_set()
            assert wiring.peer.connected
            assert wiring.errors == []
            stats = wiring.peer.stats
            assert stats.negotiation_failures == stats.callback_errors == stats.send_errors == 0


async def test_data_from_a_participant_reaches_on_data() -> None:
    async with running_sim() as (server, scenario), bridge_client(server.url) as wiring:
        assert await wiring.peer.wait_connected(TIMEOUT)
        scenario.join(ROOM, "alice")
        # send_data reports 0 deliveries until the server's _reliable channel is open.
        await eventually(
            lambda: scenario.send_data(ROOM, "alice", payload="hello", topic="chat") > 0,
            within=TIMEOUT,
            what="the _reliable channel to open",
        )
        await eventually(
            lambda: bool(data_packets(wiring, "_reliable")), within=TIMEOUT, what="data on _reliable"
        )
        packet = data_packets(wiring, "_reliable")[0]
        assert packet.user.payload == b"hello"
        assert packet.user.topic == "chat"
        assert packet.participant_identity == "alice"


async def test_reoffer_for_a_subscription_is_answered_and_audio_is_drained() -> None:
    async with running_sim() as (server, scenario), bridge_client(server.url) as wiring:
        assert await wiring.peer.wait_connected(TIMEOUT)
        scenario.join(ROOM, "alice")
        sid = scenario.publish(ROOM, "alice", kind="audio")
        await wiring.client.send(
            rtc.SignalRequest(subscription=rtc.UpdateSubscription(track_sids=[sid], subscribe=True))
        )
        await eventually(
            lambda: wiring.peer.stats.frames_received.get(sid, 0) >= 25,
            within=TIMEOUT,
            what="25 drained audio frames",
        )
        assert [t.track_id for t in wiring.peer.tracks()] == [sid]
        offers = wiring.client.of("offer")
        assert len(offers) >= 2
        _, answer = wiring.peer.last_offer_answer()
        assert answer is not None
        assert answer.id == offers[-1].id
        assert wiring.peer.stats.answers == len(offers)
        assert wiring.peer.unsupported_tracks() == []
        assert wiring.peer.connected


async def test_track_labelled_vp9_by_the_simulator_does_not_break_the_session() -> None:
    # offer_unsupported_codecs lets the simulator offer a "video/VP9" TrackInfo; its media layer
    # still encodes VP8, so this checks the session survives, not the VP9 path (see below).
    async with (
        running_sim(offer_unsupported_codecs=True) as (server, scenario),
        bridge_client(server.url) as wiring,
    ):
        assert await wiring.peer.wait_connected(TIMEOUT)
        scenario.join(ROOM, "alice")
        sid = scenario.publish(ROOM, "alice", kind="video", mime_type="video/VP9")
        await wiring.client.send(
            rtc.SignalRequest(subscription=rtc.UpdateSubscription(track_sids=[sid], subscribe=True))
        )
        await eventually(
            lambda: wiring.peer.stats.frames_received.get(sid, 0) >= 5,
            within=TIMEOUT,
            what="5 drained video frames",
        )
        assert wiring.peer.connected
        assert wiring.errors == []


# ----------------------------------------------------------------------- plain aiortc offerer


def vp9_only(offer_sdp: str, mid: str) -> str:
    """Rewrite the video m-line ``mid`` of an aiortc offer so VP9 is its only codec."""
    out: list[str] = []
    section_mid: str | None = None
    section: list[str] = []

    def flush() -> None:
        if section and section[0].startswith("m=video") and section_mid == mid:
            pt = section[0].split()[3]
            out.append(" ".join([*section[0].split()[:3], pt]))
            for line in section[1:]:
                if line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")):
                    continue
                out.append(line)
            out.append(f"a=rtpmap:{pt} VP9/90000")
            out.append(f"a=fmtp:{pt} profile-id=0")
        else:
            out.extend(section)

    for line in offer_sdp.splitlines():
        if line.startswith("m="):
            flush()
            section, section_mid = [line], None
        elif section:
            section.append(line)
            if line.startswith("a=mid:"):
                section_mid = line[6:]
        else:
            out.append(line)
    flush()
    return "\r\n".join(out) + "\r\n"


class Offerer:
    """A plain aiortc PC that plays the LiveKit server's subscriber side."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE, iceServers=[]))
        self.channel = self.pc.createDataChannel("_reliable", ordered=True)
        self.answers: asyncio.Queue[rtc.SessionDescription] = asyncio.Queue()
        self.offer_id = 0

    def send(self, request: rtc.SignalRequest) -> None:
        assert request.WhichOneof("message") == "answer"
        self.answers.put_nowait(request.answer)

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.offer_id += 1
        return str(self.pc.localDescription.sdp)

    async def apply(self, answer: rtc.SessionDescription, *, vp9_capable: bool = False) -> None:
        assert answer.id == self.offer_id
        sdp = answer.sdp.replace("VP9/90000", "VP8/90000") if vp9_capable else answer.sdp
        if vp9_capable:  # our VP8 ignores VP9's fmtp; drop it for tidiness
            sdp = "\r\n".join(line for line in sdp.splitlines() if "profile-id=" not in line) + "\r\n"
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))


@contextlib.asynccontextmanager
async def offerer_and_peer() -> AsyncIterator[tuple[Offerer, MediaPeer, list[tuple[bytes, str]]]]:
    offerer = Offerer()
    data: list[tuple[bytes, str]] = []
    peer = MediaPeer(send=offerer.send, room=ROOM, on_data=lambda p, label: data.append((p, label)))
    peer.set_ice_servers([])
    try:
        yield offerer, peer, data
    finally:
        await peer.aclose()
        await offerer.pc.close()


async def test_vp9_only_mline_is_answered_inactive_and_the_rest_keeps_working() -> None:
    async with offerer_and_peer() as (offerer, peer, data):
        # 1. data-only first offer, with the candidates trickled *before* the offer (queued).
        sdp = await offerer.offer()
        trickles = trickles_from_sdp(sdp, rtc.SUBSCRIBER)
        assert trickles
        for trickle in trickles:
            await peer.handle_trickle(trickle)
        await peer.handle_trickle(
            rtc.TrickleRequest(candidateInit=trickles[0].candidateInit, target=rtc.PUBLISHER)
        )
        assert peer.stats.candidates_queued == len(trickles)
        assert peer.stats.publisher_candidates_ignored == 1
        await peer.handle_offer(rtc.SessionDescription(type="offer", sdp=sdp, id=offerer.offer_id))
        assert peer.stats.candidates_added == len(trickles)
        assert peer.stats.end_of_candidates == 1
        await offerer.apply(await asyncio.wait_for(offerer.answers.get(), TIMEOUT))
        assert await peer.wait_connected(TIMEOUT)

        # 2. re-offer with an opus track and a VP9-only video track.
        offerer.pc.addTransceiver(ToneTrack(), direction="sendonly")
        offerer.pc.addTransceiver(PatternTrack(), direction="sendonly")
        original = await offerer.offer()
        munged = vp9_only(original, "2")
        assert "VP8" not in munged.split("a=mid:2")[0].rsplit("m=video", 1)[-1]
        offer = rtc.SessionDescription(
            type="offer", sdp=munged, id=offerer.offer_id, mid_to_track_id={"1": "TR_opus", "2": "TR_vp9"}
        )
        await peer.handle_offer(offer)
        answer = await asyncio.wait_for(offerer.answers.get(), TIMEOUT)
        video = answer.sdp[answer.sdp.index("m=video") :]
        assert "a=inactive" in video
        assert "VP9/90000" in video
        assert "VP8" not in video
        assert peer.unsupported_tracks() == ["TR_vp9"]
        assert peer.stats.unsupported_media == 1
        # A VP9-capable server accepts that answer; our aiortc offerer needs its VP8 back.
        await offerer.apply(answer, vp9_capable=True)

        await eventually(
            lambda: peer.stats.frames_received.get("TR_opus", 0) >= 25,
            within=TIMEOUT,
            what="opus frames on the m-line next to the VP9 one",
        )
        assert [t.track_id for t in peer.tracks()] == ["TR_opus"]
        offerer.channel.send(b"still alive")
        await eventually(lambda: (b"still alive", "_reliable") in data, within=TIMEOUT, what="data")
        assert peer.connected

        # 3. the next re-offer still carries the VP9 m-line: handled the same way.
        offerer.pc.addTransceiver(ToneTrack(), direction="sendonly")
        offer3 = vp9_only(await offerer.offer(), "2")
        await peer.handle_offer(rtc.SessionDescription(type="offer", sdp=offer3, id=offerer.offer_id))
        await offerer.apply(await asyncio.wait_for(offerer.answers.get(), TIMEOUT), vp9_capable=True)
        assert peer.stats.unsupported_media == 2
        assert peer.stats.negotiation_failures == 0
        await eventually(lambda: len(peer.tracks()) == 2, within=TIMEOUT, what="the second audio track")


# Parses, but aiortc refuses it: no ICE credentials on the m-line.
NO_ICE_CREDENTIALS = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=sendonly\r\n"
)


async def negotiate(offerer: Offerer, peer: MediaPeer) -> None:
    sdp = await offerer.offer()
    await peer.handle_offer(rtc.SessionDescription(type="offer", sdp=sdp, id=offerer.offer_id))
    await offerer.apply(await asyncio.wait_for(offerer.answers.get(), TIMEOUT))


async def test_garbage_offer_raises_negotiation_failed_and_reset_recovers() -> None:
    async with offerer_and_peer() as (offerer, peer, _data):
        with pytest.raises(NegotiationFailed):
            await peer.handle_offer(rtc.SessionDescription(type="offer", sdp=NO_ICE_CREDENTIALS, id=7))
        assert peer.stats.negotiation_failures == 1
        await peer.reset()
        await negotiate(offerer, peer)
        assert await peer.wait_connected(TIMEOUT)
        await peer.reset()
        assert not peer.connected
        assert peer.last_offer_answer() == (None, None)


async def test_aclose_is_idempotent_and_stops_draining() -> None:
    async with offerer_and_peer() as (offerer, peer, _data):
        await negotiate(offerer, peer)  # data first, as LiveKit does
        assert await peer.wait_connected(TIMEOUT)
        offerer.pc.addTransceiver(ToneTrack(), direction="sendonly")
        await negotiate(offerer, peer)
        await eventually(lambda: sum(peer.stats.frames_received.values()) > 0, within=TIMEOUT, what="frames")
        await peer.aclose()
        await peer.aclose()
        assert not peer.connected
        assert not await peer.wait_connected(0.1)
        owned: set[Any] = peer._tasks
        assert owned == set()
        # Offers after close are ignored, not answered.
        sdp = offerer.pc.localDescription.sdp  # the offerer PC closed along with ours
        await peer.handle_offer(rtc.SessionDescription(type="offer", sdp=sdp, id=99))
        assert offerer.answers.empty()


async def test_failing_on_data_callback_is_contained() -> None:
    offerer = Offerer()

    def explode(payload: bytes, label: str) -> None:
        raise RuntimeError("sink broke")

    peer = MediaPeer(send=offerer.send, room=ROOM, on_data=explode)
    try:
        await negotiate(offerer, peer)
        assert await peer.wait_connected(TIMEOUT)
        await eventually(lambda: offerer.channel.readyState == "open", within=TIMEOUT, what="channel open")
        offerer.channel.send(b"one")
        offerer.channel.send(b"two")
        await eventually(lambda: peer.stats.callback_errors == 2, within=TIMEOUT, what="2 contained errors")
        assert peer.stats.data_messages == 2
        assert peer.connected
    finally:
        await peer.aclose()
        await offerer.pc.close()


def test_ice_servers_are_converted_and_credentials_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge.media")
    servers = [
        rtc.ICEServer(urls=["stun:127.0.0.1:3478", "bogus:nowhere"]),
        rtc.ICEServer(urls=["turn:127.0.0.1:3478?transport=udp"], username="u", credential="s3cr3t-turn"),
        rtc.ICEServer(urls=["http://not-ice"], username="x", credential="s3cr3t-other"),
    ]
    converted = ice_servers_to_aiortc(servers)
    assert [s.urls for s in converted] == [["stun:127.0.0.1:3478"], ["turn:127.0.0.1:3478?transport=udp"]]
    assert converted[1].username == "u"
    assert converted[1].credential == "s3cr3t-turn"
    peer = MediaPeer(send=lambda _r: None, room=ROOM)
    peer.set_ice_servers(servers)
    assert "s3cr3t" not in caplog.text
    assert "bogus" in caplog.text  # the unusable scheme is reported
