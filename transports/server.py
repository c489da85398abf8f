"""uvicorn, hardened and drained the Hubbub way.

* :class:`HeaderTimeoutProtocol`: uvicorn has no header-read timeout (encode/uvicorn#157), so a
  client that opens TCP and never finishes its request headers would be kept forever
  (slowloris, hardening case 24). This protocol closes such connections after
  ``HUB_HANDSHAKE_TIMEOUT`` seconds. It also lets a streaming response (SSE) write HTTP/1.1
  chunks straight to the socket (:class:`ChunkedStream`).
* :class:`HubServer`: on SIGTERM, stop accepting, turn ready to 503, close WebSocket sessions
  with 4000 in batches and end SSE streams, then let uvicorn finish (PROTOCOL.md §7).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

log = logging.getLogger("hubbub.server")

# Set by create_app() from the settings (each worker process builds its own app).
HEADER_TIMEOUT = 10.0


def http_chunk(body: bytes) -> bytes:
    """``body`` as one HTTP/1.1 chunk of a chunked response (RFC 9112 §7.1). Empty bodies must
    not be framed: an empty chunk ends the response."""
    return b"%x\r\n%b\r\n" % (len(body), body)


class ChunkedStream:
    """Direct writes into one chunked HTTP/1.1 response, bypassing the ASGI ``send`` coroutine.

    Obtained from :meth:`HeaderTimeoutProtocol.chunked_stream` once the response headers went
    out through ASGI; the response still ends through ASGI (``more_body: False``), so uvicorn's
    request/response state stays right. ``flow.write_paused`` is True while the transport is
    over its high-water mark (asyncio flow control): callers check it before accepting more.
    ``on_lost`` is called once when the connection goes away (uvicorn's ``connection_lost``),
    since nothing reads the ASGI ``receive`` of a stream that writes directly.
    """

    __slots__ = ("cycle", "flow", "on_lost", "proto", "transport")

    def __init__(self, proto: HeaderTimeoutProtocol, cycle: RequestResponseCycle) -> None:
        self.proto = proto
        self.cycle = cycle
        self.flow: FlowControl = cycle.flow
        self.transport = cycle.transport
        self.on_lost: Callable[[], None] | None = None

    def write(self, chunks: bytes) -> bool:
        """Write already framed chunks (:func:`http_chunk`). Returns False, writing nothing, once
        the response is complete or the connection is closing or gone. Flow control is the
        caller's: this writes even while ``flow.write_paused`` (what was accepted goes out)."""
        cycle = self.cycle
        if cycle.disconnected or cycle.response_complete or self.transport.is_closing():
            return False
        self.transport.write(chunks)
        return True

    async def drain(self) -> None:
        """Wait until the transport is below its low-water mark (or the connection is gone)."""
        await self.flow.drain()

    def abort(self) -> None:
        """Drop the connection now, unflushed data included (a client that stopped reading).
        The response counts as disconnected, so ending the ASGI call is no error."""
        self.cycle.disconnected = True
        self.transport.abort()

    def lost(self) -> None:
        callback, self.on_lost = self.on_lost, None
        if callback is not None:
            callback()

    def detach(self) -> None:
        """The response ended: no more ``on_lost`` calls."""
        self.on_lost = None
        if self.proto._stream is self:
            self.proto._stream = None


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes a connection whose request headers take too long, and that
    offers streaming responses a direct write path (:meth:`chunked_stream`), reachable by the app
    through ``scope["extensions"]["hubbub.http"]``."""

    _header_timer: asyncio.TimerHandle | None = None
    _stream: ChunkedStream | None = None

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
        self.scope["extensions"] = {"hubbub.http": self}  # type: ignore[dict-item]
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.lost()

    def chunked_stream(self, scope: Any) -> ChunkedStream | None:
        """A :class:`ChunkedStream` for the response to ``scope``, or None (then use the ASGI
        ``send``): only over HTTP/1.1, for the connection's current request, once its response
        headers were sent with chunked transfer encoding and while it is neither complete nor
        disconnected."""
        cycle: RequestResponseCycle | None = self.cycle
        if (
            cycle is None
            or cycle.scope is not scope
            or scope.get("http_version", "1.1") != "1.1"
            or scope.get("method") == "HEAD"
            or not cycle.response_started
            or cycle.chunked_encoding is not True
            or cycle.response_complete
            or cycle.disconnected
            or self.transport.is_closing()
        ):
            return None
        self._stream = ChunkedStream(self, cycle)
        return self._stream


def text_frame_header(length: int) -> bytes:
    """Header of one unmasked, final text frame of ``length`` payload bytes (RFC 6455 §5.2:
    servers never mask). Without extensions it is the same for every subscriber."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


class _ServerConnection(ServerProtocol):
    """websockets' sans-I/O server, except for a Close frame that arrives between the fragments
    of a message: RFC 6455 §5.4/§5.5 let control frames interleave, so the unfinished message is
    dropped and the close is answered normally (websockets answers 1002 "incomplete fragmented
    message"; Autobahn case 7.1.5 expects a clean close)."""

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE:
            self.current_size = None
        super().recv_frame(frame)


class _Flag:
    """``asyncio.Event`` for one connection, without the Event's deque (about 0.8 KiB each, and
    every connection has one): the waiters live in a list created on the first wait."""

    __slots__ = ("_set", "_waiters")

    def __init__(self, value: bool = True) -> None:
        self._set = value
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            waiters, self._waiters = self._waiters, None
            for w in waiters or ():
                if not w.done():
                    w.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if self._waiters is not None and fut in self._waiters:
                self._waiters.remove(fut)


class _Inbox:
    """What uvicorn's protocol uses of its ``asyncio.Queue`` of received ASGI events
    (``put_nowait``, ``get``, ``empty``; uvicorn 0.54), plus ``get_nowait`` and ``qsize``,
    without the queue's three deques and its Event (about 2.4 KiB per connection). Unbounded
    like uvicorn's; FIFO; several getters allowed. tests/transports/test_ws_memory.py checks
    the protocol still uses it."""

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiters: list[asyncio.Future[None]] | None = None

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiters = self._waiters
        if waiters:
            for w in waiters:
                if not w.done():
                    w.set_result(None)
                    break

    async def get(self) -> Any:
        items = self._items
        while not items:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(fut)
            try:
                await fut
            except BaseException:
                # Woken and cancelled at once: pass the wake-up on to the next getter.
                if fut.done() and not fut.cancelled() and items:
                    self._wake_one()
                raise
            finally:
                waiters = self._waiters
                if waiters is not None:
                    waiters.remove(fut)
                    if not waiters:
                        self._waiters = None
        return items.pop(0)

    def _wake_one(self) -> None:
        for w in self._waiters or ():
            if not w.done():
                w.set_result(None)
                return


class HandshakeGuardProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, plus:

    * when the opening handshake is refused by the parser (e.g. a 20 KB request line: 414),
      write the refusal and close, instead of leaving the client hanging (uvicorn drops that
      response);
    * a synchronous write path for the fan-out (:meth:`write_now`), reachable by the app through
      ``scope["extensions"]["hubbub.ws"]`` (Starlette wraps the ASGI ``send``, so the protocol
      is not reachable through it);
    * less memory per idle connection: a list-based inbox and flag instead of uvicorn's
      ``asyncio.Queue`` and ``asyncio.Event``, the parsed handshake request and the prepared
      response let go once used, and no protocol-level keepalive pings: Hubbub's own heartbeat
      (``ping`` frames, close 4002, PROTOCOL.md §3) already finds dead peers.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn.__class__ = _ServerConnection  # same state, one method changed
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # The headers were copied to the scope. The request object itself stays referenced by
        # the websockets parser (a generator local) for the connection's life: empty it.
        event.headers.clear()
        self.request = None  # type: ignore[assignment]
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"]["hubbub.ws"] = self

    def start_keepalive(self) -> None:
        """No protocol-level pings (see the class docstring); called once the handshake is
        written, so the prepared response is not needed any more either."""
        self.response = None  # type: ignore[assignment]

    def can_write_now(self) -> bool:
        """True when pre-built frames may go straight to the transport: the handshake is done,
        no close was sent or received, no extension (per-message deflate) rewrites frames, and
        the transport is below its high-water mark (asyncio flow control)."""
        return (
            self.writable.is_set()
            and self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.conn.state is State.OPEN
            and not self.conn.extensions
            and not self.transport.is_closing()
        )

    def write_now(self, frames: bytes) -> bool:
        """Write already-framed server frames (see :func:`text_frame_header`) at once, bypassing
        the ASGI ``send`` coroutine. Returns False, writing nothing, when :meth:`can_write_now`
        is False; the caller then falls back to the queue and ``send``."""
        if not self.can_write_now():
            return False
        self.transport.write(frames)
        return True

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
            # Part of the budget stays for uvicorn's own steps, the lifespan shutdown and the
            # interpreter's exit (about a second together).
            deadline = time.monotonic() + timeout - min(2.0, timeout / 4)
            log.info("draining %d sessions (HUB_SHUTDOWN_TIMEOUT=%gs)", len(hub.sessions), timeout)
            await hub.drain(window=min(2.0, timeout / 3))
            while hub.sessions and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            # uvicorn then waits for the remaining requests and connections (a client that
            # stopped reading blocks its close frame) with what is left of the budget, not a
            # second full HUB_SHUTDOWN_TIMEOUT: the node exits within it (PROTOCOL.md §7).
            self.config.timeout_graceful_shutdown = max(0.1, deadline - time.monotonic())
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
        # Compression costs CPU per subscriber and is a decompression-bomb risk (hardening case 17).
        "ws_per_message_deflate": False,
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        "lifespan": "on",
        "server_header": False,
    }
