"""Hubbub's WebSocket server connection: RFC 6455 on websockets' sans-I/O ``ServerProtocol``,
driving the ASGI app's ``websocket`` scope.

:class:`hubbub.transports.h1.HttpConnection` hands the connection over when a request asks
for ``Upgrade: websocket``. What it adds to a plain server:

* a direct write path for the fan-out: ``scope["extensions"]["hubbub.ws"]`` is the
  connection; :meth:`WSConnection.write_now` writes pre-built frames to the socket at once,
  bypassing the ASGI ``send`` coroutine, while :attr:`writable` (asyncio flow control) is set;
* no per-message compression (CPU per subscriber, and a decompression-bomb risk) and no
  protocol-level pings: Hubbub's own heartbeat (``ping`` frames, close 4002) finds dead peers;
* a refused handshake (the app closes before accepting) is answered with HTTP 403;
* the app may return holding an accepted connection (:meth:`WSConnection.hold`): it goes on
  with a :attr:`~WSConnection.listener` and :meth:`~WSConnection.receive_nowait`, tasks made
  by :meth:`~WSConnection.spawn`, and the ``send`` it was given, with no task or coroutine
  per idle connection;
* little memory per idle connection: slots, a list inbox, the handshake request dropped once
  answered.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from hubbub.transports.flow import Flag
from hubbub.transports.h1_cycle import ASGI_VERSION, access_parts

if TYPE_CHECKING:
    from hubbub.transports.h1 import HttpConnection

Data = bytes | bytearray | memoryview

log = logging.getLogger("hubbub.server")
access = logging.getLogger("hubbub.access")

CLOSE_TIMEOUT = 4.0  # after our close frame, how long the peer has to close TCP
INBOX_HIGH = 32  # client messages waiting for the app before reading pauses


def text_frame_header(length: int) -> bytes:
    """Header of one unmasked, final text frame of ``length`` payload bytes (RFC 6455 §5.2:
    servers never mask). Without extensions it is the same for every subscriber."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


class _ServerProtocol(ServerProtocol):
    """websockets' sans-I/O server, except for a Close frame that arrives between the fragments
    of a message: RFC 6455 §5.4/§5.5 let control frames interleave, so the unfinished message is
    dropped and the close is answered normally (websockets answers 1002 "incomplete fragmented
    message"; the Autobahn suite's case 7.1.5 expects a clean close)."""

    def recv_frame(self, frame: Frame) -> None:
        # ``current_size`` (websockets 16+) is the size of the message being assembled, None
        # between messages. Where it is missing, such a close is answered 1002 as websockets
        # does by itself: stricter, not wrong.
        if frame.opcode is Opcode.CLOSE and getattr(self, "current_size", None) is not None:
            self.current_size = None
        super().recv_frame(frame)


class WSConnection(asyncio.Protocol):
    """One upgraded connection: the handshake, frames in and out, the ASGI ``websocket``
    scope. Messages from the client wait in a list until the app receives them (reading
    pauses past ``INBOX_HIGH``)."""

    __slots__ = ("accepted", "app", "close_timer", "closed", "conn", "disconnected", "fragments",
                 "held", "http", "inbox", "listener", "log_access", "loop", "request", "scope",
                 "server_state", "started", "transport", "wake", "writable")  # fmt: skip

    def __init__(self, http: HttpConnection, url: bytes, headers: list[tuple[bytes, bytes]]):
        config = http.config
        self.http: HttpConnection | None = http
        self.app = http.app
        self.server_state = http.server_state
        self.loop = http.loop
        self.log_access = http.log_access
        self.conn = _ServerProtocol(max_size=config.ws_max_size)
        self.transport: asyncio.Transport | None = None
        self.request: Request | None = None
        self.inbox: list[dict[str, Any]] = []
        self.wake = Flag(False)
        # Called (no arguments) whenever a message or the disconnect is added to the inbox: an
        # app that takes messages with receive_nowait() instead of waiting in receive.
        self.listener: Callable[[], None] | None = None
        self.writable = Flag(True)
        self.fragments: list[Data] | None = None
        self.accepted = False
        self.closed = False  # a close frame (or a refusal) went out
        self.disconnected = False  # the app was told the connection is over
        self.started = False
        self.held = False  # the app returned and keeps the connection open (hold)
        self.close_timer: asyncio.TimerHandle | None = None
        self.scope = self._scope(http, url, headers)

    @staticmethod
    def _scope(http: HttpConnection, url: bytes, headers: list[tuple[bytes, bytes]]) -> Any:
        target = urllib.parse.urlsplit(url.decode("ascii", "replace"))
        path = urllib.parse.unquote(target.path)
        root = http.root_path
        return {
            "type": "websocket",
            "asgi": ASGI_VERSION,
            "http_version": "1.1",
            "scheme": "wss" if http.scheme == "https" else "ws",
            "server": http.server,
            "client": http.client,
            "root_path": root,
            "path": root + path,
            "raw_path": root.encode("ascii") + target.path.encode("ascii", "replace"),
            "query_string": target.query.encode("ascii", "replace"),
            "headers": headers,
            "subprotocols": [
                p.strip()
                for name, value in headers
                if name == b"sec-websocket-protocol"
                for p in value.decode("latin-1").split(",")
                if p.strip()
            ],
            "state": http.app_state.copy(),
            "extensions": {"hubbub.ws": None},
        }

    # ---- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert self.http is not None
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server_state.connections.add(self)
        http, self.http = self.http, None
        if http.write_paused:
            self.writable.clear()
        headers = Headers()
        for name, value in self.scope["headers"]:
            headers[name.decode("latin-1")] = value.decode("latin-1")
        self.request = Request(self.scope["raw_path"].decode("ascii", "replace"), headers)
        self.scope["extensions"]["hubbub.ws"] = self
        # The sans-I/O state machine reads a request before any frame; the request itself was
        # parsed already (self.request), so it gets a minimal one, whatever the client's
        # header sizes.
        self.conn.receive_data(b"GET / HTTP/1.1\r\n\r\n")
        self.conn.events_received()
        task = self.loop.create_task(self._run())
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._handle_events()
        self._flush()

    def eof_received(self) -> bool | None:
        self.conn.receive_eof()
        self._handle_events()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        self.transport = None
        self.writable.set()
        code = self.conn.close_rcvd.code if self.conn.close_rcvd is not None else 1006
        self._disconnect(code)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def shutdown(self) -> None:
        """The server stops: close with 1012 (service restart) if open, else drop."""
        if self.accepted and not self.closed and self.conn.state is State.OPEN:
            self.closed = True
            self.conn.send_close(1012, "server shutting down")
            self._flush()
            self._disconnect(1012)
        elif not self.accepted and self.transport is not None:
            self.transport.close()

    # ---- the direct path --------------------------------------------------------------------
    def can_write_now(self) -> bool:
        """True when pre-built frames may go straight to the socket: the handshake is done, no
        close was sent or received, and the transport is below its high-water mark."""
        transport = self.transport
        return (
            self.writable.is_set()
            and self.accepted
            and not self.closed
            and transport is not None
            and self.conn.state is State.OPEN
            and not transport.is_closing()
        )

    def write_now(self, frames: bytes) -> bool:
        """Write already framed server frames (:func:`text_frame_header`) at once. Returns
        False, writing nothing, when :meth:`can_write_now` is False."""
        if not self.can_write_now():
            return False
        assert self.transport is not None
        self.transport.write(frames)
        return True

    # ---- frames from the client ---------------------------------------------------------------
    def _handle_events(self) -> None:
        for event in self.conn.events_received():
            if not isinstance(event, Frame):
                continue
            op = event.opcode
            if op is Opcode.TEXT or op is Opcode.BINARY:
                if event.fin:
                    self._message(op, event.data)
                else:
                    self.fragments = [bytes([op.value]), event.data]
            elif op is Opcode.CONT and self.fragments is not None:
                self.fragments.append(event.data)
                if event.fin:
                    parts, self.fragments = self.fragments, None
                    kind = Opcode.TEXT if bytes(parts[0]) == b"\x01" else Opcode.BINARY
                    self._message(kind, b"".join(parts[1:]))
            elif op is Opcode.CLOSE:
                self.fragments = None
                rcvd = self.conn.close_rcvd
                self._disconnect(rcvd.code if rcvd is not None else 1005)
        if self.conn.parser_exc is not None and not self.disconnected:
            sent = self.conn.close_sent
            self._disconnect(sent.code if sent is not None else 1002)

    def _message(self, op: Opcode, data: Data) -> None:
        if self.disconnected:
            return
        if op is Opcode.TEXT:
            try:
                text = str(data, "utf-8")
            except UnicodeDecodeError as exc:
                self.conn.fail(1007, f"invalid UTF-8 at position {exc.start}")
                self.closed = True
                self._disconnect(1007)
                return
            self.inbox.append({"type": "websocket.receive", "text": text})
        else:
            self.inbox.append({"type": "websocket.receive", "bytes": bytes(data)})
        self.wake.set()
        if self.listener is not None:
            self.listener()
        if len(self.inbox) > INBOX_HIGH and self.transport is not None:
            self.transport.pause_reading()

    def _disconnect(self, code: int) -> None:
        if not self.disconnected:
            self.disconnected = True
            self.inbox.append({"type": "websocket.disconnect", "code": code, "reason": ""})
            self.wake.set()
            if self.listener is not None:
                self.listener()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self.conn.data_to_send():
            if data:
                transport.write(data)
            else:  # end of the stream: RFC 6455 §7.1.1, the server closes TCP first
                transport.close()
                return
        if self.conn.close_expected() and self.close_timer is None:
            self.close_timer = self.loop.call_later(CLOSE_TIMEOUT, self._abort)

    def _abort(self) -> None:
        self.close_timer = None
        if self.transport is not None:
            self.transport.abort()

    # ---- ASGI ---------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await self.app(self.scope, self._receive, self._send)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("exception in the ASGI app", exc_info=exc)
            self._end(error=True)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._end(error=False)

    def _end(self, error: bool) -> None:
        """The app returned: finish what it left open (unless it holds the connection)."""
        if self.transport is None or (self.held and not error):
            return
        if not self.accepted and not self.closed:
            self._refuse(500 if error else 403)
        elif self.accepted and not self.closed and self.conn.state is State.OPEN:
            self.closed = True
            self.conn.send_close(1011 if error else 1000)
            self._flush()

    def hold(self) -> None:
        """The app is about to return and keeps the connection open: it goes on through
        :meth:`receive_nowait` with a :attr:`listener`, and the ``send`` it was given (which
        it must use to close). No task or coroutine of the server's lives meanwhile."""
        if not self.accepted:
            raise RuntimeError("hold before websocket.accept")
        self.held = True

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task for this connection's app, which the server waits for when it shuts down
        (as it waits for the ASGI ones)."""
        task = self.loop.create_task(coro)
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)
        return task

    async def _receive(self) -> dict[str, Any]:
        if not self.started:
            self.started = True
            return {"type": "websocket.connect"}
        while not self.inbox:
            self.wake.clear()
            await self.wake.wait()
        message = self.receive_nowait()
        assert message is not None
        return message

    def receive_nowait(self) -> dict[str, Any] | None:
        """The next message from the client as the ASGI ``receive`` gives it once the app has
        accepted (``websocket.receive``, then ``websocket.disconnect`` for good), or None when
        none is waiting. With :attr:`listener` set, an app handles messages as they arrive,
        with no coroutine waiting in ``receive`` meanwhile."""
        inbox = self.inbox
        if not inbox:
            return None
        message = inbox.pop(0)
        if len(inbox) == INBOX_HIGH // 2 and self.transport is not None:
            self.transport.resume_reading()
        if message["type"] == "websocket.disconnect":
            inbox.append(message)  # every later receive says the same
        return message

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            self._accept(message)
        elif kind == "websocket.close":
            if not self.accepted:
                if not self.closed:
                    self._refuse(403)
                return
            if not self.closed and self.conn.state is State.OPEN:
                self.closed = True
                self.conn.send_close(int(message.get("code") or 1000), message.get("reason") or "")
                self._flush()
        elif kind == "websocket.send":
            if not self.accepted:
                raise RuntimeError("websocket.send before websocket.accept")
            if self.closed or self.transport is None or self.conn.state is not State.OPEN:
                raise ConnectionResetError("the WebSocket is closed")
            text = message.get("text")
            if text is not None:
                self.conn.send_text(text.encode())
            else:
                self.conn.send_binary(message.get("bytes") or b"")
            self._flush()
            if not self.writable.is_set():
                await self.writable.wait()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _accept(self, message: dict[str, Any]) -> None:
        if self.accepted or self.closed or self.request is None:
            raise RuntimeError("websocket.accept twice or after close")
        response = self.conn.accept(self.request)
        self.request = None
        if "Server" in response.headers:
            del response.headers["Server"]
        if response.status_code != 101:  # not a valid WebSocket handshake
            self.closed = True
            self.conn.send_response(response)
            self._flush()
            if self.transport is not None:
                self.transport.close()
            self._disconnect(1006)
            return
        sub = message.get("subprotocol")
        if sub:
            response.headers["Sec-WebSocket-Protocol"] = sub
        for name, value in message.get("headers") or ():
            response.headers[name.decode("latin-1")] = value.decode("latin-1")
        self.conn.send_response(response)
        self.accepted = True
        self._flush()
        if self.log_access:
            self._log("[accepted]")

    def _refuse(self, status: int) -> None:
        """Answer the handshake with an HTTP error and close (the app closed before accept)."""
        self.closed = True
        self.request = None
        text = "Forbidden\n" if status == 403 else "Internal Server Error\n"
        self.conn.send_response(self.conn.reject(status, text))
        self._flush()
        if self.transport is not None:
            self.transport.close()
        self._disconnect(1006)
        if self.log_access:
            self._log(f"{status}")

    def _log(self, outcome: str) -> None:
        client, target = access_parts(self.scope)
        access.info('%s - "WebSocket %s" %s', client, target, outcome)
