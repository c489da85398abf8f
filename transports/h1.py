"""Hubbub's HTTP/1.1 server protocol: an ``asyncio.Protocol`` that runs the ASGI app.

uvicorn runs it through its documented ``http=`` option (:mod:`hubbub.transports.server`);
it subclasses nothing of uvicorn's. Requests are parsed with ``httptools``; a WebSocket
upgrade hands the connection to :class:`hubbub.transports.wsconn.WSConnection`. What it adds
to a plain server:

* a header-read timeout: a connection whose request headers take longer than
  ``HUB_HANDSHAKE_TIMEOUT`` is closed (slowloris), and so is an idle keep-alive connection
  after uvicorn's ``timeout_keep_alive``;
* header size limits: a request target over 16 KiB is answered 414, headers over 64 KiB 431;
* a direct write path for streaming responses (SSE): ``scope["extensions"]["hubbub.http"]``
  is the connection, whose :meth:`HttpConnection.chunked_stream` lets the stream write HTTP
  chunks to the socket without going through the ASGI ``send`` coroutine, and may keep the
  response going after the ASGI call returns (:meth:`ChunkedStream.hold`).

Contract with the server that creates it (checked by :func:`server.fast_path_problem`): it is
constructed as ``cls(config=, server_state=, app_state=, _loop=)``; ``config`` carries
``loaded_app``, ``root_path``, ``timeout_keep_alive``, ``ws_max_size``, ``access_log``;
``server_state`` carries the ``connections`` and ``tasks`` sets and ``default_headers``; the
server calls :meth:`shutdown` on every connection when it stops.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Coroutine
from typing import Any, cast

import httptools

from hubbub.transports.flow import Flag
from hubbub.transports.h1_cycle import (
    ASGI_VERSION,
    ChunkedStream,
    Cycle,
    access_parts,
    addresses,
    simple_response,
)

log = logging.getLogger("hubbub.server")
access = logging.getLogger("hubbub.access")

MAX_URL = 16 * 1024
MAX_HEADERS = 64 * 1024
# Set by create_app() from the settings (each worker process builds its own app).
HEADER_TIMEOUT = 10.0


class HttpConnection(asyncio.Protocol):
    """One TCP connection speaking HTTP/1.1 (keep-alive, pipelining) to the ASGI app."""

    __slots__ = ("app", "app_state", "client", "config", "cycle", "expect_100", "header_bytes",
                 "headers", "idle", "log_access", "loop", "parser", "parsing", "pipeline",
                 "reading_paused", "refused", "root_path", "scheme", "server", "server_state",
                 "stream", "timer", "transport", "upgrade", "url", "writable",
                 "write_paused")  # fmt: skip

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any] | None = None,
        _loop: asyncio.AbstractEventLoop | None = None,
        **_: Any,
    ) -> None:
        self.config = config
        self.app = config.loaded_app
        self.server_state = server_state
        self.app_state = app_state if app_state is not None else {}
        self.loop = _loop or asyncio.get_running_loop()
        self.root_path: str = config.root_path or ""
        self.log_access = bool(config.access_log)
        # Dropped while a response streams (chunked_stream) and made again for the next request.
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.server: Any = None
        self.client: Any = None
        self.scheme = "http"
        self.writable = Flag(True)
        self.write_paused = False
        self.reading_paused = False
        self.cycle: Cycle | None = None
        self.pipeline: list[Cycle] = []
        self.stream: ChunkedStream | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.idle = False  # the timer is the keep-alive one (no request started)
        # the request being parsed
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.expect_100 = False
        self.upgrade: bytes | None = None
        self.parsing: Cycle | None = None
        self.refused = False

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        """The server's headers for every response (``Date``, …), as uvicorn keeps them
        (uvicorn replaces the list each second; it is only read here)."""
        headers: list[tuple[bytes, bytes]] = self.server_state.default_headers
        return headers

    # ---- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server_state.connections.add(self)
        self.server, self.client, self.scheme = addresses(transport)
        self._arm(HEADER_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self._disarm()
        for cycle in [self.cycle, self.parsing, *self.pipeline]:
            if cycle is not None and not cycle.complete:
                cycle.disconnected = True
                cycle.wake.set()
        self.pipeline.clear()
        self.writable.set()
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.lost()
        self.transport = None

    def eof_received(self) -> bool | None:
        return None  # close the transport (a half-closed HTTP client is done)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.writable.clear()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        if self.idle:
            # A keep-alive connection starts its next request: from now on its headers have
            # HUB_HANDSHAKE_TIMEOUT in all, however slowly they trickle in.
            self._arm(HEADER_TIMEOUT)
        if self.refused:
            return
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if not self.refused:
                self._upgrade(data[exc.args[0] :] if exc.args else b"")
        except httptools.HttpParserError:
            self._refuse(400, "Invalid HTTP request")

    def shutdown(self) -> None:
        """The server stops: close now when idle, else after the response in progress."""
        if self.transport is None:
            return
        if self.cycle is None or self.cycle.complete:
            self.transport.close()
        else:
            self.cycle.keep_alive = False
            for cycle in self.pipeline:
                cycle.keep_alive = False

    # ---- httptools callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.header_bytes = 0
        self.expect_100 = False
        self.upgrade = None
        if self.cycle is None:
            self._arm(HEADER_TIMEOUT)

    def on_url(self, url: bytes) -> None:
        if self.refused:
            return
        self.url += url
        if len(self.url) > MAX_URL:
            self._refuse(414, "Request-URI Too Long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.refused:
            return
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > MAX_HEADERS:
            self._refuse(431, "Request Header Fields Too Large")
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100 = True
        elif name == b"upgrade":
            self.upgrade = value.lower()
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.refused:
            return
        if self.cycle is None:
            self._disarm()
        parser = self.parser
        assert parser is not None  # called while it parses
        if parser.should_upgrade() and self.upgrade == b"websocket":
            return  # HttpParserUpgrade follows: _upgrade takes the connection
        parsed = httptools.parse_url(self.url)
        self.url = b""
        raw_path = parsed.path
        path = raw_path.decode("ascii", "replace")
        if "%" in path:
            path = urllib.parse.unquote(path)
        self.server_state.total_requests += 1
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": parser.get_http_version(),
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": parser.get_method().decode("ascii"),
            "root_path": self.root_path,
            "path": self.root_path + path,
            "raw_path": self.root_path.encode("ascii") + raw_path,
            "query_string": parsed.query or b"",
            "headers": self.headers,
            "state": self.app_state.copy(),
            "extensions": {"hubbub.http": self},
        }
        # The scope has the list now: let an app drop it for good (a stream keeps its scope for
        # hours; hubbub's SSE endpoint clears the headers once the stream is accepted).
        self.headers = []
        cycle = Cycle(self, scope, parser.should_keep_alive())
        cycle.continue_100 = self.expect_100
        self.parsing = cycle
        if self.cycle is None:
            self._run(cycle)
        else:  # pipelined: answered after the one in progress
            self.pipeline.append(cycle)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        if cycle is None or cycle.complete or cycle.disconnected:
            return
        cycle.body.append(body)
        if sum(map(len, cycle.body)) > 64 * 1024:
            self.pause_reading()
        cycle.wake.set()

    def on_message_complete(self) -> None:
        cycle, self.parsing = self.parsing, None
        if cycle is not None:
            cycle.more_body = False
            cycle.wake.set()

    # ---- requests and responses ---------------------------------------------------------------
    def _run(self, cycle: Cycle) -> None:
        self.cycle = cycle
        task = self.loop.create_task(self._serve(cycle))
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)

    async def _serve(self, cycle: Cycle) -> None:
        try:
            await self.app(cycle.scope, cycle.receive, cycle.send)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("exception in the ASGI app", exc_info=exc)
            if not cycle.started and not cycle.disconnected and self.transport is not None:
                cycle.started = cycle.complete = True
                self.transport.write(simple_response(500, "Internal Server Error"))
                self.transport.close()
            elif not cycle.complete and self.transport is not None:
                self.transport.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if not cycle.started and not cycle.disconnected and self.transport is not None:
            cycle.started = cycle.complete = True
            self.transport.write(simple_response(500, "Internal Server Error"))
            self.transport.close()
        elif not cycle.complete and not cycle.held and self.transport is not None:
            self.transport.close()  # the app returned with its response unfinished

    def response_done(self, cycle: Cycle) -> None:
        """The response to ``cycle`` is written: log it, then close, or go on with the next
        request on this connection."""
        if self.log_access:
            scope = cycle.scope
            client, target = access_parts(scope)
            access.info('%s - "%s %s HTTP/%s" %d', client, scope["method"], target,
                        scope["http_version"], cycle.status)  # fmt: skip
        transport = self.transport
        if transport is None:
            return
        if not cycle.keep_alive or (cycle.more_body and cycle is self.parsing):
            transport.close()  # an unread request body makes the connection unusable
            return
        self.cycle = None
        if self.pipeline:
            self._run(self.pipeline.pop(0))
            if not self.pipeline:
                self.resume_reading()
            return
        self.resume_reading()
        self._arm(float(self.config.timeout_keep_alive))
        self.idle = True

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task of the app's, which the server waits for when it shuts down."""
        task = self.loop.create_task(coro)
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)
        return task

    def chunked_stream(self, scope: Any) -> ChunkedStream | None:
        """A :class:`ChunkedStream` for the response to ``scope``, or None (then use the ASGI
        ``send``): only over HTTP/1.1, for the connection's current request, once its response
        headers were sent with chunked transfer encoding and while it is open."""
        cycle = self.cycle
        if (
            cycle is None
            or cycle.scope is not scope
            or not cycle.started
            or not cycle.chunked
            or cycle.complete
            or cycle.disconnected
            or self.transport is None
            or self.transport.is_closing()
        ):
            return None
        self.stream = ChunkedStream(self, cycle)
        if self.parsing is None and not self.pipeline:
            # The request is read and a stream lives for hours: no parser meanwhile (about
            # 0.9 KiB with its callbacks); data_received makes one for the next request.
            self.parser = None
        return self.stream

    # ---- helpers ------------------------------------------------------------------------------------
    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.pipeline:
            self.reading_paused = False
            self.transport.resume_reading()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.idle = False
        self.timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if self.transport is not None and self.cycle is None:
            self.transport.close()

    def _refuse(self, status: int, text: str) -> None:
        """Answer a request that cannot be parsed or is too large, and close; what the parser
        still reports of it is ignored."""
        self.refused = True
        if self.transport is not None and not self.transport.is_closing():
            if self.cycle is None:
                self.transport.write(simple_response(status, text))
            self.transport.close()

    def _upgrade(self, rest: bytes) -> None:
        from hubbub.transports.wsconn import WSConnection

        assert self.transport is not None
        if self.cycle is not None:  # an upgrade pipelined behind a request: not supported
            self._refuse(400, "Upgrade behind a pending request")
            return
        if self.parser is None or self.parser.get_method() != b"GET":
            self._refuse(400, "WebSocket upgrade needs GET")
            return
        ws = WSConnection(self, self.url, self.headers)
        self.server_state.connections.discard(self)
        self._disarm()
        self.parser = None  # (it refers back to this object: let both go at once)
        self.transport.set_protocol(ws)
        ws.connection_made(self.transport)
        if rest:
            ws.data_received(rest)
