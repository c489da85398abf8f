"""WebSocket transport: ``GET /v1/ws`` (PROTOCOL.md §3).

One connection = one :class:`~hub.session.Session` and one task, the ASGI one: it reads and
handles client frames one at a time (so one publisher's publications keep their order). Frames to
the client are written by the fan-out itself when the socket is writable (:class:`_DirectWriter`);
only what has to wait (flow control, another server) is queued, and a writer task runs while the
queue holds frames (:class:`_Link`). Closing the session interrupts the reading task.

An idle connection costs memory, not CPU, and a node holds thousands: no task, Event or closure
per connection beyond the ASGI task (see bench/idle-memory.md).

Refusals complete the upgrade and then close with the code so browsers can see it (4501, 4510,
4003); a bad ``Origin`` is refused with HTTP 403 at the handshake (hardening case 13).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from hubbub.hub.auth import Identity
from hubbub.hub.envelope import BadString, Publication, frame_bytes, parse_frame
from hubbub.hub.errors import (
    CLOSE_BROKER,
    CLOSE_INTERNAL,
    CLOSE_ORIGIN,
    CLOSE_PROTOCOL,
    CLOSE_RATE,
    CLOSE_TOO_LARGE,
    CLOSE_UNAUTHORIZED,
    BadRequest,
    Disconnect,
    HubError,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from hubbub.hub.hub import Hub
from hubbub.hub.metrics import Metrics
from hubbub.hub.session import Item, Session
from hubbub.signaling.relay import relay_signal
from hubbub.signaling.turn import arm_ice_refresh, ice_servers
from hubbub.transports.edge import credential, origin_allowed
from hubbub.transports.flush import flusher
from hubbub.transports.ws_frames import FrameHandler
from hubbub.transports.wsconn import WSConnection, text_frame_header

log = logging.getLogger("hubbub.ws")

MAX_BAD_FRAMES = 10
MAX_RATE_STRIKES = 20


async def _close(ws: WebSocket, code: int, reason: str = "") -> None:
    with contextlib.suppress(Exception):
        await ws.close(code, reason[:120])


async def _authenticate(hub: Hub, ws: WebSocket) -> Identity | None:
    """Credentials from header/cookie/query, else the first ``auth`` frame within
    ``auth_timeout``. Returns None after closing the socket with 4501."""
    try:
        cred = credential(_handshake(ws))
        if cred is None and not hub.settings.anonymous:
            try:
                msg = await asyncio.wait_for(ws.receive(), hub.settings.auth_timeout)
            except TimeoutError:
                raise Unauthorized("no auth frame in time") from None
            if msg["type"] == "websocket.disconnect":
                return None
            text = msg.get("text")
            if text is None:
                raise Unauthorized()
            frame = parse_frame(text)
            if frame.get("type") != "auth" or not isinstance(frame.get("token"), str):
                raise Unauthorized()
            cred = frame["token"]
        return hub.auth.authenticate(cred)
    except (HubError, ValueError):
        hub.metrics.auth_failures += 1
        await _close(ws, CLOSE_UNAUTHORIZED, "unauthorized")
        return None


def _forget_request(ws: WebSocket) -> None:
    """Let go of the handshake's headers once the origin is checked and the client
    authenticated: nothing reads them afterwards, and they are about 1 KiB per connection
    (more with browser cookies) for its whole life. They were read through a throwaway
    ``HTTPConnection`` (:func:`_handshake`), so no parsed copy stays on ``ws`` either."""
    headers = ws.scope.get("headers")
    if isinstance(headers, list):
        headers.clear()


def _handshake(ws: WebSocket) -> HTTPConnection:
    """A view of the handshake request for the origin and credential checks, dropped after
    them (Starlette caches parsed headers, cookies and query on the object that parsed them)."""
    return HTTPConnection(ws.scope)


async def ws_endpoint(ws: WebSocket) -> None:
    hub: Hub = ws.app.state.hub
    settings = hub.settings
    if not origin_allowed(_handshake(ws), settings):
        await ws.close(CLOSE_ORIGIN)  # before accept: HTTP 403 at the handshake
        return
    await ws.accept()
    ident = await _authenticate(hub, ws)
    if ident is None:
        return
    _forget_request(ws)
    try:
        session = await hub.open_session(ident, "ws")
    except Disconnect as d:
        hub.metrics.disconnects[d.code] += 1
        await _send_json(ws, {"type": "disconnect", "code": d.code, "reason": d.reason,
                              "reconnect": d.reconnect})  # fmt: skip
        await _close(ws, d.code, d.reason)
        return
    except Unavailable:
        await _close(ws, CLOSE_BROKER, "broker unavailable")
        return
    try:
        await _run(hub, ws, session)
    finally:
        await hub.close_session(session)


async def _send_json(ws: WebSocket, obj: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):
        await ws.send({"type": "websocket.send", "text": frame_bytes(obj).decode()})


def _welcome(hub: Hub, session: Session) -> dict[str, Any]:
    s = hub.settings
    ident = session.identity
    welcome: dict[str, Any] = {
        "type": "welcome",
        "session": session.id,
        "user": ident.sub,
        "ping_interval": s.ping_interval,
        "ping_timeout": s.ping_timeout,
        "version": "1",
    }
    left = ident.expires_in()
    if left is not None:
        welcome["expires_in"] = round(left, 3)
    ice = ice_servers(s, ident.sub)
    if ice["ice_servers"]:
        welcome["ice_servers"] = ice["ice_servers"]
    return welcome


async def _run(hub: Hub, ws: WebSocket, session: Session) -> None:
    s = hub.settings
    link = _Link(ws, session, hub.metrics)
    task = asyncio.current_task()
    assert task is not None
    try:
        session.send(_welcome(hub, session))
        session.start_heartbeat(s.ping_interval, s.ping_timeout, client_pongs=True)
        handler = FrameHandler(hub, session, relay_signal)
        session.arm_expiry(handler.expiring)
        arm_ice_refresh(session, s)  # PROTOCOL.md §6: fresh TURN credentials before they expire
        link.reader = task  # closing the session now interrupts the reading
        await _reader(ws, session, handler)
    except asyncio.CancelledError:
        if not link.interrupted:
            raise
        task.uncancel()  # our own interruption: the session closed
    finally:
        link.reader = None
        await link.stop()
    closed = session.closed
    if closed is not None:  # counted in hubbub_disconnects_total by Hub.close_session
        if closed.code >= 4000:
            await _send_json(ws, {"type": "disconnect", "code": closed.code,
                                  "reason": closed.reason, "reconnect": closed.reconnect})  # fmt: skip
        await _close(ws, closed.code, closed.reason)
    else:
        await _close(ws, 1000)


class _Link:
    """One connection's outbound side and the hook that ends its reading.

    Installed as the session's ``direct`` writer (when the server is Hubbub's own uvicorn
    protocol) and ``waker``. A queued frame starts the writer task, which ends as soon as the
    queue is empty again; closing the session cancels the task that reads (:attr:`reader`, the
    ASGI task while it is in :func:`_reader`), unless the close comes from that task itself."""

    __slots__ = ("direct", "frames", "interrupted", "proto", "reader", "sent", "session",
                 "writer", "ws")  # fmt: skip

    def __init__(self, ws: WebSocket, session: Session, metrics: Metrics | None) -> None:
        self.ws = ws
        self.session = session
        self.frames, self.sent = (
            (metrics.frames_sent, metrics.bytes_sent) if metrics else (Counter(), Counter())
        )
        proto = self.proto = _protocol(ws)
        # Hubbub's own connection never negotiates extensions, so frames built once fit all.
        self.direct = _DirectWriter(proto, self.frames, self.sent) if proto is not None else None
        self.writer: asyncio.Task[None] | None = None
        self.reader: asyncio.Task[Any] | None = None
        self.interrupted = False
        session.direct = self.direct
        session.waker = self.wake

    def wake(self) -> None:
        """``Session.waker``: a frame was queued, or the session closed."""
        if self.session.closed is not None:
            reader = self.reader
            if reader is not None and reader is not asyncio.current_task():
                self.reader = None
                self.interrupted = True
                reader.cancel()
        elif self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self._write())

    async def stop(self) -> None:
        """End the writer, detach from the session, write what the direct path accepted."""
        session = self.session
        session.waker = None
        session.direct = None
        writer = self.writer
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        if self.direct is not None:
            self.direct.flush()

    async def _write(self) -> None:
        """Write what is queued until the queue is empty, then end (see :func:`_drain`)."""
        try:
            await _drain(self.ws, self.session, self.proto, self.direct, self.frames, self.sent)
        except Exception:
            log.exception("writer failed (session %s)", self.session.id)
            self.session.close(CLOSE_INTERNAL, "internal error")
        finally:
            self.writer = None


class _FrameCache:
    """The wire frame of the item being fanned out, built once for every subscriber (the fan-out
    offers one publication to all its sessions in a row, so one entry is enough)."""

    __slots__ = ("frame", "item", "size")

    def __init__(self) -> None:
        self.item: Item | None = None
        self.frame = b""
        self.size = 0

    def get(self, item: Item) -> bytes:
        if item is not self.item:
            payload = item.frame if isinstance(item, Publication) else item.encode()
            self.item, self.size = item, len(payload)
            self.frame = text_frame_header(len(payload)) + payload
        return self.frame


_frames = _FrameCache()


class _DirectWriter:
    """``Session.direct`` for a WebSocket: take a frame without waking the writer task.

    Accepted frames are collected per connection and written by one ``flush_all`` callback
    scheduled on the loop (``call_soon``): every publication fanned out in the same loop
    iteration leaves with one ``transport.write`` (one syscall) per subscriber, instead of
    one per frame. Under light load that is one frame per write, as soon as the fan-out
    returns; under heavy load frames coalesce. A frame is refused (the session queues it
    for the writer task) while the writer holds frames or the socket is not writable
    (asyncio flow control), so the order holds and a slow consumer still fills its queue."""

    __slots__ = ("busy", "bytes_sent", "frames_sent", "pending", "proto", "size", "writable")

    MAX_PENDING = 64  # frames per connection before writing without waiting for the flush

    def __init__(self, proto: WSConnection, frames: Counter[str], sent: Counter[str]):
        self.proto = proto
        self.writable = proto.writable  # set unless the transport is over its high-water mark
        self.busy = False  # the writer holds frames taken from the queue: keep the order
        self.pending: list[bytes] = []
        self.size = 0
        self.frames_sent = frames
        self.bytes_sent = sent

    def __call__(self, item: Item) -> bool:
        # Per subscriber and frame: keep this short. Only flow control is checked here; the
        # connection state (open, no close sent, no extension) is checked once per flush by
        # write_now, which drops what a connection that went away meanwhile cannot take.
        if self.busy or not self.writable.is_set():
            return False
        cache = _frames
        if item is not cache.item:
            cache.get(item)
        pending = self.pending
        pending.append(cache.frame)
        self.size += cache.size
        if len(pending) == 1:
            flusher.add(self)
        elif len(pending) >= self.MAX_PENDING:
            self.flush()
        return True

    def flush(self) -> None:
        """Write what was accepted (dropped if the connection went away meanwhile)."""
        pending = self.pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        self.frames_sent["ws"] += len(pending)
        self.bytes_sent["ws"] += self.size
        pending.clear()
        self.size = 0
        self.proto.write_now(data)


def _protocol(ws: WebSocket) -> WSConnection | None:
    proto = (ws.scope.get("extensions") or {}).get("hubbub.ws")
    return proto if isinstance(proto, WSConnection) else None


WRITE_CHUNK = 64 * 1024


async def _write_framed(proto: Any, items: list[Any]) -> tuple[int, int]:
    """Write queued items as pre-built frames, about WRITE_CHUNK bytes per ``transport.write``,
    waiting for the socket to drain before each piece: asyncio's flow control then keeps a
    client that stops reading from absorbing more than one piece beyond its queue limit.
    Returns (items written, bytes written); fewer items when the protocol refused."""
    done = size = pending = 0
    chunks: list[bytes] = []
    last = len(items) - 1
    for i, item in enumerate(items):
        chunks.append(_frames.get(item))
        pending += _frames.size
        if pending >= WRITE_CHUNK or i == last:
            await proto.writable.wait()
            if not proto.write_now(b"".join(chunks)):
                return done, size
            done, size, pending = i + 1, size + pending, 0
            chunks = []
    return done, size


async def _drain(
    ws: WebSocket,
    session: Session,
    proto: WSConnection | None,
    direct: _DirectWriter | None,
    frames: Counter[str],
    sent: Counter[str],
) -> None:
    """Write every queued frame, the same bytes for every subscriber, until the queue is empty.

    On Hubbub's own uvicorn protocol, the fan-out writes most frames without this
    (:class:`_DirectWriter`); what got queued meanwhile is joined and written in pieces of
    about 64 KiB, each once the socket is writable (:func:`_write_framed`). Elsewhere (another
    server), frames go one by one through the ASGI ``send``. A lost connection closes the
    session with 1006."""
    send = ws.send
    try:
        while items := session.take():
            size = 0
            if direct is not None:
                direct.flush()  # older than anything in the queue
                direct.busy = True
            try:
                done = 0
                if proto is not None:
                    done, size = await _write_framed(proto, items)
                for item in items[done:]:  # not on our protocol, or it refused: ASGI send
                    if isinstance(item, Publication):
                        text = item.text
                        size += len(item.frame)
                    else:
                        text = item
                        size += len(item)  # control frames: ASCII JSON, chars == bytes
                    await send({"type": "websocket.send", "text": text})
            finally:
                if direct is not None:
                    direct.busy = False
            frames["ws"] += len(items)
            sent["ws"] += size
    except (OSError, RuntimeError, WebSocketDisconnect):
        session.close(1006, "connection lost")


async def _reader(ws: WebSocket, session: Session, handler: FrameHandler) -> None:
    """Read and handle client frames until the client goes or the session closes."""
    limit = session_frame_limit(handler.hub)
    while session.closed is None:
        try:
            msg = await ws.receive()
        except (OSError, RuntimeError, WebSocketDisconnect):
            session.close(1006, "connection lost")
            return
        if msg["type"] == "websocket.disconnect":
            session.close(int(msg.get("code") or 1005), "client closed")
            return
        text = msg.get("text")
        if text is None:
            session.close(CLOSE_PROTOCOL, "binary frames are not part of the protocol")
            return
        if len(text) > limit and len(text.encode()) > limit:
            session.close(CLOSE_TOO_LARGE, "frame too large")
            return
        session.touch()
        try:
            frame = parse_frame(text)
        except BadString as exc:
            session.send(exc.frame(None))
            session.bad_frames += 1
            if session.bad_frames >= MAX_BAD_FRAMES:
                session.close(CLOSE_PROTOCOL, "too many bad frames")
            continue
        except BadRequest as exc:
            session.close(CLOSE_PROTOCOL, exc.message)
            return
        fid = frame.get("id")
        try:
            await handler.handle(frame)
        except RateLimited as exc:
            handler.hub.metrics.rate_limited += 1
            session.send(exc.frame(fid if isinstance(fid, int) else None))
            session.rate_strikes += 1
            if session.rate_strikes >= MAX_RATE_STRIKES:
                session.close(CLOSE_RATE, "rate limited too long")
        except HubError as exc:
            session.send(
                exc.frame(fid if isinstance(fid, int) and not isinstance(fid, bool) else None)
            )
            if isinstance(exc, BadRequest):
                session.bad_frames += 1
                if session.bad_frames >= MAX_BAD_FRAMES:
                    session.close(CLOSE_PROTOCOL, "too many bad frames")
        except Exception:
            log.exception("frame handler failed (session %s)", session.id)
            session.close(CLOSE_INTERNAL, "internal error")


def session_frame_limit(hub: Hub) -> int:
    """Largest accepted frame: ``HUB_MAX_MESSAGE_BYTES`` + 16 KiB (PROTOCOL.md §3)."""
    return hub.settings.max_message_bytes + 16 * 1024


PATH = "/v1/ws"


def asgi_endpoint(scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
    """``/v1/ws`` as a plain ASGI app (returns the coroutine to await: no frame of its own):
    :func:`ws_endpoint` without Starlette's router and middleware layers, which hold nothing
    for a WebSocket (the CORS and error middleware pass WebSockets through, the endpoint handles
    its own errors) but cost a coroutine frame each for the connection's life.
    ``scope["app"]`` must be the Starlette app."""
    return ws_endpoint(WebSocket(scope, receive=receive, send=send))


def routes(hub: Hub) -> list[BaseRoute]:
    return [WebSocketRoute(PATH, ws_endpoint)]
