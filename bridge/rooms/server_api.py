"""The bridge's adapter to LiveKit's server API (RoomService over Twirp), through ``livekit-api``.

Commands a participant's socket cannot carry (mute someone else's track, remove a participant, server
data, RPC) go through here. Each call has a deadline, and every failure leaves as a
:class:`~bridge.errors.ServerApiError` whose ``retriable`` tells the caller whether to try again. The
client (and its aiohttp session) is created on first use, because aiohttp wants a running loop.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import aiohttp
from livekit import api
from livekit.api.twirp_client import TwirpClient
from livekit.protocol import models
from livekit.protocol import room as proto

from bridge._proto import commands_pb2
from bridge.config import LiveKitSettings
from bridge.errors import ServerApiError

T = TypeVar("T")

# LiveKit waits this long for an RPC answer when the request leaves it at 0 (utils/data_channel_rpc.go).
DEFAULT_RPC_TIMEOUT_MS: Final = 10_000
_JWT: Final = re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]*")


def http_url(url: str) -> str:
    """LiveKit's API lives on the signaling host: ws -> http, wss -> https."""
    return "http" + url[2:] if url.startswith("ws") else url


class ServerApi:
    """LiveKit's RoomService for one deployment; ``await aclose()`` when done."""

    def __init__(self, settings: LiveKitSettings, *, timeout_s: float = 10.0) -> None:
        self.url = http_url(settings.url).rstrip("/")
        self._key = settings.api_key
        self._secret = settings.api_secret
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._api: api.LiveKitAPI | None = None

    def _client(self) -> api.LiveKitAPI:
        if self._api is None:
            self._session = aiohttp.ClientSession()
            # No region failover: that is a LiveKit Cloud feature, and retries are the caller's decision.
            self._api = api.LiveKitAPI(
                self.url, self._key, self._secret.reveal(), session=self._session, failover=False
            )
        return self._api

    async def aclose(self) -> None:
        if self._api is not None:
            await self._api.aclose()
            self._api = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ----------------------------------------------------------------- calls

    async def mute_track(self, room: str, msg: commands_pb2.MuteTrack) -> None:
        req = proto.MuteRoomTrackRequest(
            room=room, identity=msg.identity, track_sid=msg.track_sid, muted=msg.muted
        )
        await self._call(lambda c: c.room.mute_published_track(req))

    async def remove_participant(self, room: str, msg: commands_pb2.RemoveParticipant) -> None:
        req = proto.RoomParticipantIdentity(room=room, identity=msg.identity)
        await self._call(lambda c: c.room.remove_participant(req))

    async def update_participant(self, room: str, msg: commands_pb2.UpdateParticipant) -> None:
        req = proto.UpdateParticipantRequest(
            room=room,
            identity=msg.identity,
            metadata=msg.metadata,
            name=msg.name,
            attributes=dict(msg.attributes),
        )
        if msg.HasField("permission"):
            req.permission.CopyFrom(msg.permission)
        await self._call(lambda c: c.room.update_participant(req))

    async def update_room_metadata(self, room: str, msg: commands_pb2.UpdateRoomMetadata) -> None:
        req = proto.UpdateRoomMetadataRequest(room=room, metadata=msg.metadata)
        await self._call(lambda c: c.room.update_room_metadata(req))

    async def send_data(self, room: str, msg: commands_pb2.SendData) -> None:
        req = proto.SendDataRequest(
            room=room,
            data=msg.payload,
            kind=models.DataPacket.LOSSY if msg.lossy else models.DataPacket.RELIABLE,
            destination_identities=list(msg.destination_identities),
        )
        if msg.topic:
            req.topic = msg.topic
        await self._call(lambda c: c.room.send_data(req))

    async def perform_rpc(self, room: str, msg: commands_pb2.PerformRpc) -> str:
        """The RPC's response payload. ``unsupported`` when the server has no PerformRpc."""
        req = proto.PerformRpcRequest(
            room=room,
            destination_identity=msg.destination_identity,
            method=msg.method,
            payload=msg.payload,
            response_timeout_ms=msg.response_timeout_ms,
        )
        token = (
            api.AccessToken(self._key, self._secret.reveal())
            .with_grants(api.VideoGrants(room_admin=True, room=room))
            .to_jwt()
        )

        async def call(client: api.LiveKitAPI) -> proto.PerformRpcResponse:
            # livekit-api 1.2 has no RoomService.perform_rpc although the protocol defines PerformRpc,
            # so the request goes through the package's own Twirp client on the same session.
            assert self._session is not None
            twirp = TwirpClient(self._session, self.url, "livekit", failover=False)
            headers = {"Authorization": f"Bearer {token}"}
            return await twirp.request("RoomService", "PerformRpc", req, headers, proto.PerformRpcResponse)

        # The server waits up to the RPC's own timeout for the answer: allow for that on top.
        extra_s = (msg.response_timeout_ms or DEFAULT_RPC_TIMEOUT_MS) / 1000
        try:
            response = await self._call(call, timeout_s=self._timeout_s + extra_s)
        except ServerApiError as exc:
            if exc.code == "bad_route":
                raise ServerApiError(
                    "unsupported", "this LiveKit server has no RoomService.PerformRpc"
                ) from exc
            raise
        return response.payload

    async def list_rooms(self) -> list[str]:
        response = await self._call(lambda c: c.room.list_rooms(proto.ListRoomsRequest()))
        return [r.name for r in response.rooms]

    # -------------------------------------------------------------- boundary

    async def _call(
        self, call: Callable[[api.LiveKitAPI], Awaitable[T]], *, timeout_s: float | None = None
    ) -> T:
        """Run ``call`` with a deadline; translate every failure into :class:`ServerApiError`."""
        client = self._client()
        try:
            async with asyncio.timeout(timeout_s or self._timeout_s):
                return await call(client)
        except api.TwirpError as exc:
            raise ServerApiError(exc.code, self._scrub(exc.message), status=exc.status) from exc
        except TimeoutError as exc:
            raise ServerApiError("timeout", f"no answer from {self.url} within the deadline") from exc
        except aiohttp.ClientError as exc:
            problem = self._scrub(f"{type(exc).__name__}: {exc}")
            raise ServerApiError("unavailable", f"cannot reach {self.url}: {problem}") from exc

    def _scrub(self, text: str) -> str:
        """Never let the secret or a token into a message, whatever a server or proxy echoes back."""
        secret = self._secret.reveal()
        return _JWT.sub("<token>", text.replace(secret, "<secret>") if secret else text)
