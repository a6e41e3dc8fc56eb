"""A raw LiveKit signaling client for tests: it speaks the wire protocol and records what it hears."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import jwt
import websockets
from google.protobuf import json_format
from livekit.protocol import models, rtc
from websockets.asyncio.client import ClientConnection

API_KEY = "devkey"
API_SECRET = "devsecret-devsecret-devsecret-32"


def make_token(
    identity: str,
    room: str,
    *,
    key: str = API_KEY,
    secret: str = API_SECRET,
    name: str = "",
    metadata: str = "",
    kind: str = "",
    ttl_s: float = 600.0,
    **grants: Any,
) -> str:
    """A LiveKit access token; ``grants`` are VideoGrant keys in snake_case (``can_publish=False``)."""
    video: dict[str, Any] = {"roomJoin": True, "room": room}
    for snake, value in grants.items():
        head, *rest = snake.split("_")
        video[head + "".join(part.title() for part in rest)] = value
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": key,
        "sub": identity,
        "nbf": now,
        "exp": int(now + ttl_s),
        "video": video,
    }
    claims.update({k: v for k, v in (("name", name), ("metadata", metadata), ("kind", kind)) if v})
    return jwt.encode(claims, secret, algorithm="HS256")


def v1_join_request(join: rtc.JoinRequest) -> str:
    wrapped = rtc.WrappedJoinRequest(join_request=join.SerializeToString())
    return base64.urlsafe_b64encode(wrapped.SerializeToString()).decode()


class SignalClient:
    """Connect with :meth:`open`; every response lands in :attr:`responses` in order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.responses: list[rtc.SignalResponse] = []
        self.text_frames = 0
        self.binary_frames = 0
        self.closed = asyncio.Event()
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls,
        base_url: str,
        token: str,
        *,
        path: str = "/rtc",
        params: Mapping[str, str] | None = None,
        bearer: bool = False,
    ) -> SignalClient:
        query: dict[str, str] = {"protocol": "17", "sdk": "python", "auto_subscribe": "0"}
        query.update(params or {})
        headers = {}
        if bearer:
            headers["Authorization"] = f"Bearer {token}"
        else:
            query["access_token"] = token
        ws = await websockets.connect(f"{base_url}{path}?{urlencode(query)}", additional_headers=headers)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                response = rtc.SignalResponse()
                if isinstance(frame, str):
                    self.text_frames += 1
                    json_format.Parse(frame, response, ignore_unknown_fields=True)
                else:
                    self.binary_frames += 1
                    response.ParseFromString(frame)
                async with self._changed:
                    self.responses.append(response)
                    self._changed.notify_all()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()
            async with self._changed:
                self._changed.notify_all()

    def kinds(self) -> list[str]:
        return [r.WhichOneof("message") or "" for r in self.responses]

    def of(self, kind: str) -> list[Any]:
        return [getattr(r, kind) for r in self.responses if r.WhichOneof("message") == kind]

    async def expect(self, kind: str, *, within: float = 5.0, after: int = 0) -> Any:
        """The first ``kind`` message at index >= ``after``, waiting up to ``within`` seconds."""

        def find() -> Any:
            for r in self.responses[after:]:
                if r.WhichOneof("message") == kind:
                    return getattr(r, kind)
            return None

        async def wait() -> Any:
            async with self._changed:
                while (found := find()) is None:
                    if self.closed.is_set():
                        raise AssertionError(f"socket closed before a {kind!r}; got {self.kinds()}")
                    await self._changed.wait()
                return found

        try:
            return await asyncio.wait_for(wait(), within)
        except TimeoutError:
            raise AssertionError(f"no {kind!r} within {within}s; got {self.kinds()}") from None

    async def send(self, request: rtc.SignalRequest, *, json_mode: bool = False) -> None:
        if json_mode:
            await self.ws.send(json_format.MessageToJson(request))
        else:
            await self.ws.send(request.SerializeToString())

    async def send_raw(self, frame: bytes | str) -> None:
        await self.ws.send(frame)

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def __aenter__(self) -> SignalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def participant_states(update: rtc.ParticipantUpdate) -> dict[str, int]:
    return {p.identity: p.state for p in update.participants}


__all__ = [
    "API_KEY",
    "API_SECRET",
    "SignalClient",
    "make_token",
    "models",
    "participant_states",
    "v1_join_request",
]
