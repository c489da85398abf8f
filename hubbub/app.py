"""The composition root: ``create_app(settings)`` builds the Starlette app around one Hub."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from importlib.resources import files
from pathlib import Path

from starlette._utils import get_route_path
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from hubbub.hub.errors import NotFound
from hubbub.hub.hub import Hub
from hubbub.hub.settings import Settings
from hubbub.transports import http, server, sse, websocket
from hubbub.transports.edge import error_response

log = logging.getLogger("hubbub.app")
# The pages and scripts ship inside the package (hubbub/static), found the same way in a
# checkout, an editable install and a wheel.
STATIC = Path(str(files("hubbub.static")))
PAGES = {"/": "chat.html", "/events": "events.html", "/call": "call.html", "/admin": "admin.html"}


def _page(name: str) -> Route:
    async def endpoint(request: Request) -> Response:
        path = STATIC / name
        if not path.exists():
            return error_response(NotFound(f"{name} is not installed"))
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    return endpoint  # type: ignore[return-value]


class HubApp(Starlette):
    """The Starlette app, with WebSocket connections to ``/v1/ws`` handed straight to the
    endpoint (:func:`transports.websocket.asgi_endpoint`): the router and middleware layers
    would do nothing for them (they pass WebSockets through; the endpoint handles its own
    errors) but hold a coroutine frame each for the connection's life, ≈ 4.6 KiB in all.
    Middleware added to the app therefore never sees these connections. The path is matched
    as Starlette's router does (``root_path`` stripped)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and get_route_path(scope) == websocket.PATH:
            scope["app"] = self
            await websocket.asgi_endpoint(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, hub: Hub | None = None) -> Starlette:
    """Build the app. The lifespan starts the hub; shutdown drains it (PROTOCOL.md §7)."""
    the_hub = hub or Hub(settings)
    server.HEADER_TIMEOUT = settings.handshake_timeout

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.dev_mode:
            log.warning(
                "DEV MODE: no JWT secret, public key, JWKS or API key is configured; anonymous "
                "guests may use every room. Configure HUB_JWT_SECRET or HUB_API_KEYS for production."
            )
        await the_hub.start()
        try:
            yield
        finally:
            await the_hub.drain(window=min(1.0, settings.shutdown_timeout / 2))
            await the_hub.stop()

    routes: list[BaseRoute] = [
        *websocket.routes(the_hub),
        *sse.routes(the_hub),
        *http.routes(the_hub),
    ]
    for path, name in PAGES.items():
        routes.append(Route(path, _page(name), methods=["GET", "HEAD"]))
    routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))
    app = HubApp(routes=routes, lifespan=lifespan)
    app.state.hub = the_hub
    app.state.settings = settings
    http.install(app, the_hub)
    sse.install(app, the_hub)  # SSE streams answered ahead of the Starlette stack
    return app


def app_from_env() -> Starlette:
    """App factory for ``uvicorn --factory`` worker processes: settings from the environment."""
    from hubbub.logs import setup_logging

    settings = Settings.load()
    setup_logging(settings.log_format, settings.log_level)
    return create_app(settings)
