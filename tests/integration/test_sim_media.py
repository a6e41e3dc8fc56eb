"""ParticipantMedia (the simulator's server-side WebRTC) against plain aiortc client peers.

No signaling layer: a small in-test shim plays the client. It hands every SignalResponse the media
layer emits to its own aiortc peers (answering subscriber offers, applying answers, honouring
``media_sections_requirement``) and calls ``handle_offer`` / ``handle_answer`` / ``handle_trickle``
the way the session layer will. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import MediaStreamError
from livekit.protocol import rtc

from bridge.sim.ice import use_loopback_only
from bridge.sim.media import (
    MediaMode,
    ParticipantMedia,
    enable_simulcast_header_extensions,
    parse_candidate_init,
    rtc_configuration,
)
from bridge.sim.tracks import PatternTrack, ToneTrack, TrackSource

TIMEOUT = 15.0


async def until(predicate: Callable[[], bool], what: str, limit: float = TIMEOUT) -> None:
    """Poll ``predicate`` until it holds; fail the test with ``what`` after ``limit`` seconds."""
    try:
        async with asyncio.timeout(limit):
            while not predicate():  # noqa: ASYNC110  # the conditions live in aiortc objects
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(autouse=True)
def _loopback() -> None:
    use_loopback_only()
    enable_simulcast_header_extensions()


class Client:
    """A LiveKit-like client made of plain aiortc peers, wired to one ParticipantMedia."""

    def __init__(self, mode: MediaMode, *, subscriber_primary: bool = True) -> None:
        self.inbox: asyncio.Queue[rtc.SignalResponse] = asyncio.Queue()
        self.responses: list[rtc.SignalResponse] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.sub_pc = RTCPeerConnection(rtc_configuration())
        self.pub_pc = RTCPeerConnection(rtc_configuration())  # the single PC in v1
        self.server_channels: dict[str, Any] = {}
        self.received: list[tuple[str, bytes]] = []
        self.frames_by_id: dict[str, int] = {}
        self.frames_by_mid: dict[str, int] = {}
        self.published: list[tuple[str, Any]] = []
        self.server_data: list[tuple[bytes, str]] = []
        self.connected_calls = 0
        self._offer_id = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.media = ParticipantMedia(
            mode=mode,
            subscriber_primary=subscriber_primary,
            send=self._deliver,
            on_data=lambda payload, label: self.server_data.append((payload, label)),
            on_track=lambda track_id, source: self.published.append((track_id, source)),
            on_connected=self._connected,
        )

        @self.sub_pc.on("datachannel")
        def _on_channel(channel: Any) -> None:
            self.server_channels[channel.label] = channel
            self._listen(channel)

        for pc in (self.sub_pc, self.pub_pc):
            self._watch_tracks(pc)
        self._tasks.append(asyncio.get_running_loop().create_task(self._run()))

    def _connected(self) -> None:
        self.connected_calls += 1

    def _deliver(self, response: rtc.SignalResponse) -> None:
        self.responses.append(response)
        self.inbox.put_nowait(response)

    def _listen(self, channel: Any) -> None:
        @channel.on("message")  # type: ignore[untyped-decorator]
        def _on_message(message: bytes | str) -> None:
            self.received.append((channel.label, message if isinstance(message, bytes) else message.encode()))

    def _watch_tracks(self, pc: RTCPeerConnection) -> None:
        @pc.on("track")
        def _on_track(track: Any) -> None:
            mid = next(t.mid for t in pc.getTransceivers() if t.receiver.track is track)
            self._tasks.append(asyncio.get_running_loop().create_task(self._consume(track, str(mid))))

    async def _consume(self, track: Any, mid: str) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.frames_by_id[track.id] = self.frames_by_id.get(track.id, 0) + 1
                self.frames_by_mid[mid] = self.frames_by_mid.get(mid, 0) + 1

    async def _run(self) -> None:
        while True:
            response = await self.inbox.get()
            await self.gate.wait()
            kind = response.WhichOneof("message")
            if kind == "offer":
                await self.sub_pc.setRemoteDescription(RTCSessionDescription(response.offer.sdp, "offer"))
                await self.sub_pc.setLocalDescription(await self.sub_pc.createAnswer())
                await self.media.handle_answer(
                    rtc.SessionDescription(
                        type="answer", sdp=self.sub_pc.localDescription.sdp, id=response.offer.id
                    )
                )
            elif kind == "answer":
                await self.pub_pc.setRemoteDescription(RTCSessionDescription(response.answer.sdp, "answer"))
            elif kind == "media_sections_requirement":
                req = response.media_sections_requirement
                for _ in range(req.num_audios):
                    self.pub_pc.addTransceiver("audio", direction="recvonly")
                for _ in range(req.num_videos):
                    self.pub_pc.addTransceiver("video", direction="recvonly")
                await self.send_offer()  # the answer is applied when this loop reads it

    async def send_offer(self) -> rtc.SessionDescription:
        await self.pub_pc.setLocalDescription(await self.pub_pc.createOffer())
        self._offer_id += 1
        offer = rtc.SessionDescription(type="offer", sdp=self.pub_pc.localDescription.sdp, id=self._offer_id)
        await self.media.handle_offer(offer)
        return offer

    async def offer(self) -> rtc.SessionDescription:
        """Offer the publisher (or single) PC and wait for the server's answer to be applied."""
        offer = await self.send_offer()
        await until(lambda: self.pub_pc.signalingState == "stable", "the answer to the client offer")
        return offer

    def of_kind(self, kind: str) -> list[rtc.SignalResponse]:
        return [r for r in self.responses if r.WhichOneof("message") == kind]

    async def aclose(self) -> None:
        await self.media.aclose()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.sub_pc.close()
        await self.pub_pc.close()


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        await client.aclose()


def sections(sdp: str) -> list[Any]:
    return list(aiortc_sdp.SessionDescription.parse(sdp).media)


# --------------------------------------------------------------------------- v0, dual PC


async def test_v0_subscriber_offer_and_data_both_ways(clients: list[Client]) -> None:
    client = Client(MediaMode.DUAL_PC)
    clients.append(client)
    await client.media.start()
    await until(lambda: client.media.connected, "the subscriber PC to connect")
    assert client.connected_calls == 1

    offer = client.of_kind("offer")[0].offer
    assert offer.id == 1
    assert [m.kind for m in sections(offer.sdp)] == ["application"]
    assert "127.0.0.1" in offer.sdp
    assert all(c.ip == "127.0.0.1" for m in sections(offer.sdp) for c in m.ice_candidates)

    await until(lambda: len(client.server_channels) == 3, "the server-created data channels")
    assert client.server_channels["_reliable"].ordered
    assert not client.server_channels["_lossy"].ordered
    assert client.server_channels["_lossy"].maxRetransmits == 0
    await until(lambda: client.server_channels["_lossy"].readyState == "open", "the channels to open")

    # server -> client on the server-created subscriber channels
    assert client.media.send_data(b"down-reliable", "_reliable")
    assert client.media.send_data(b"down-lossy", "_lossy")
    assert not client.media.send_data(b"nowhere", "_unknown")
    await until(lambda: len(client.received) == 2, "downstream data")
    assert sorted(client.received) == [("_lossy", b"down-lossy"), ("_reliable", b"down-reliable")]

    # client -> server on the client-created publisher channels
    up = client.pub_pc.createDataChannel("_reliable")
    await client.offer()
    answer = client.of_kind("answer")[0].answer
    assert answer.id == 1
    await until(lambda: up.readyState == "open", "the client's publisher channel")
    up.send(b"up")
    # ... and anything the client sends on the server-created ones is accepted too
    client.server_channels["_lossy"].send(b"up-on-sub")
    await until(lambda: len(client.server_data) == 2, "upstream data")
    assert sorted(client.server_data) == [(b"up", "_reliable"), (b"up-on-sub", "_lossy")]


async def test_v0_subscribed_tone_reaches_client_then_is_replaced(clients: list[Client]) -> None:
    client = Client(MediaMode.DUAL_PC)
    clients.append(client)
    await client.media.start()
    await until(lambda: client.media.connected, "connection")

    tone = TrackSource.tone("TR_tone")
    await client.media.add_subscribed_track("PA_pub", "TR_tone", tone)
    await until(lambda: client.frames_by_id.get("TR_tone", 0) >= 10, "tone frames at the client")

    offer = client.of_kind("offer")[-1].offer
    audio = [m for m in sections(offer.sdp) if m.kind == "audio"]
    assert len(audio) == 1
    assert audio[0].msid == "PA_pub|TR_tone TR_tone"
    assert audio[0].direction == "sendonly"
    assert dict(offer.mid_to_track_id) == {audio[0].rtp.muxId: "TR_tone"}
    assert [r.offer.id for r in client.of_kind("offer")] == [1, 2]

    # after a resume: a fresh offer with a new id and the same content
    await until(lambda: client.sub_pc.signalingState == "stable", "the second answer")
    await client.media.renegotiate()
    await until(
        lambda: client.sub_pc.signalingState == "stable" and len(client.of_kind("offer")) == 3, "re-offer"
    )
    assert client.of_kind("offer")[-1].offer.id == 3
    assert dict(client.of_kind("offer")[-1].offer.mid_to_track_id) == dict(offer.mid_to_track_id)

    # Unsubscribe: the m-line goes inactive; a new subscription reuses it.
    await client.media.remove_subscribed_track("TR_tone")
    await until(lambda: len(client.of_kind("offer")) == 4, "the unsubscribe offer")
    gone = client.of_kind("offer")[-1].offer
    assert [m.direction for m in sections(gone.sdp) if m.kind == "audio"] == ["inactive"]
    assert dict(gone.mid_to_track_id) == {}
    await until(lambda: client.sub_pc.signalingState == "stable", "the unsubscribe answer")

    mid = audio[0].rtp.muxId
    before = client.frames_by_mid[mid]
    await client.media.add_subscribed_track("PA_pub", "TR_tone2", ToneTrack(880))
    await until(lambda: client.frames_by_mid[mid] >= before + 10, "frames of the second tone")
    again = client.of_kind("offer")[-1].offer
    assert [m.msid for m in sections(again.sdp) if m.kind == "audio"] == ["PA_pub|TR_tone2 TR_tone2"]
    assert dict(again.mid_to_track_id) == {mid: "TR_tone2"}
    await tone.aclose()


async def test_v0_client_published_audio_is_consumed_and_relayed(clients: list[Client]) -> None:
    alice = Client(MediaMode.DUAL_PC)
    bob = Client(MediaMode.DUAL_PC)
    clients += [alice, bob]
    await alice.media.start()
    await bob.media.start()

    mic = ToneTrack()
    alice.pub_pc.addTrack(mic)
    await alice.offer()
    await until(lambda: len(alice.published) == 1, "on_track")
    track_id, source = alice.published[0]
    assert track_id == mic.id  # the msid track id of the client's m-line
    assert isinstance(source, TrackSource)
    await until(lambda: alice.media.received_frames.get(mic.id, 0) >= 20, "frames counted by the server")
    assert alice.media.received_bytes[mic.id] > 0

    # fan-out: Alice's track reaches Bob through the relay while Alice's counter keeps running
    await bob.media.add_subscribed_track("PA_alice", "TR_alice_mic", source)
    await until(lambda: bob.frames_by_id.get("TR_alice_mic", 0) >= 20, "Alice's audio at Bob")
    counted = alice.media.received_frames[mic.id]
    await until(lambda: alice.media.received_frames[mic.id] > counted + 10, "the counter to keep running")


async def test_two_tracks_of_one_kind_in_one_offer(clients: list[Client]) -> None:
    """aiortc's default BALANCED bundle policy loses all but one m-line per kind; MAX_BUNDLE must not."""
    client = Client(MediaMode.DUAL_PC)
    clients.append(client)

    # upstream: one client offer with two audio and two video tracks
    tracks = [ToneTrack(), ToneTrack(660), PatternTrack(), PatternTrack()]
    for track in tracks:
        client.pub_pc.addTrack(track)
    await client.media.start()
    offer = await client.offer()
    assert [m.kind for m in sections(offer.sdp)] == ["audio", "audio", "video", "video"]
    for track in tracks:
        await until(
            lambda t=track: client.media.received_frames.get(t.id, 0) >= 10,  # type: ignore[misc]
            f"{track.kind} track {track.id} at the server",
        )

    # downstream: two new audio m-lines in one subscriber offer (queued while the first is pending)
    await until(lambda: client.sub_pc.signalingState == "stable", "the first subscriber answer")
    client.gate.clear()
    await client.media.add_subscribed_track("PA_x", "TR_a", ToneTrack())
    await client.media.add_subscribed_track("PA_x", "TR_b", ToneTrack(550))
    client.gate.set()
    await until(
        lambda: client.frames_by_id.get("TR_a", 0) >= 10 and client.frames_by_id.get("TR_b", 0) >= 10,
        "both tones at the client",
    )
    both = [r.offer for r in client.of_kind("offer") if len(r.offer.mid_to_track_id) == 2]
    assert both, "no subscriber offer carried both tracks"
    assert sorted(both[0].mid_to_track_id.values()) == ["TR_a", "TR_b"]


async def test_v0_publisher_primary_uses_client_channels(clients: list[Client]) -> None:
    client = Client(MediaMode.DUAL_PC, subscriber_primary=False)
    clients.append(client)
    await client.media.start()  # nothing to do: the client's publisher PC is primary
    assert client.of_kind("offer") == []
    channel = client.pub_pc.createDataChannel("_reliable")
    client._listen(channel)
    await client.offer()
    await until(lambda: client.media.connected, "the publisher PC to connect")
    assert client.connected_calls == 1
    await until(lambda: client.media.send_data(b"down", "_reliable"), "the server to see an open channel")
    await until(lambda: ("_reliable", b"down") in client.received, "downstream data on the client's channel")


# --------------------------------------------------------------------------- v1, single PC


def single_pc_client(clients: list[Client]) -> Client:
    client = Client(MediaMode.SINGLE_PC, subscriber_primary=True)
    clients.append(client)
    # What the LiveKit SDKs pre-create: recvonly slots and the data channels.
    for kind in ("audio", "audio", "audio", "video", "video", "video"):
        client.pub_pc.addTransceiver(kind, direction="recvonly")
    client._listen(client.pub_pc.createDataChannel("_reliable"))
    client._listen(client.pub_pc.createDataChannel("_lossy", ordered=False, maxRetransmits=0))
    return client


async def test_v1_answer_fills_free_slots_and_mid_to_track_id(clients: list[Client]) -> None:
    client = single_pc_client(clients)
    source = TrackSource.tone("TR_early")
    # subscribed before the client's first offer: attached straight in the first answer
    await client.media.add_subscribed_track("PA_pub", "TR_early", source)
    assert client.of_kind("media_sections_requirement") == []
    await client.offer()
    await until(lambda: client.media.connected, "the single PC to connect")
    assert client.connected_calls == 1
    answer = client.of_kind("answer")[0].answer
    assert answer.id == 1
    assert dict(answer.mid_to_track_id) == {"0": "TR_early"}
    media = sections(answer.sdp)
    assert media[0].direction == "sendonly"
    assert media[0].msid == "PA_pub|TR_early TR_early"
    assert all(m.direction == "inactive" for m in media[1:6])
    await until(lambda: client.frames_by_mid.get("0", 0) >= 10, "tone frames on mid 0")

    # a later subscription with a free slot left: 0/0 requirement -> re-offer -> attached
    await client.media.add_subscribed_track("PA_pub", "TR_video", TrackSource.pattern("TR_video"))
    req = client.of_kind("media_sections_requirement")[0].media_sections_requirement
    assert (req.num_audios, req.num_videos) == (0, 0)
    await until(lambda: len(client.of_kind("answer")) == 2, "the answer to the re-offer")
    assert dict(client.of_kind("answer")[1].answer.mid_to_track_id) == {"0": "TR_early", "3": "TR_video"}
    await until(lambda: client.frames_by_mid.get("3", 0) >= 5, "pattern frames on mid 3")

    # downstream data on the client-created channel
    await until(lambda: client.media.send_data(b"down", "_lossy"), "an open _lossy channel")
    await until(lambda: ("_lossy", b"down") in client.received, "downstream data")
    await source.aclose()


async def test_v1_requests_missing_slots_and_publishes(clients: list[Client]) -> None:
    client = Client(MediaMode.SINGLE_PC, subscriber_primary=False)
    clients.append(client)
    mic = ToneTrack()
    client.pub_pc.addTransceiver(mic, direction="sendonly")  # not a slot for the server
    # aiortc (client side) with MAX_BUNDLE: create data channels after the first transceiver,
    # otherwise the bundle fix-up stops the transport the channel and the track share.
    up = client.pub_pc.createDataChannel("_reliable")
    client._listen(up)
    await client.offer()
    await until(lambda: client.media.connected, "the single PC to connect")
    await until(lambda: client.media.received_frames.get(mic.id, 0) >= 10, "the client's audio")

    await client.media.add_subscribed_track("PA_pub", "TR_tone", ToneTrack())
    req = client.of_kind("media_sections_requirement")[0].media_sections_requirement
    assert (req.num_audios, req.num_videos) == (1, 0)
    await until(lambda: len(client.of_kind("answer")) >= 2, "the answer to the re-offer")
    mids = dict(client.of_kind("answer")[-1].answer.mid_to_track_id)
    assert list(mids.values()) == ["TR_tone"]
    (mid,) = mids
    await until(lambda: client.frames_by_mid.get(mid, 0) >= 10, "tone frames at the client")

    await until(lambda: up.readyState == "open", "the client's channel")
    up.send(b"up")
    await until(lambda: client.server_data == [(b"up", "_reliable")], "upstream data")
    assert client.media.send_data(b"down", "_reliable")
    await until(lambda: ("_reliable", b"down") in client.received, "downstream data")

    # unsubscribe asks for a re-offer so the m-line goes inactive
    await client.media.remove_subscribed_track("TR_tone")
    await until(lambda: len(client.of_kind("media_sections_requirement")) == 2, "the 0/0 requirement")
    await until(
        lambda: (
            not client.of_kind("answer")[-1].answer.mid_to_track_id
            and client.pub_pc.signalingState == "stable"
        ),
        "an answer without the track",
    )


# --------------------------------------------------------------------------- trickle


def test_parse_candidate_init() -> None:
    text = json.dumps(
        {
            "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host generation 0 ufrag abcd",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
            "usernameFragment": None,
        }
    )
    candidate = parse_candidate_init(text)
    assert candidate is not None
    assert (candidate.ip, candidate.port, candidate.type, candidate.sdpMid) == (
        "127.0.0.1",
        50000,
        "host",
        "0",
    )
    assert parse_candidate_init(json.dumps({"candidate": "", "sdpMid": "0"})) is None
    assert parse_candidate_init("not json") is None
    mdns = json.dumps({"candidate": "candidate:1 1 udp 2122260223 abc.local 5000 typ host", "sdpMid": "0"})
    assert parse_candidate_init(mdns) is None


async def test_trickle_before_remote_description_is_queued(clients: list[Client]) -> None:
    client = Client(MediaMode.DUAL_PC)
    clients.append(client)
    client.gate.clear()  # hold the client's answer so the candidate arrives first
    await client.media.start()
    sub_offer = client.of_kind("offer")[0].offer
    port = next(c.port for m in sections(sub_offer.sdp) for c in m.ice_candidates)
    # A bogus candidate (nobody listens there) must neither break nor block the connection.
    init = {
        "candidate": f"candidate:9 1 udp 1 127.0.0.1 {port + 1} typ host",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    }
    trickle = rtc.TrickleRequest(candidateInit=json.dumps(init), target=rtc.SignalTarget.SUBSCRIBER)
    await client.media.handle_trickle(trickle)
    await client.media.handle_trickle(
        rtc.TrickleRequest(candidateInit=json.dumps(init), target=rtc.SignalTarget.PUBLISHER)
    )
    client.gate.set()
    await until(lambda: client.media.connected, "connection despite the early candidate")


async def test_v0_subscription_before_start_offers_data_first(clients: list[Client]) -> None:
    """The subscriber offer must put the data m-line first, even when a track is already waiting."""
    client = Client(MediaMode.DUAL_PC)
    clients.append(client)
    await client.media.add_subscribed_track("PA_pub", "TR_early", ToneTrack())
    await client.media.start()  # the first offer is already out: no second data-only offer
    await until(lambda: client.frames_by_id.get("TR_early", 0) >= 10, "the early track at the client")
    assert client.connected_calls == 1
    first, second = (r.offer for r in client.of_kind("offer"))
    assert [m.kind for m in sections(first.sdp)] == ["application"]
    assert [m.kind for m in sections(second.sdp)] == ["application", "audio"]
    assert dict(second.mid_to_track_id) == {"1": "TR_early"}
