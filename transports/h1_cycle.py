"""One HTTP/1.1 request and its response on Hubbub's connection protocol (transports/h1.py):
the ASGI ``receive``/``send`` of an ``http`` scope (:class:`Cycle`), the direct chunk writes
of a streaming response (:class:`ChunkedStream`), and the bytes of status lines, chunks and
access-log fields."""

from __future__ import annotations

import asyncio
import http
import urllib.parse
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from hubbub.transports.flow import Flag

if TYPE_CHECKING:
    from hubbub.transports.h1 import HttpConnection


def http_chunk(body: bytes) -> bytes:
    """``body`` as one HTTP/1.1 chunk of a chunked response (RFC 9112 §7.1). Empty bodies must
    not be framed: an empty chunk ends the response."""
    return b"%x\r\n%b\r\n" % (len(body), body)


def status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


def simple_response(status: int, text: str) -> bytes:
    body = text.encode()
    return (
        b"%sContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (
            status_line(status),
            len(body),
            body,
        )
    )


ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
"""``scope["asgi"]``: one dict for every scope (read-only by convention)."""

_servers: dict[tuple[str, int], tuple[str, int]] = {}


def addresses(transport: asyncio.BaseTransport) -> tuple[Any, Any, str]:
    """(server, client, scheme) of a connection, as ASGI scopes carry them. The server's
    address is one tuple shared by the connections to it (a node has few)."""
    sock = transport.get_extra_info("sockname")
    peer = transport.get_extra_info("peername")
    server = (str(sock[0]), int(sock[1])) if isinstance(sock, tuple) else None
    if server is not None:
        shared = _servers.get(server)
        if shared is not None:
            server = shared
        elif len(_servers) < 64:
            _servers[server] = server
    client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
    tls = transport.get_extra_info("sslcontext") is not None
    return server, client, "https" if tls else "http"


def access_parts(scope: dict[str, Any]) -> tuple[str, str]:
    """(client address, request target) for an access-log line; the log handler redacts
    credentials in the query (hubbub.logs)."""
    target = urllib.parse.quote(scope["path"])
    if scope["query_string"]:
        target += "?" + scope["query_string"].decode("ascii", "replace")
    client = scope.get("client")
    return (f"{client[0]}:{client[1]}" if client else "-"), target


class ChunkedStream:
    """Direct writes into one chunked HTTP/1.1 response, bypassing the ASGI ``send`` coroutine.

    Obtained from :meth:`HttpConnection.chunked_stream` once the response headers went out
    through ASGI; the response still ends through ASGI (``more_body: False``). ``flow`` has
    ``write_paused``, True while the transport is over its high-water mark: callers check it
    before accepting more. ``on_lost`` is called once when the connection goes away, since
    nothing reads the ASGI ``receive`` of a stream that writes directly."""

    __slots__ = ("conn", "cycle", "flow", "on_lost")

    def __init__(self, conn: HttpConnection, cycle: Cycle) -> None:
        self.conn = conn
        self.cycle = cycle
        self.flow = conn
        self.on_lost: Any = None

    def write(self, chunks: bytes) -> bool:
        """Write already framed chunks (:func:`http_chunk`). Returns False, writing nothing,
        once the response is complete or the connection is closing or gone. Flow control is
        the caller's: this writes even while ``flow.write_paused``."""
        cycle = self.cycle
        transport = self.conn.transport
        if cycle.disconnected or cycle.complete or transport is None or transport.is_closing():
            return False
        transport.write(chunks)
        return True

    async def drain(self) -> None:
        """Wait until the transport is below its low-water mark (or the connection is gone)."""
        await self.conn.writable.wait()

    def abort(self) -> None:
        """Drop the connection now, unflushed data included (a client that stopped reading)."""
        self.cycle.disconnected = True
        if self.conn.transport is not None:
            self.conn.transport.abort()

    def lost(self) -> None:
        callback, self.on_lost = self.on_lost, None
        if callback is not None:
            callback()

    def hold(self) -> None:
        """The app is about to return and keeps writing this response (through :meth:`write`
        and the ``send`` it was given, with which it must end it): the connection is not
        closed when the ASGI call returns."""
        self.cycle.held = True

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task for the app's work on this response, which the server waits for when it
        shuts down (as it waits for the ASGI ones)."""
        return self.conn.spawn(coro)

    def detach(self) -> None:
        """The response ended: no more ``on_lost`` calls."""
        self.on_lost = None
        if self.conn.stream is self:
            self.conn.stream = None


class Cycle:
    """One request and its response: the ASGI ``receive`` and ``send`` of an HTTP scope."""

    __slots__ = ("body", "body_read", "chunked", "complete", "conn", "continue_100", "disconnected", "head",
                 "held", "keep_alive", "more_body", "scope", "started", "status", "wake")  # fmt: skip

    def __init__(self, conn: HttpConnection, scope: dict[str, Any], keep_alive: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.body: list[bytes] = []
        self.more_body = True
        self.body_read = False  # the last piece of the body went to the app
        self.wake = Flag(False)
        self.started = False
        self.complete = False
        self.disconnected = False
        self.chunked = False
        self.head = scope["method"] == "HEAD"
        self.keep_alive = keep_alive
        self.status = 0
        self.continue_100 = False
        self.held = False  # the app returned and finishes the response later (ChunkedStream.hold)

    async def receive(self) -> dict[str, Any]:
        """The request body in pieces, then (ASGI) block until the client goes away or the
        response is complete, and say ``http.disconnect``."""
        if self.continue_100 and not self.started and not self.disconnected:
            self.continue_100 = False
            transport = self.conn.transport
            if transport is not None and not transport.is_closing():
                transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not self.disconnected and not self.complete:
            if self.body or (not self.more_body and not self.body_read):
                body = b"".join(self.body)
                self.body.clear()
                self.body_read = not self.more_body
                self.conn.resume_reading()
                return {"type": "http.request", "body": body, "more_body": self.more_body}
            self.wake.clear()
            self.conn.resume_reading()
            await self.wake.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        transport = self.conn.transport
        if self.disconnected or transport is None:
            return  # ASGI: sends after a disconnect are no-ops
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("response already started")
            self.started = True
            self._write_head(message)
        elif kind == "http.response.body":
            if not self.started or self.complete:
                raise RuntimeError("http.response.body without a started, open response")
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if not self.conn.writable.is_set():
                await self.conn.writable.wait()
            if self.head or self.disconnected:
                pass
            elif self.chunked:
                if body and more:
                    transport.write(http_chunk(body))
                elif not more:
                    transport.write(http_chunk(body) + b"0\r\n\r\n" if body else b"0\r\n\r\n")
            elif body:
                transport.write(body)
            if not more:
                self.complete = True
                self.wake.set()
                self.conn.response_done(self)
        # other message types (trailers, pathsend, …) are not offered in the scope: ignored

    def _write_head(self, message: dict[str, Any]) -> None:
        status = int(message["status"])
        self.status = status
        lines = [status_line(status)]
        lines.extend(b"%s: %s\r\n" % pair for pair in self.conn.default_headers)
        length = None
        for name, value in message.get("headers", ()):
            low = name.lower()
            if low == b"content-length":
                length = value
            elif low == b"connection" and value.lower() == b"close":
                self.keep_alive = False
            elif low == b"transfer-encoding":
                continue  # the framing is the server's
            lines.append(b"%s: %s\r\n" % (name, value))
        no_body = self.head or status in (204, 304) or status < 200
        if length is None and not no_body:
            if self.scope["http_version"] == "1.1":
                self.chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # HTTP/1.0: the end of the body is the close
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        assert self.conn.transport is not None
        self.conn.transport.write(b"".join(lines))
