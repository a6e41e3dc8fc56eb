"""The simulator's webhooks: ``room_started`` / ``room_finished`` POSTed the way LiveKit sends them.

LiveKit's notifier serialises a ``WebhookEvent`` as protobuf JSON, signs it with an access token for the
API key (valid 5 minutes) whose ``sha256`` claim is the base64 SHA-256 of the body, and POSTs it with
that token as the bare ``Authorization`` header and ``Content-Type: application/webhook+json``. Events
go out one at a time in the order they happened, to every URL; a failed POST is logged and counted, not
retried (LiveKit retries a few times, then drops: nobody may rely on every webhook arriving).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import time
from collections import deque
from typing import Final

import aiohttp
import jwt
from google.protobuf import json_format
from livekit.protocol import models
from livekit.protocol.webhook import WebhookEvent

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "application/webhook+json"
TOKEN_TTL_S: Final = 300
POST_TIMEOUT_S: Final = 5.0


def sign_webhook(body: bytes, key: str, secret: str, *, now: float | None = None) -> str:
    """The ``Authorization`` value LiveKit sends with ``body``."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": key,
        "nbf": issued,
        "exp": issued + TOKEN_TTL_S,
        "sha256": base64.b64encode(hashlib.sha256(body).digest()).decode(),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def webhook_body(event: str, room: models.Room) -> bytes:
    message = WebhookEvent(event=event, id="EV_" + secrets.token_hex(6), created_at=int(time.time()))
    message.room.CopyFrom(room)
    return json_format.MessageToJson(message, indent=None).encode()


class WebhookSender:
    """Queues events and POSTs them in order to every URL in ``urls`` (a list: tests add to it)."""

    def __init__(self, urls: list[str], key: str, secret: str) -> None:
        self.urls = urls
        self._key = key
        self._secret = secret
        self._queue: deque[tuple[str, models.Room]] = deque()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent: list[tuple[str, str, int]] = []  # (event, room, HTTP status or 0 for no answer)

    def notify(self, event: str, room: models.Room) -> None:
        if not self.urls:
            return
        info = models.Room()
        info.CopyFrom(room)  # as it was now, not as it is when the POST goes out
        self._queue.append((event, info))
        self._ready.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sim-webhooks")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=POST_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._queue:
                    event, room = self._queue.popleft()
                    for url in list(self.urls):
                        self.sent.append((event, room.name, await self._post(http, url, event, room)))

    async def _post(self, http: aiohttp.ClientSession, url: str, event: str, room: models.Room) -> int:
        body = webhook_body(event, room)
        headers = {"Authorization": sign_webhook(body, self._key, self._secret), "Content-Type": CONTENT_TYPE}
        try:
            async with http.post(url, data=body, headers=headers) as response:
                if response.status >= 300:
                    log.warning("webhook %s room=%s to %s: HTTP %d", event, room.name, url, response.status)
                return response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("webhook %s room=%s to %s failed: %s", event, room.name, url, type(exc).__name__)
            return 0
