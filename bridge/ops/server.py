"""The bridge's one HTTP listener (``http.listen``): ``/livez``, ``/readyz``, ``/metrics``, ``/rooms`` (the
rooms this replica owns and runs, as JSON) and, with ``discovery.webhook``, LiveKit's webhooks at
``http.webhook_path``.

It serves operators and LiveKit, never user traffic, so it is small: no access log (probes every few
seconds would drown the real lines), and handlers that only read counters or hand a verified webhook on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from livekit.protocol.webhook import WebhookEvent

from bridge.config import HttpSettings
from bridge.errors import ConfigError, WebhookRefused
from bridge.ops.health import Readiness
from bridge.ops.metrics import CONTENT_TYPE, BridgeMetrics
from bridge.rooms.webhook import WebhookVerifier

__all__ = ["OpsServer"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # a webhook is a few KiB; anything this large is not one


class OpsServer:
    """``await start()`` binds exactly ``http.listen`` (port 0: any free port, see :attr:`port`)."""

    def __init__(
        self,
        settings: HttpSettings,
        *,
        readiness: Readiness,
        metrics: BridgeMetrics,
        webhook: WebhookVerifier | None = None,
        on_webhook: Callable[[WebhookEvent], bool] | None = None,
        rooms: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._rooms = rooms
        self._settings = settings
        self.readiness = readiness
        self.metrics = metrics
        self._verifier = webhook
        self._on_webhook = on_webhook
        self._runner: web.AppRunner | None = None
        self.port = settings.port

    @property
    def url(self) -> str:
        host = self._settings.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_page)
        if self._rooms is not None:
            app.router.add_get("/rooms", self._rooms_page)
        if self._verifier is not None:
            app.router.add_post(self._settings.webhook_path, self._webhook)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._settings.host, self._settings.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                "http.listen", f"cannot listen on {self._settings.listen}: {exc.strerror}"
            ) from exc
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("http: serving /livez /readyz /metrics%s on %s", self._webhook_note(), self.url)

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def _webhook_note(self) -> str:
        return f" {self._settings.webhook_path}" if self._verifier is not None else ""

    # ------------------------------------------------------------------ handlers

    async def _livez(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        problems = self.readiness.problems()
        if problems:
            return web.json_response({"ready": False, "problems": problems}, status=503)
        return web.json_response({"ready": True})

    async def _metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render().encode(), headers={"Content-Type": CONTENT_TYPE})

    async def _rooms_page(self, request: web.Request) -> web.Response:
        assert self._rooms is not None
        return web.json_response(self._rooms())

    async def _webhook(self, request: web.Request) -> web.Response:
        assert self._verifier is not None
        body = await request.read()
        try:
            event = self._verifier.verify(body, request.headers.get("Authorization"))
        except WebhookRefused as exc:
            # One line, never the token: the reason and where it came from are what an operator needs.
            log.warning("%s (from %s)", exc, request.remote)
            return web.json_response({"error": exc.reason}, status=exc.status)
        if self._on_webhook is not None and not self._on_webhook(event):
            return web.json_response({"error": "stopping"}, status=503)  # LiveKit retries elsewhere
        return web.json_response({"ok": True})
