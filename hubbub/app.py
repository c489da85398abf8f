"""The composition root: :func:`create_app` builds the ASGI app of one node around one Hub.

The app runs under any ASGI server and mounts inside another Starlette or FastAPI
application under a prefix with no other wiring. Its hub starts on the lifespan ``startup``
event when the server sends one, else on the first request (Starlette passes no lifespan
events to mounted apps), and stops on lifespan ``shutdown`` or :meth:`HubApp.shutdown`.
SIGTERM and SIGINT drain the node first under every server (:mod:`hubbub.drain`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from importlib.resources import files
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from hubbub.drain import SignalDrain, signal_blind_server
from hubbub.hub.auth import Identity
from hubbub.hub.errors import NotFound
from hubbub.hub.hub import Hub
from hubbub.hub.settings import Settings
from hubbub.transports import h1, http, sse, websocket
from hubbub.transports.edge import (
    error_response,
    foreign_host,
    refuse_foreign_host,
    route_path,
)

log = logging.getLogger("hubbub.app")
# The pages and scripts ship inside the package (hubbub/static), found the same way in a
# checkout, an editable install and a wheel.
STATIC = Path(str(files("hubbub.static")))
PAGES = {"/": "chat.html", "/events": "events.html", "/call": "call.html", "/admin": "admin.html"}
# The pages load only their own scripts (ES modules and admin.js, no inline script), styles
# (inline <style> and style attributes too), a data: favicon, and talk to their own origin
# (fetch, EventSource and WebSocket: CSP Level 3 'self' covers ws:/wss: of the same host);
# the call page shows MediaStreams (srcObject). No page may be framed.
PAGE_CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "media-src 'self' blob: mediastream:",
        "connect-src 'self'",
        "font-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# What an in-process publish acts as: a backend holding an API key (every grant).
IN_PROCESS = Identity(sub="in-process", api_key=True, scope="in-process")


def _page(name: str) -> Route:
    async def endpoint(request: Request) -> Response:
        path = STATIC / name
        if not path.exists():
            return error_response(NotFound(f"{name} is not installed"))
        return FileResponse(path, headers=PAGE_HEADERS)

    return endpoint  # type: ignore[return-value]


class HubApp(Starlette):
    """The ASGI app of one node (a Starlette app with the hub's lifecycle built in).

    * ``app.hub`` is the node's :class:`Hub`, ``app.settings`` its :class:`Settings`.
    * :meth:`start` / :meth:`shutdown` start and drain-then-stop the hub; both are idempotent
      and called for you by the lifespan protocol, by the first request, and by SIGTERM.
    * :meth:`publish` publishes from the same process, with the checks and the result of
      ``POST /v1/rooms/{room}/messages`` made with an API key.

    WebSocket connections to ``/v1/ws`` go straight to the endpoint
    (:func:`hubbub.transports.websocket.asgi_endpoint`), and ``GET``/``HEAD`` on the SSE paths
    to :meth:`hubbub.transports.sse.SSEEndpoint.answer`: the router and middleware layers do
    nothing for them but hold a coroutine frame each for the connection's life. Middleware
    added to the app therefore never sees these connections.
    """

    hub: Hub
    settings: Settings

    def __init__(
        self, settings: Settings, hub: Hub, routes: list[BaseRoute], handle_signals: bool = True
    ) -> None:
        super().__init__(routes=routes)
        self.hub = hub
        self.settings = settings
        self.state.hub = hub
        self.state.settings = settings
        self._started = False
        self._stopped = False
        self._starting: asyncio.Lock | None = None
        self._signals = SignalDrain(self._drain_on_signal) if handle_signals else None
        # Answers GET/HEAD on the SSE paths ahead of the Starlette stack (set by create_app).
        self.sse_endpoint: sse.SSEEndpoint | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if foreign_host(scope, self.settings):  # dev mode: DNS rebinding
            await refuse_foreign_host(scope, receive, send)
            return
        if not self._started:
            await self.start()
        # A WebSocket on /v1/ws or an SSE stream: the endpoint's own coroutine, awaited here
        # without Starlette's layers between.
        direct = self._direct(scope, receive, send)
        await (super().__call__(scope, receive, send) if direct is None else direct)

    def _direct(
        self, scope: Scope, receive: Receive, send: Send
    ) -> Coroutine[Any, Any, None] | None:
        if scope["type"] == "websocket":
            if route_path(scope) != websocket.PATH:
                return None
            scope["app"] = self
            return websocket.asgi_endpoint(scope, receive, send)
        if self.sse_endpoint is None:
            return None
        answer = self.sse_endpoint.answer(scope, receive, send)
        if answer is not None:
            scope["app"] = self
        return answer

    async def start(self) -> None:
        """Start the hub (its broker, pub/sub reader and timers) unless it runs already, and
        take SIGTERM/SIGINT for a drain when on the main thread. Raises what the broker's
        start raises (a bad Redis URL); an unreachable Redis is no error (ready turns 200
        when it answers)."""
        if self._started:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._started:
                return
            if self.settings.dev_mode:
                log.warning(
                    "DEV MODE: no JWT secret, public key, JWKS or API key is configured; "
                    "anonymous guests may use every room. Configure HUB_JWT_SECRET or "
                    "HUB_API_KEYS for production."
                )
            await self.hub.start()
            # (install() is False off the main thread: no signal handling to warn about.)
            signals = self._signals is not None and self._signals.install()
            if signals and (why := signal_blind_server()) is not None:
                log.warning("no drain on SIGTERM: %s", why)
            self._started = True
            log.info("hub started (node %s, broker %s)", self.hub.node_id, _scheme(self.settings))

    async def shutdown(self, window: float | None = None) -> None:
        """Drain (ready 503, sessions closed with 4000 over ``window`` seconds, SSE streams
        ended with their final event) and stop the hub. Call it from the embedding app's own
        lifespan when the hub is mounted; idempotent."""
        try:
            if self._stopped or not self._started:
                return
            self._stopped = True
            if not self.hub.draining:
                await self.drain(window)
            await self.hub.stop()
        finally:
            if self._signals is not None:
                self._signals.uninstall()

    async def drain(self, window: float | None = None) -> None:
        """Close every session with 4000 over ``window`` seconds (default: a third of
        ``HUB_SHUTDOWN_TIMEOUT``, at most 2 s) and wait until they are gone or most of
        ``HUB_SHUTDOWN_TIMEOUT`` is spent. New sessions are refused from the first moment."""
        timeout = self.settings.shutdown_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout - min(2.0, timeout / 4)
        log.info("draining %d sessions (HUB_SHUTDOWN_TIMEOUT=%gs)", len(self.hub.sessions), timeout)
        await self.hub.drain(window=min(2.0, timeout / 3) if window is None else window)
        while self.hub.sessions and loop.time() < deadline:
            await asyncio.sleep(0.05)

    async def _drain_on_signal(self) -> None:
        if self._started and not self.hub.draining:
            await self.drain()

    async def publish(
        self,
        room: str,
        data: Any,
        *,
        event: str | None = None,
        ephemeral: bool = False,
        key: str | None = None,
    ) -> dict[str, Any]:
        """Publish ``data`` into ``room`` from this process, as ``POST /v1/rooms/{room}/messages``
        with an API key does: the same checks (room name, event name, size, idempotency key)
        and the same result (``room``, ``offset``, ``epoch``, ``cursor``; ``ephemeral: true``
        for ephemeral publications). Raises the :mod:`hubbub.hub.errors` tree: BadRequest,
        TooLarge, Conflict (idempotency key reused with other content), Unavailable (broker
        down; retry). Starts the hub if it is not running yet."""
        if not self._started:
            await self.start()
        return await self.hub.publish(
            IN_PROCESS, room, data, event=event, ephemeral=ephemeral, key=key
        )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as exc:
                    log.exception("shutdown failed")
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return


def _scheme(settings: Settings) -> str:
    return settings.broker_url.split("://", 1)[0] + "://"


def create_app(
    settings: Settings | None = None, hub: Hub | None = None, *, handle_signals: bool = True
) -> HubApp:
    """The ASGI app of one node.

    With no ``settings``, they are read from the ``HUB_*`` environment (and ``HUB_CONFIG``'s
    TOML file) exactly as ``hubbub serve`` reads them; a bad value raises
    :class:`hubbub.hub.errors.ConfigError` naming the variable. ``hub`` lets tests share a
    hub; by default the app builds its own. ``handle_signals=False`` leaves SIGTERM/SIGINT
    alone (the embedding application then calls :meth:`HubApp.shutdown` itself).

    Dev mode (no secret, public key, JWKS or API key) with a ``host`` setting that is not
    loopback raises ConfigError (:meth:`Settings.check_serving`); whatever the server binds,
    a dev-mode app answers 403 to requests whose ``Host`` does not name loopback."""
    if settings is None:
        settings = Settings.load()
    settings.check_serving()
    the_hub = hub or Hub(settings)
    h1.HEADER_TIMEOUT = settings.handshake_timeout
    routes: list[BaseRoute] = [
        *websocket.routes(the_hub),
        *sse.routes(the_hub),
        *http.routes(the_hub),
    ]
    for path, name in PAGES.items():
        routes.append(Route(path, _page(name), methods=["GET", "HEAD"]))
    routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))
    app = HubApp(settings, the_hub, routes, handle_signals)
    http.install(app, the_hub)
    app.sse_endpoint = sse.install(app, the_hub)  # SSE streams answered ahead of the stack
    return app


def app_from_env() -> HubApp:
    """App factory for ``uvicorn --factory`` worker processes: settings and logging from the
    environment."""
    from hubbub.cli import tune_gc
    from hubbub.logs import HeldRecords, setup_logging

    held = HeldRecords("hubbub.settings")  # warnings in the log format, as in hubbub serve
    try:
        settings = Settings.load()
        setup_logging(settings.log_format, settings.log_level)
    finally:
        held.pass_on()
    app = create_app(settings)
    tune_gc()
    return app
