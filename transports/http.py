"""HTTP API (PROTOCOL.md §5), health and metrics."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from hub.hub import Hub
from transports.edge import json_response


def routes(hub: Hub) -> list[BaseRoute]:
    async def live(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def ready(request: Request) -> Response:
        ok = await hub.ready()
        return json_response({"status": "ok" if ok else "unavailable"}, 200 if ok else 503)

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(hub.metrics.render(), media_type="text/plain; version=0.0.4")

    return [
        Route("/health/live", live),
        Route("/health/ready", ready),
        Route("/metrics", metrics),
    ]


def install(app: Starlette, hub: Hub) -> None:
    """Error handlers and middleware for the HTTP API."""
