"""LiveKit's RoomService on the simulator: ``POST /twirp/livekit.RoomService/<Method>`` (Twirp).

Bodies are ``application/protobuf`` or ``application/json`` and are answered in kind; errors are Twirp's
JSON ``{"code", "msg"}`` with the matching HTTP status. ``Authorization: Bearer <JWT>`` is checked like
LiveKit's ``Ensure*Permission``: ``roomList`` for ListRooms, ``roomCreate`` for Create/DeleteRoom, and
``roomAdmin`` for the request's ``room`` for everything else. Each method changes the room through the
scenario layer, so connected clients receive exactly what they receive from LiveKit for the same call.

One deliberate difference: LiveKit answers a missing grant with ``unauthenticated`` (its
``twirpAuthError``); the simulator answers ``permission_denied`` (403), which is what Twirp means by it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit.protocol import models
from livekit.protocol import room as proto

from bridge.errors import AuthError, BadRequest, NotFound, SimulatorError
from bridge.sim.auth import Grants, bearer_token, verify_token
from bridge.sim.room import SimParticipant, SimRoom
from bridge.sim.scenario import Scenario
from bridge.sim.session import forward_data

if TYPE_CHECKING:
    from bridge.sim.server import SimServer

log = logging.getLogger(__name__)

PREFIX: Final = "/twirp/livekit.RoomService/"
_JSON: Final = frozenset({"application/json"})
_PROTOBUF: Final = frozenset({"application/protobuf", "application/x-protobuf"})
# Twirp's code -> HTTP status table (twirp/errors.go ServerHTTPStatusFromErrorCode).
STATUS: Final[dict[str, int]] = {
    "canceled": 408,
    "unknown": 500,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "dataloss": 500,
}
# LiveKit's data-channel RPC limits and error codes (protocol utils/data_channel_rpc.go).
RPC_ACK_TIMEOUT_S: Final = 2.0
RPC_DEFAULT_TIMEOUT_MS: Final = 10_000
RPC_MAX_PAYLOAD_BYTES: Final = 15_360
_RPC_ERRORS: Final[dict[int, tuple[str, str]]] = {  # code -> (Twirp code, built-in message)
    1500: ("internal", "Application error in method handler"),
    1501: ("canceled", "Connection timeout"),
    1502: ("canceled", "Response timeout"),
    1503: ("unavailable", "Recipient disconnected"),
    1504: ("internal", "Response payload too large"),
    1505: ("internal", "Failed to send"),
    1400: ("invalid_argument", "Method not supported at destination"),
    1401: ("not_found", "Recipient not found"),
    1402: ("malformed", "Request payload too large"),
    1403: ("unimplemented", "RPC not supported by server"),
    1404: ("unimplemented", "Unsupported RPC version"),
}


class TwirpError(Exception):
    """A Twirp error reply: ``code`` is one of :data:`STATUS`."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def rpc_error(code: int, message: str = "", data: str = "") -> TwirpError:
    """An RPC failure as LiveKit reports it: ``RpcError <code>: <message>[: <data>]``."""
    twirp_code, builtin = _RPC_ERRORS.get(code, ("internal", ""))
    text = f"RpcError {code}: {message or builtin}" + (f": {data}" if data else "")
    return TwirpError(twirp_code, text)


Handler = Callable[["RoomService", Any], Awaitable[Message]]


@dataclass(frozen=True, slots=True)
class _Method:
    request: type[Message]
    grant: str  # roomList / roomCreate / roomAdmin
    handler: Handler


class RoomService:
    """The RoomService methods against one :class:`SimServer`."""

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.scenario = Scenario(server)

    # ------------------------------------------------------------------- HTTP

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["method"]
        method = _METHODS.get(name)
        if method is None:
            return _error(TwirpError("bad_route", f"no handler for path {request.path!r}"))
        as_json = request.content_type in _JSON
        if not as_json and request.content_type not in _PROTOBUF:
            return _error(TwirpError("bad_route", f"unexpected Content-Type: {request.content_type!r}"))
        self.server.stats[f"twirp_{name}"] += 1
        try:
            grants = _grants(request, self.server)
            body = await request.read()
            message = method.request()
            try:
                if as_json:
                    json_format.Parse(body.decode() or "{}", message, ignore_unknown_fields=True)
                else:
                    message.ParseFromString(body)
            except (DecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
                raise TwirpError(
                    "malformed", f"the request body is not a valid {name} request: {exc}"
                ) from None
            _authorise(grants, method.grant, str(getattr(message, "room", "")))
            reply = await method.handler(self, message)
        except TwirpError as exc:
            return _error(exc)
        except SimulatorError as exc:
            return _error(TwirpError(_CODES.get(type(exc), "internal"), str(exc)))
        if as_json:
            text = json_format.MessageToJson(
                reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
            return web.Response(text=text, content_type="application/json")
        return web.Response(body=reply.SerializeToString(), content_type="application/protobuf")

    # ---------------------------------------------------------------- lookups

    def _room(self, name: str) -> SimRoom:
        room = self.server.rooms.get(name)
        if room is None or room.closed:
            raise NotFound("requested room does not exist")
        return room

    def _participant(self, room: str, identity: str) -> SimParticipant:
        return self._room(room).participant(identity)

    # ------------------------------------------------------------------ rooms

    async def create_room(self, req: proto.CreateRoomRequest) -> models.Room:
        if not req.name:
            raise BadRequest("room name cannot be empty")
        existing = self.server.rooms.get(req.name)
        room = self.server.room(req.name)
        if existing is not room:  # settings apply to a new room only, as in LiveKit
            info = room.info
            info.metadata = req.metadata
            info.max_participants = req.max_participants
            info.empty_timeout = req.empty_timeout or info.empty_timeout
            info.departure_timeout = req.departure_timeout or info.departure_timeout
        return room.info

    async def list_rooms(self, req: proto.ListRoomsRequest) -> proto.ListRoomsResponse:
        wanted = set(req.names)
        rooms = [
            r.info for r in self.server.rooms.values() if not r.closed and (not wanted or r.name in wanted)
        ]
        return proto.ListRoomsResponse(rooms=rooms)

    async def delete_room(self, req: proto.DeleteRoomRequest) -> proto.DeleteRoomResponse:
        room = self._room(req.room)
        for p in room:
            if p.connection is not None and not p.closed:
                self.scenario.leave(room.name, p.identity, reason="room_deleted")
            else:
                for source in p.media_sources.values():
                    room.on_source_removed(source)
                room.remove(p, models.ROOM_DELETED)
        room.close()
        del self.server.rooms[room.name]
        self.server.notify("room_finished", room)
        return proto.DeleteRoomResponse()

    async def update_room_metadata(self, req: proto.UpdateRoomMetadataRequest) -> models.Room:
        room = self._room(req.room)
        self.scenario.set_room_metadata(room.name, metadata=req.metadata)
        return room.info

    async def send_data(self, req: proto.SendDataRequest) -> proto.SendDataResponse:
        room = self._room(req.room)
        if req.nonce and len(req.nonce) != 16:
            raise TwirpError(
                "invalid_argument", f"nonce should be 16-bytes or not present, got: {len(req.nonce)} bytes"
            )
        user = models.UserPacket(
            payload=req.data,
            destination_sids=req.destination_sids,
            destination_identities=req.destination_identities,
            nonce=req.nonce,
        )
        if req.HasField("topic"):
            user.topic = req.topic
        packet = models.DataPacket(
            kind=req.kind, destination_identities=req.destination_identities, user=user
        )
        label = "_lossy" if req.kind == models.DataPacket.LOSSY else "_reliable"
        forward_data(room, None, packet, label)  # no sender: server data carries no identity
        return proto.SendDataResponse()

    # ----------------------------------------------------------- participants

    async def list_participants(self, req: proto.ListParticipantsRequest) -> proto.ListParticipantsResponse:
        return proto.ListParticipantsResponse(participants=[p.info for p in self._room(req.room)])

    async def get_participant(self, req: proto.RoomParticipantIdentity) -> models.ParticipantInfo:
        return self._participant(req.room, req.identity).info

    async def remove_participant(self, req: proto.RoomParticipantIdentity) -> proto.RemoveParticipantResponse:
        self._participant(req.room, req.identity)
        self.scenario.leave(req.room, req.identity, reason="participant_removed")
        return proto.RemoveParticipantResponse()

    async def mute_published_track(self, req: proto.MuteRoomTrackRequest) -> proto.MuteRoomTrackResponse:
        p = self._participant(req.room, req.identity)
        if not req.muted and not self.server.config.remote_unmute:
            raise TwirpError("failed_precondition", "remote unmute not enabled")
        track = p.track(req.track_sid)  # LiveKit answers an unknown track with no track; we say not_found
        self.scenario.mute(req.room, req.identity, track=req.track_sid, muted=req.muted)
        return proto.MuteRoomTrackResponse(track=track)

    async def update_participant(self, req: proto.UpdateParticipantRequest) -> models.ParticipantInfo:
        p = self._participant(req.room, req.identity)
        if req.metadata or req.name or req.attributes:
            self.scenario.set_metadata(
                req.room,
                req.identity,
                metadata=req.metadata or None,
                name=req.name or None,
                attributes=dict(req.attributes),
            )
        if req.HasField("permission"):
            p.info.permission.CopyFrom(req.permission)  # LiveKit replaces the permission as a whole
            p.room.bump(p)
        return p.info

    async def perform_rpc(self, req: proto.PerformRpcRequest) -> proto.PerformRpcResponse:
        if not req.destination_identity:
            raise TwirpError("invalid_argument", "destination identity is required")
        room = self._room(req.room)
        p = room.participant(req.destination_identity)
        if len(req.payload.encode()) > RPC_MAX_PAYLOAD_BYTES:
            raise rpc_error(1402)
        timeout_ms = req.response_timeout_ms or RPC_DEFAULT_TIMEOUT_MS
        request_id = str(uuid.uuid4())
        # LiveKit puts the request id where the caller's identity goes, so the reply comes back to it.
        packet = models.DataPacket(
            kind=models.DataPacket.RELIABLE,
            participant_identity=request_id,
            rpc_request=models.RpcRequest(
                id=request_id,
                method=req.method,
                payload=req.payload,
                response_timeout_ms=timeout_ms,
                version=1,
            ),
        )
        loop = asyncio.get_running_loop()
        acked = asyncio.Event()
        answer: asyncio.Future[models.RpcResponse] = loop.create_future()

        def on_reply(reply: models.DataPacket) -> None:
            acked.set()
            if reply.WhichOneof("value") == "rpc_response" and not answer.done():
                answer.set_result(reply.rpc_response)

        room.rpc_replies[request_id] = on_reply
        try:
            if p.connection is None or not p.connection.send_data(packet.SerializeToString(), "_reliable"):
                raise rpc_error(1505)
            deadline = loop.time() + timeout_ms / 1000
            try:
                async with asyncio.timeout(RPC_ACK_TIMEOUT_S):
                    await acked.wait()
            except TimeoutError:
                raise rpc_error(1501) from None
            try:
                async with asyncio.timeout_at(deadline):
                    response = await answer
            except TimeoutError:
                raise rpc_error(1502) from None
        finally:
            del room.rpc_replies[request_id]
        if response.WhichOneof("value") == "error":
            raise rpc_error(response.error.code, response.error.message, response.error.data)
        return proto.PerformRpcResponse(payload=response.payload)


_METHODS: Final[dict[str, _Method]] = {
    "CreateRoom": _Method(proto.CreateRoomRequest, "roomCreate", RoomService.create_room),
    "ListRooms": _Method(proto.ListRoomsRequest, "roomList", RoomService.list_rooms),
    "DeleteRoom": _Method(proto.DeleteRoomRequest, "roomCreate", RoomService.delete_room),
    "ListParticipants": _Method(proto.ListParticipantsRequest, "roomAdmin", RoomService.list_participants),
    "GetParticipant": _Method(proto.RoomParticipantIdentity, "roomAdmin", RoomService.get_participant),
    "RemoveParticipant": _Method(proto.RoomParticipantIdentity, "roomAdmin", RoomService.remove_participant),
    "MutePublishedTrack": _Method(proto.MuteRoomTrackRequest, "roomAdmin", RoomService.mute_published_track),
    "UpdateParticipant": _Method(proto.UpdateParticipantRequest, "roomAdmin", RoomService.update_participant),
    "UpdateRoomMetadata": _Method(
        proto.UpdateRoomMetadataRequest, "roomAdmin", RoomService.update_room_metadata
    ),
    "SendData": _Method(proto.SendDataRequest, "roomAdmin", RoomService.send_data),
    "PerformRpc": _Method(proto.PerformRpcRequest, "roomAdmin", RoomService.perform_rpc),
}
_CODES: Final[dict[type[SimulatorError], str]] = {
    AuthError: "unauthenticated",
    BadRequest: "invalid_argument",
    NotFound: "not_found",
}


def _grants(request: web.Request, server: SimServer) -> Grants:
    token = bearer_token(request.headers.get("Authorization"))
    if not token:
        raise AuthError("missing authorization: Bearer token required")
    return verify_token(token, server.config.keys)


def _authorise(grants: Grants, grant: str, room: str) -> None:
    allowed = {
        "roomList": grants.room_list,
        "roomCreate": grants.room_create,
        "roomAdmin": grants.room_admin and grants.room == room,
    }[grant]
    if not allowed:
        scope = f" for room {room!r}" if grant == "roomAdmin" else ""
        raise TwirpError("permission_denied", f"permissions denied: needs {grant}{scope}")


def _error(exc: TwirpError) -> web.Response:
    return web.json_response({"code": exc.code, "msg": exc.msg}, status=STATUS[exc.code])


def add_twirp_routes(app: web.Application, server: SimServer) -> None:
    service = RoomService(server)
    app.router.add_post(PREFIX + "{method}", service.handle)
