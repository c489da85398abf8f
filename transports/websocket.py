"""WebSocket transport (PROTOCOL.md §3)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from hub.hub import Hub


def routes(hub: Hub) -> list[BaseRoute]:
    return []
