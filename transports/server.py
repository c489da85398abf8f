"""uvicorn, hardened and drained the Hubbub way.

* :class:`HeaderTimeoutProtocol`: uvicorn has no header-read timeout (encode/uvicorn#157), so a
  client that opens TCP and never finishes its request headers would be kept forever
  (slowloris, HARDENING 24). This protocol closes such connections after
  ``HUB_HANDSHAKE_TIMEOUT`` seconds.
* :class:`HubServer`: on SIGTERM, stop accepting, turn ready to 503, close WebSocket sessions
  with 4000 in batches and end SSE streams, then let uvicorn finish (PROTOCOL.md §7).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

log = logging.getLogger("hubbub.server")

# Set by create_app() from the settings (each worker process builds its own app).
HEADER_TIMEOUT = 10.0


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes a connection whose request headers take too long."""

    _header_timer: asyncio.TimerHandle | None = None

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)


class HandshakeGuardProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, plus: when the opening handshake is refused by
    the parser (e.g. a 20 KB request line: 414), write the refusal and close, instead of
    leaving the client hanging (uvicorn drops that response)."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.handshake_initiated and not self.transport.is_closing():
            out = self.conn.data_to_send()
            if out:
                self.transport.write(b"".join(out))
                self.transport.close()


class HubServer(uvicorn.Server):
    """uvicorn.Server whose shutdown drains the hub before uvicorn closes connections
    (uvicorn itself would close WebSockets with 1012, not the protocol's 4000)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app: Any = self.config.loaded_app
        hub = _find_hub(app)
        if hub is not None:
            for server in self.servers:
                server.close()
            timeout = hub.settings.shutdown_timeout
            deadline = time.monotonic() + timeout
            await hub.drain(window=min(2.0, timeout / 3))
            while hub.sessions and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        await super().shutdown(sockets)


def _find_hub(app: Any) -> Any:
    # The loaded app may be wrapped in uvicorn middleware (proxy headers, message logger).
    for _ in range(6):
        state = getattr(app, "state", None)
        if state is not None and getattr(state, "hub", None) is not None:
            return state.hub
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


def server_options(settings: Any) -> dict[str, Any]:
    """uvicorn options every Hubbub node runs with (CLI and tests alike)."""
    return {
        "host": settings.host,
        "port": settings.port,
        "http": HeaderTimeoutProtocol,
        "ws": HandshakeGuardProtocol,
        "ws_max_size": settings.max_message_bytes + 16 * 1024,
        # Compression costs CPU per subscriber and is a decompression-bomb risk (HARDENING 17).
        "ws_per_message_deflate": False,
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        "lifespan": "on",
        "server_header": False,
    }
