"""How ``hubbub serve`` runs a node on uvicorn: the one place that knows about the server.

uvicorn serves Hubbub's own connection protocol (:class:`hubbub.transports.h1.HttpConnection`,
with :class:`hubbub.transports.wsconn.WSConnection` after an upgrade) through its documented
``http=`` option. That protocol gives the app the direct write paths of the fan-out
(``scope["extensions"]["hubbub.ws"]`` and ``["hubbub.http"]``), a header-read timeout and
header size limits. The app itself is plain ASGI: without those extensions (another server,
or this fallback) it writes through ``send``.

What the protocol relies on from uvicorn is checked when the options are built
(:func:`fast_path_problem`); if anything is missing (a uvicorn release that changed it), the
node logs why and runs on uvicorn's own protocols instead: slower fan-out, same behaviour.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

from hubbub.transports.h1 import HEADER_TIMEOUT, HttpConnection
from hubbub.transports.h1_cycle import ChunkedStream, http_chunk
from hubbub.transports.wsconn import WSConnection, text_frame_header

__all__ = [
    "HEADER_TIMEOUT",
    "ChunkedStream",
    "HttpConnection",
    "WSConnection",
    "fast_path_problem",
    "http_chunk",
    "server_options",
    "text_frame_header",
]

log = logging.getLogger("hubbub.server")

# What HttpConnection reads of uvicorn's objects (see the h1 module's docstring).
CONFIG_FIELDS = ("loaded_app", "root_path", "timeout_keep_alive", "ws_max_size", "access_log")
STATE_FIELDS = ("connections", "tasks", "default_headers", "total_requests")
PROTOCOL_ARGS = ("config", "server_state", "app_state")


def fast_path_problem() -> str | None:
    """Why Hubbub's protocol cannot run on the installed uvicorn, or None when it can."""
    try:
        import httptools  # noqa: F401
        import uvicorn
        from uvicorn.server import Server, ServerState
    except ImportError as exc:
        return f"missing module: {exc.name}"
    return _problem(ServerState, uvicorn.Config, Server)


@functools.cache
def _problem(state_class: Any, config_class: Any, server_class: Any) -> str | None:
    """:func:`fast_path_problem` for these classes (reading their source takes ~15 ms, and
    every node a process starts asks)."""
    state = state_class()
    missing = [name for name in STATE_FIELDS if not hasattr(state, name)]
    if missing:
        return f"uvicorn's ServerState has no {', '.join(missing)}"
    # (No Config is made here: making one configures uvicorn's logging.)
    params = inspect.signature(config_class).parameters
    wanted = ("http", "timeout_graceful_shutdown", *CONFIG_FIELDS[1:])
    missing = [n for n in wanted if n not in params]
    if missing:
        return f"uvicorn.Config takes no {', '.join(missing)}"
    if "self.loaded_app" not in (_source(config_class) or "self.loaded_app"):
        return "uvicorn.Config no longer sets loaded_app"
    source = _source(server_class)
    if source is not None and not all(f"{arg}=" in source for arg in PROTOCOL_ARGS):
        return "uvicorn no longer builds protocols with config=, server_state=, app_state="
    return None


def _source(obj: Any) -> str | None:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return None


def server_options(settings: Any, fast_path: bool | None = None) -> dict[str, Any]:
    """uvicorn options every Hubbub node runs with (CLI and tests alike). ``fast_path``:
    None checks (:func:`fast_path_problem`) and logs a fallback; False forces uvicorn's own
    protocols (plain ASGI); True forces Hubbub's."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        # A drained node's clients arrive here all at once: a full accept queue drops their
        # SYNs, and each retries only after 1 s, 3 s, 7 s (a reconnect storm's long tail).
        "backlog": settings.backlog,
        "ws_max_size": settings.largest_message_bytes + 16 * 1024,
        # Compression costs CPU per subscriber and is a decompression-bomb risk.
        "ws_per_message_deflate": False,
        # The app drains its sessions on SIGTERM before uvicorn starts its own shutdown
        # (hubbub.drain); uvicorn then waits this long for what remains.
        "timeout_graceful_shutdown": max(0.5, min(2.0, settings.shutdown_timeout / 4)),
        "lifespan": "on",
        "server_header": False,
    }
    if fast_path is None:
        problem = fast_path_problem()
        if problem is not None:
            log.warning("running on uvicorn's own protocols (plain ASGI): %s", problem)
        fast_path = problem is None
    if fast_path:
        options["http"] = HttpConnection
    else:
        options["ws_ping_interval"] = None  # Hubbub's heartbeat is its own
    return options
