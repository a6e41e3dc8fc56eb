"""A simulator client with a real data channel: a SignalClient plus an aiortc subscriber PeerConnection.

It answers the server's subscriber offers (the server's candidates are in its SDP, so trickles can be
ignored), records every DataPacket arriving on the server-created channels, and can send on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from livekit.protocol import models, rtc

from bridge.sim.media import rtc_configuration
from support.signal_client import SignalClient, make_token
from support.waiting import eventually


class DataPeer:
    def __init__(self, client: SignalClient) -> None:
        self.client = client
        self.pc = RTCPeerConnection(rtc_configuration())
        self.channels: dict[str, Any] = {}
        self.received: list[tuple[str, models.DataPacket]] = []  # (label, packet)
        self.arrived = asyncio.Event()
        self.on_packet: Callable[[models.DataPacket], None] | None = None  # e.g. an RPC responder

        @self.pc.on("datachannel")
        def _on_channel(channel: Any) -> None:
            self.channels[channel.label] = channel

            @channel.on("message")  # type: ignore[untyped-decorator]
            def _on_message(message: bytes | str) -> None:
                packet = models.DataPacket()
                packet.ParseFromString(message if isinstance(message, bytes) else message.encode())
                self.received.append((channel.label, packet))
                self.arrived.set()
                if self.on_packet is not None:
                    self.on_packet(packet)

        self._task = asyncio.create_task(self._answer_offers())

    def _ready(self, seen: int) -> bool:
        return len(self.client.responses) > seen or self.client.closed.is_set()

    async def _answer_offers(self) -> None:
        seen = 0
        changed = self.client._changed  # SignalClient notifies it for every response
        while True:
            async with changed:
                await changed.wait_for(functools.partial(self._ready, seen))
            if len(self.client.responses) <= seen:
                return
            response = self.client.responses[seen]
            seen += 1
            if response.WhichOneof("message") != "offer":
                continue
            await self.pc.setRemoteDescription(RTCSessionDescription(response.offer.sdp, "offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            answer = rtc.SessionDescription(
                type="answer", sdp=self.pc.localDescription.sdp, id=response.offer.id
            )
            await self.client.send(rtc.SignalRequest(answer=answer))

    async def wait_open(self, within: float = 15.0) -> None:
        def is_open() -> bool:
            return all(
                label in self.channels and self.channels[label].readyState == "open"
                for label in ("_reliable", "_lossy")
            )

        await eventually(is_open, within=within, what="the server's _reliable and _lossy channels to open")

    def send(self, packet: models.DataPacket, label: str = "_reliable") -> None:
        self.channels[label].send(packet.SerializeToString())

    async def next_packet(
        self, kind: str, *, after: int = 0, within: float = 5.0
    ) -> tuple[str, models.DataPacket]:
        """The first ``(label, packet)`` received at index >= ``after`` whose variant is ``kind``."""

        async def find() -> tuple[str, models.DataPacket]:
            while True:
                for label, packet in self.received[after:]:
                    if packet.WhichOneof("value") == kind:
                        return label, packet
                self.arrived.clear()
                await self.arrived.wait()

        try:
            return await asyncio.wait_for(find(), within)
        except TimeoutError:
            kinds = [p.WhichOneof("value") for _, p in self.received]
            raise AssertionError(f"no {kind!r} DataPacket within {within}s; got {kinds}") from None

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.pc.close()
        await self.client.close()


@contextlib.asynccontextmanager
async def data_peer(url: str, identity: str, room: str, **grants: Any) -> AsyncIterator[DataPeer]:
    """A connected participant whose data channels are open."""
    client = await SignalClient.open(url, make_token(identity, room, **grants))
    peer = DataPeer(client)
    try:
        await peer.wait_open()
        yield peer
    finally:
        await peer.aclose()
