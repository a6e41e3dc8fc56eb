"""JSON admin endpoints of the simulator: run scenario actions and read room state over HTTP.

``Authorization: Bearer <API secret>`` or a token (signed with the secret) that has ``roomAdmin``.

- ``POST /admin/rooms/{room}/actions``: a step ``{"action": ..., ...}`` or a list of them
- ``GET /admin/rooms``: every room, its participants and tracks
- ``GET /admin/rooms/{room}``: one room, plus the data packets it received
"""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web
from google.protobuf import json_format

from bridge.errors import AuthError, BadRequest, SimulatorError
from bridge.sim.auth import bearer_token, verify_token

if TYPE_CHECKING:
    from bridge.sim.room import SimRoom
    from bridge.sim.server import SimServer


def add_admin_routes(app: web.Application, server: SimServer) -> None:
    from bridge.sim.scenario import Scenario

    scenario = Scenario(server)

    def authorise(request: web.Request) -> None:
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            raise AuthError("admin API needs Authorization: Bearer <API secret or roomAdmin token>")
        if any(hmac.compare_digest(token, secret) for secret in server.config.keys.values()):
            return
        if not verify_token(token, server.config.keys).room_admin:
            raise AuthError("token lacks the roomAdmin grant")

    def error(exc: SimulatorError) -> web.Response:
        return web.json_response({"error": str(exc)}, status=exc.status)

    async def actions(request: web.Request) -> web.Response:
        try:
            authorise(request)
            try:
                body = await request.json()
            except ValueError as exc:
                raise BadRequest(f"body is not JSON: {exc}") from None
            steps = body if isinstance(body, list) else [body]
            if not all(isinstance(s, dict) for s in steps):
                raise BadRequest("body must be an action object or a list of them")
            results = await scenario.run(steps, room=request.match_info["room"])
        except SimulatorError as exc:
            return error(exc)
        return web.json_response({"results": results})

    async def rooms(request: web.Request) -> web.Response:
        try:
            authorise(request)
        except SimulatorError as exc:
            return error(exc)
        return web.json_response({"rooms": [room_state(r) for r in server.rooms.values()]})

    async def one_room(request: web.Request) -> web.Response:
        try:
            authorise(request)
        except SimulatorError as exc:
            return error(exc)
        name = request.match_info["room"]
        if name not in server.rooms:
            return web.json_response({"error": f"no room {name!r}"}, status=404)
        return web.json_response(room_state(server.rooms[name], with_data=True))

    app.router.add_post("/admin/rooms/{room}/actions", actions)
    app.router.add_get("/admin/rooms", rooms)
    app.router.add_get("/admin/rooms/{room}", one_room)


def room_state(room: SimRoom, *, with_data: bool = False) -> dict[str, Any]:
    state: dict[str, Any] = {
        "room": json_format.MessageToDict(room.info),
        "participants": [
            {**json_format.MessageToDict(p.info), "connected": p.connection is not None} for p in room
        ],
    }
    if with_data:
        state["data"] = [
            {"from": sender, "label": label, "packet": json.loads(json_format.MessageToJson(packet))}
            for sender, packet, label in room.data_received
        ]
    return state
