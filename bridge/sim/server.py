"""The simulator's HTTP side: LiveKit's ``/rtc`` endpoints, validation, and the admin API.

Errors are answered before the WebSocket upgrade with LiveKit's statuses and a body that names the
problem, so a client sees exactly what a real server would tell it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from bridge.errors import AuthError, BadRequest, NotFound, SimulatorError
from bridge.sim.auth import Grants, bearer_token, mint_token, verify_token
from bridge.sim.ice import use_loopback_only
from bridge.sim.media import MediaMode
from bridge.sim.room import SimRoom
from bridge.sim.session import PROTOCOL_VERSION, ClientSession, JoinParams, leave
from bridge.sim.webhooks import WebhookSender

log = logging.getLogger(__name__)

SERVER_VERSION: Final = "1.9.0-sim"
MAX_JOIN_REQUEST_BYTES: Final = 1024 * 1024
_TRUE: Final = frozenset({"1", "true"})


@dataclass(frozen=True, slots=True)
class IceServer:
    urls: tuple[str, ...]
    username: str = ""
    credential: str = ""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything the simulator can be told at start-up; durations in seconds."""

    keys: Mapping[str, str]
    host: str = "127.0.0.1"
    port: int = 0
    auto_create_rooms: bool = True
    v1_enabled: bool = True
    join_timeout_s: float = 60.0
    refresh_interval_s: float = 300.0
    resume_grace_s: float = 20.0
    max_frame_bytes: int = 2 * 1024 * 1024
    ping_interval_s: int = 5
    ping_timeout_s: int = 15
    ice_servers: tuple[IceServer, ...] = ()
    offer_unsupported_codecs: bool = False
    remote_unmute: bool = False  # LiveKit's room.enable_remote_unmute: may MutePublishedTrack unmute?
    rooms: tuple[str, ...] = ()
    webhook_urls: tuple[str, ...] = ()  # LiveKit's webhook.urls: room_started / room_finished go there


@dataclass
class Refusals:
    """Fault injection that applies to new connections."""

    resumes: bool = False  # answer every resume with leave{STATE_MISMATCH, RECONNECT}
    joins_status: int | None = None  # answer every upgrade with this HTTP status
    join_delay_s: float = 0.0
    track_published_delay_s: float = 0.0  # answer an AddTrackRequest this late


@dataclass
class SimServer:
    """A LiveKit-protocol room server on one loopback port. Use as ``async with SimServer(cfg)``."""

    config: SimConfig
    rooms: dict[str, SimRoom] = field(default_factory=dict)
    refusals: Refusals = field(default_factory=Refusals)
    stats: Counter[str] = field(default_factory=Counter)
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None
    _sessions: set[ClientSession] = field(default_factory=set)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    webhooks: WebhookSender | None = None  # from start(); ``webhooks.urls`` may be added to later
    port: int = 0

    # ----------------------------------------------------------------- life

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        use_loopback_only()
        key, secret = next(iter(self.config.keys.items()))
        self.webhooks = WebhookSender(list(self.config.webhook_urls), key, secret)
        self.webhooks.start()
        for name in self.config.rooms:
            self.room(name)
        app = web.Application()
        app.router.add_get("/rtc", self._rtc_v0)
        app.router.add_get("/rtc/v1", self._rtc_v1)
        app.router.add_get("/rtc/validate", self._validate_v0)
        app.router.add_get("/rtc/v1/validate", self._validate_v1)
        from bridge.sim.admin import add_admin_routes  # admin depends on the scenario layer

        add_admin_routes(app, self)
        from bridge.sim.twirp import add_twirp_routes

        add_twirp_routes(app, self)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await self._site.start()
        server = self._site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        log.info("simulator listening on %s", self.url)

    async def aclose(self) -> None:
        if self.webhooks is not None:
            await self.webhooks.aclose()
        for session in list(self._sessions):
            session.drop_socket()
            await session.aclose()
        for room in self.rooms.values():
            for participant in room:
                for source in participant.media_sources.values():
                    self._close_source(source)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    # ----------------------------------------------------------------- rooms

    def room(self, name: str) -> SimRoom:
        """The room called ``name``, created on first use."""
        room = self.rooms.get(name)
        if room is None or room.closed:
            room = self.rooms[name] = SimRoom(name)
            room.on_source_removed = self._close_source
            self.notify("room_started", room)
        return room

    def notify(self, event: str, room: SimRoom) -> None:
        """Send a webhook (``room_started``, ``room_finished``) to ``config.webhook_urls``."""
        if self.webhooks is not None:
            self.webhooks.notify(event, room.info)

    def _close_source(self, source: Any) -> None:
        if hasattr(source, "aclose"):
            task = asyncio.create_task(source.aclose())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def session(self, room: str, identity: str) -> ClientSession:
        participant = self.rooms[room].participant(identity) if room in self.rooms else None
        if participant is None or not isinstance(participant.connection, ClientSession):
            raise NotFound(f"no connected client {identity!r} in room {room!r}")
        return participant.connection

    # ------------------------------------------------------------- messages

    def server_info(self) -> models.ServerInfo:
        return models.ServerInfo(
            edition=models.ServerInfo.Standard,
            version=SERVER_VERSION,
            protocol=PROTOCOL_VERSION,
            region="sim",
            node_id="ND_sim",
        )

    def ice_servers(self) -> list[rtc.ICEServer]:
        return [
            rtc.ICEServer(urls=list(s.urls), username=s.username, credential=s.credential)
            for s in self.config.ice_servers
        ]

    def join_response(self, session: ClientSession) -> rtc.JoinResponse:
        room = session.room
        return rtc.JoinResponse(
            room=room.info,
            participant=session.participant.info,
            other_participants=room.visible_infos(exclude=session.participant),
            server_version=SERVER_VERSION,
            server_region="sim",
            ice_servers=self.ice_servers(),
            subscriber_primary=session.subscriber_primary,
            client_configuration=models.ClientConfiguration(),
            ping_timeout=self.config.ping_timeout_s,
            ping_interval=self.config.ping_interval_s,
            server_info=self.server_info(),
            sif_trailer=b"LKSIM",
            enabled_publish_codecs=[
                models.Codec(mime="audio/opus"),
                models.Codec(mime="video/VP8"),
                models.Codec(mime="video/H264"),
            ],
            fast_publish=session.participant.info.permission.can_publish,
        )

    def mint(self, session: ClientSession) -> str:
        """A refreshed token: same grants, current name/metadata/attributes, >= 10 minutes left."""
        info = session.participant.info
        grants = session.participant.grants
        claims: dict[str, Any] = dict(grants.claims) if grants else {}
        claims.update(
            name=info.name, metadata=info.metadata, attributes=dict(info.attributes), sub=info.identity
        )
        now = time.time()
        ttl = max(600.0, (grants.expires_at - now) if grants else 0.0)
        key, secret = next(iter(self.config.keys.items()))
        return mint_token(claims, key, secret, ttl_s=ttl, now=now)

    # ------------------------------------------------------------------ HTTP

    async def _rtc_v0(self, request: web.Request) -> web.StreamResponse:
        return await self._rtc(request, v1=False)

    async def _rtc_v1(self, request: web.Request) -> web.StreamResponse:
        if not self.config.v1_enabled:
            raise web.HTTPNotFound()
        return await self._rtc(request, v1=True)

    async def _validate_v0(self, request: web.Request) -> web.StreamResponse:
        return self._validate_endpoint(request, v1=False)

    async def _validate_v1(self, request: web.Request) -> web.StreamResponse:
        if not self.config.v1_enabled:
            raise web.HTTPNotFound()
        return self._validate_endpoint(request, v1=True)

    def _validate_endpoint(self, request: web.Request, *, v1: bool) -> web.StreamResponse:
        cors = {"Access-Control-Allow-Origin": "*"}
        try:
            self._validate(request, v1=v1)
        except SimulatorError as exc:
            return web.Response(status=exc.status, text=str(exc), headers=cors)
        return web.Response(status=200, text="success", headers=cors)

    def _validate(self, request: web.Request, *, v1: bool) -> tuple[Grants, JoinParams, str]:
        query = request.query
        token = bearer_token(request.headers.get("Authorization")) or query.get("access_token")
        if not token:
            raise AuthError("permissions denied")
        grants = verify_token(token, self.config.keys)
        if not grants.room_join:
            raise AuthError("permissions denied")
        if not grants.identity:
            raise BadRequest("participant identity cannot be empty")
        if not grants.room:
            raise BadRequest("room name cannot be empty")
        if not self.config.auto_create_rooms and grants.room not in self.rooms:
            raise NotFound("requested room does not exist")
        use_v1 = v1 or "join_request" in query
        params = _v1_params(query.get("join_request")) if use_v1 else _v0_params(query)
        return grants, params, token

    async def _rtc(self, request: web.Request, *, v1: bool) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            raise web.HTTPNotFound()
        try:
            grants, params, token = self._validate(request, v1=v1)
        except SimulatorError as exc:
            self.stats[f"rejected_{exc.status}"] += 1
            log.info("join refused (%d): %s", exc.status, exc)
            return web.Response(status=exc.status, text=str(exc))
        if self.refusals.joins_status is not None:
            return web.Response(status=self.refusals.joins_status, text="refused by fault injection")
        if self.refusals.join_delay_s:
            await asyncio.sleep(self.refusals.join_delay_s)
        ws = web.WebSocketResponse(max_msg_size=self.config.max_frame_bytes, compress=True)
        await ws.prepare(request)
        room = self.room(grants.room)
        if params.reconnect:
            await self._resume(request=request, ws=ws, room=room, grants=grants, params=params, token=token)
        else:
            await self._join(request=request, ws=ws, room=room, grants=grants, params=params, token=token)
        return ws

    async def _join(
        self,
        *,
        request: web.Request,
        ws: web.WebSocketResponse,
        room: SimRoom,
        grants: Grants,
        params: JoinParams,
        token: str,
    ) -> None:
        existing = room.participants.get(grants.identity)
        if existing is not None:
            if isinstance(existing.connection, ClientSession):
                existing.connection.close_with_leave(models.DUPLICATE_IDENTITY, rtc.LeaveRequest.DISCONNECT)
            room.remove(existing, models.DUPLICATE_IDENTITY)
        kind = _KINDS.get(grants.kind, models.ParticipantInfo.STANDARD)
        participant = room.add(
            grants.identity,
            name=grants.name,
            metadata=params.metadata or grants.metadata,
            attributes={**grants.attributes, **(params.attributes or {})},
            kind=kind,
            grants=grants,
            state=models.ParticipantInfo.JOINED,
        )
        participant.info.client_protocol = params.client_info.client_protocol
        session = ClientSession(self, room, participant, params, token)
        self._sessions.add(session)
        self.stats["joins"] += 1
        log.info("client joined room=%s identity=%s mode=%s", room.name, grants.identity, params.mode.value)
        try:
            await session.serve(request, ws, resumed=False)
        finally:
            if participant.closed:
                self._sessions.discard(session)

    async def _resume(
        self,
        *,
        request: web.Request,
        ws: web.WebSocketResponse,
        room: SimRoom,
        grants: Grants,
        params: JoinParams,
        token: str,
    ) -> None:
        participant = room.participants.get(grants.identity)
        session = participant.connection if participant is not None else None
        if (
            self.refusals.resumes
            or not isinstance(session, ClientSession)
            or participant is None
            or participant.closed
            or (params.participant_sid and params.participant_sid != participant.sid)
        ):
            self.stats["resumes_refused"] += 1
            await ws.send_bytes(leave(models.STATE_MISMATCH, rtc.LeaveRequest.RECONNECT).SerializeToString())
            await ws.close()
            return
        self.stats["resumes"] += 1
        session.token = token
        log.info("client resumed room=%s identity=%s", room.name, grants.identity)
        await session.serve(request, ws, resumed=True)


_KINDS: Final[dict[str, models.ParticipantInfo.Kind]] = {
    "standard": models.ParticipantInfo.STANDARD,
    "ingress": models.ParticipantInfo.INGRESS,
    "egress": models.ParticipantInfo.EGRESS,
    "sip": models.ParticipantInfo.SIP,
    "agent": models.ParticipantInfo.AGENT,
    "connector": models.ParticipantInfo.CONNECTOR,
    "bridge": models.ParticipantInfo.BRIDGE,
}


def _int(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None


def _v0_params(query: Mapping[str, str]) -> JoinParams:
    protocol = _int(query, "protocol", 0)
    sdk = query.get("sdk", "").upper()
    info = models.ClientInfo(
        sdk=sdk if sdk in models.ClientInfo.SDK.keys() else "UNKNOWN",  # noqa: SIM118 (protobuf enum wrapper)
        version=query.get("version", ""),
        protocol=protocol,
        client_protocol=_int(query, "client_protocol", 0),
    )
    attributes: dict[str, str] | None = None
    if raw_attrs := query.get("attributes"):
        try:
            decoded = json.loads(base64.urlsafe_b64decode(raw_attrs + "=" * (-len(raw_attrs) % 4)))
        except (ValueError, binascii.Error):
            raise BadRequest("attributes must be base64url-encoded JSON") from None
        if not isinstance(decoded, dict):
            raise BadRequest("attributes must be a JSON object")
        attributes = {str(k): str(v) for k, v in decoded.items() if v}
    return JoinParams(
        mode=MediaMode.DUAL_PC,
        protocol=protocol,
        auto_subscribe=query.get("auto_subscribe", "1").lower() in _TRUE,
        client_info=info,
        reconnect=query.get("reconnect", "").lower() in _TRUE,
        participant_sid=query.get("sid", ""),
        reconnect_reason=_int(query, "reconnect_reason", 0),
        attributes=attributes,
    )


def _v1_params(raw: str | None) -> JoinParams:
    if not raw:
        raise BadRequest("join_request is required")
    try:
        wrapped_bytes = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        wrapped = rtc.WrappedJoinRequest()
        wrapped.ParseFromString(wrapped_bytes)
        payload = wrapped.join_request
        if wrapped.compression == rtc.WrappedJoinRequest.GZIP:
            payload = gzip.decompress(payload)
        if len(payload) > MAX_JOIN_REQUEST_BYTES:
            raise BadRequest("join request too large")
        join = rtc.JoinRequest()
        join.ParseFromString(payload)
    except (binascii.Error, ValueError, DecodeError, OSError, EOFError) as exc:
        raise BadRequest(f"invalid join_request: {exc}") from None
    return JoinParams(
        mode=MediaMode.SINGLE_PC,
        protocol=join.client_info.protocol,
        auto_subscribe=join.connection_settings.auto_subscribe,  # proto3 default: off on v1
        client_info=join.client_info,
        reconnect=join.reconnect,
        participant_sid=join.participant_sid,
        reconnect_reason=join.reconnect_reason,
        metadata=join.metadata,
        attributes=dict(join.participant_attributes),
        publisher_offer=join.publisher_offer if join.HasField("publisher_offer") else None,
        add_track_requests=tuple(join.add_track_requests),
    )
