"""Hubbub: a real-time messaging hub (WebSocket, Server-Sent Events, WebRTC signaling).

The public Python API:

* :func:`create_app` builds the ASGI app of one node; with no argument it reads the ``HUB_*``
  environment exactly as ``hubbub serve`` does. Run it with any ASGI server, or mount it inside
  another Starlette or FastAPI application.
* :class:`Settings` is the node's configuration (one frozen object, validated).
* :class:`HubClient` and :class:`SyncHubClient` are the backend client (HTTP API and SSE).

Names are imported on first use, so ``import hubbub`` stays cheap for the command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from hubbub.app import create_app
    from hubbub.client import HubClient, HubClientError, SyncHubClient
    from hubbub.hub.settings import Settings

__all__ = ["HubClient", "HubClientError", "Settings", "SyncHubClient", "__version__", "create_app"]

_WHERE = {
    "create_app": "hubbub.app",
    "Settings": "hubbub.hub.settings",
    "HubClient": "hubbub.client",
    "HubClientError": "hubbub.client",
    "SyncHubClient": "hubbub.client",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'hubbub' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
