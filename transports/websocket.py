"""WebSocket transport: ``GET /v1/ws`` (PROTOCOL.md §3).

One connection = one :class:`~hub.session.Session`. Client frames are handled one at a time
(so one publisher's publications keep their order). Frames to the client are written by the
fan-out itself when the socket is writable (:class:`_Writer`, the shared
:class:`~hubbub.transports.direct.DirectWriter`); only what has to wait (flow control, another
server) is queued, and a writer task runs while the queue holds frames (:class:`_Link`).

An idle connection costs memory, not CPU, and a node holds thousands. On Hubbub's own protocol
(:class:`~hubbub.transports.wsconn.WSConnection`) the endpoint starts the session and returns,
holding the connection: a task runs only while client frames are being handled, while queued
frames are written, and to end the connection once the session closes; an idle connection has
no task, coroutine, Event or closure (see bench/idle-memory.md). On another ASGI server the
ASGI task reads and handles the frames, and closing the session interrupts it.

Refusals complete the upgrade and then close with the code so browsers can see it (4501, 4510,
4003); a bad ``Origin`` is refused with HTTP 403 at the handshake (hardening case 13).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from hubbub.hub.auth import Identity
from hubbub.hub.envelope import BadString, frame_bytes, parse_frame
from hubbub.hub.errors import (
    CLOSE_BROKER,
    CLOSE_INTERNAL,
    CLOSE_ORIGIN,
    CLOSE_PROTOCOL,
    CLOSE_TOO_LARGE,
    CLOSE_UNAUTHORIZED,
    BadRequest,
    Disconnect,
    Forbidden,
    HubError,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from hubbub.hub.hub import Hub
from hubbub.hub.metrics import Metrics
from hubbub.hub.session import Item, Session
from hubbub.signaling.relay import relay_signal
from hubbub.signaling.turn import arm_ice_refresh, ice_servers, may_get_ice
from hubbub.transports.direct import DirectWriter
from hubbub.transports.edge import admit
from hubbub.transports.ws_frames import FrameHandler
from hubbub.transports.wsconn import WSConnection, text_frame_header

log = logging.getLogger("hubbub.ws")

MAX_BAD_FRAMES = 10
FAREWELL_GRACE = 3.0  # after the session closed, time for the client to take its last frame


async def _close(ws: WebSocket, code: int, reason: str = "") -> None:
    with contextlib.suppress(Exception):
        await ws.close(code, reason[:120])


async def _auth_frame(hub: Hub, ws: WebSocket) -> str:
    """The token of the client's first frame, an ``auth`` frame within ``auth_timeout``
    (:func:`~hubbub.transports.edge.admit`'s ``late``). Raises Unauthorized for anything else,
    Disconnect when the client goes away meanwhile."""
    try:
        msg = await asyncio.wait_for(ws.receive(), hub.settings.auth_timeout)
    except TimeoutError:
        raise Unauthorized("no auth frame in time", reason="no_auth_frame") from None
    if msg["type"] == "websocket.disconnect":
        raise Disconnect(int(msg.get("code") or 1005), "client closed")
    text = msg.get("text")
    if text is None:
        raise Unauthorized(reason="not_an_auth_frame")
    try:
        frame = parse_frame(text)
    except HubError:
        raise Unauthorized(reason="not_an_auth_frame") from None
    if frame.get("type") != "auth" or not isinstance(frame.get("token"), str):
        raise Unauthorized(reason="not_an_auth_frame")
    token: str = frame["token"]
    return token


class _Turn:
    """A handshake's place at the hub's handshake gate (``HUB_HANDSHAKE_CONCURRENCY``): held
    while the node works on it (token check, upgrade, session), given back while the client
    is awaited (its ``auth`` frame), so a slow client holds no place."""

    __slots__ = ("gate", "held")

    def __init__(self, gate: asyncio.Semaphore) -> None:
        self.gate = gate
        self.held = False

    async def take(self) -> None:
        await self.gate.acquire()
        self.held = True

    def give(self) -> None:
        if self.held:
            self.held = False
            self.gate.release()


async def _admit(hub: Hub, ws: WebSocket, turn: _Turn) -> Identity | None:
    """The client's identity (:func:`~hubbub.transports.edge.admit`): credentials from
    header/cookie/query, else the first ``auth`` frame. Returns None after refusing: a bad
    ``Origin`` before the upgrade (HTTP 403), anything else after it with close 4501."""

    async def late() -> str:
        turn.give()
        try:
            return await _auth_frame(hub, ws)
        finally:
            await turn.take()

    try:
        return await admit(
            hub,
            _handshake(ws),
            accepted=ws.accept,
            late=late,
            transport="ws",
        )
    except Forbidden:  # the origin: before accept, so HTTP 403 at the handshake
        await ws.close(CLOSE_ORIGIN)
    except Disconnect:
        pass  # the client went away before authenticating
    except (HubError, ValueError):
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
    session = await _open(hub, ws)
    if session is None:
        return
    proto = _protocol(ws)
    if proto is not None:
        await _hand_over(hub, ws, proto, session)
        return
    try:
        await _run(hub, ws, session)
    finally:
        await hub.close_session(session)


async def _open(hub: Hub, ws: WebSocket) -> Session | None:
    """Admit the client and open its session, at most ``HUB_HANDSHAKE_CONCURRENCY`` at once
    (a reconnect storm's handshakes take turns, so the node's loop keeps serving everything
    else between them). None after a refusal (already answered)."""
    turn = _Turn(hub.handshakes)
    await turn.take()
    try:
        ident = await _admit(hub, ws, turn)
        if ident is None:
            return None
        _forget_request(ws)
        try:
            return await hub.open_session(ident, "ws")
        except Disconnect as d:
            hub.metrics.disconnects[d.code] += 1
            await _send_json(ws, {"type": "disconnect", "code": d.code, "reason": d.reason,
                                  "reconnect": d.reconnect})  # fmt: skip
            await _close(ws, d.code, d.reason)
        except Unavailable:
            await _close(ws, CLOSE_BROKER, "broker unavailable")
        return None
    finally:
        turn.give()


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
    if may_get_ice(ident):  # TURN credentials go to signalers only
        ice = ice_servers(s, ident.sub)
        if ice["ice_servers"]:
            welcome["ice_servers"] = ice["ice_servers"]
    return welcome


def _start(hub: Hub, session: Session) -> FrameHandler:
    """The session's first steps: ``welcome``, heartbeat, token expiry, TURN refresh."""
    s = hub.settings
    session.send(_welcome(hub, session))
    session.start_heartbeat(s.ping_interval, s.ping_timeout, client_pongs=True)
    handler = FrameHandler(hub, session, relay_signal)
    session.arm_expiry(handler.expiring)
    arm_ice_refresh(session, s)  # PROTOCOL.md §6: fresh TURN credentials before they expire
    return handler


async def _hand_over(hub: Hub, ws: WebSocket, proto: WSConnection, session: Session) -> None:
    """On Hubbub's protocol: start the session and return, leaving the connection open
    (:meth:`WSConnection.hold`). From then on a task runs only while something happens: client
    frames being handled (:meth:`_Link.heard`), queued frames being written, and the ending
    (:meth:`_Link.finish`) once the session closes. An idle connection has no task and no
    coroutine at all."""
    link = _Link(hub, ws, session)
    try:
        handler = _start(hub, session)
    except BaseException:
        await link.stop()
        await hub.close_session(session)
        raise
    proto.hold()
    link.listen(handler)


async def _run(hub: Hub, ws: WebSocket, session: Session) -> None:
    """The session on a plain ASGI server: this task reads and handles client frames until
    the session closes."""
    link = _Link(hub, ws, session)
    task = asyncio.current_task()
    assert task is not None
    try:
        handler = _start(hub, session)
        link.reader = task  # closing the session now interrupts the reading
        await _reader(ws, session, handler)
    except asyncio.CancelledError:
        if not link.interrupted:
            raise
        task.uncancel()  # our own interruption: the session closed
    finally:
        link.reader = None
        await link.stop()
    await _goodbye(ws, session)


async def _goodbye(ws: WebSocket, session: Session) -> None:
    """Tell the client why its session ended (a ``disconnect`` frame for codes from 4000),
    then close with the session's code (1000 when it was not closed). A client that does not
    take the ``disconnect`` frame within :data:`FAREWELL_GRACE` (it stopped reading: a slow
    consumer) is closed without waiting longer; the close itself is bounded by the
    connection's close timeout."""
    closed = session.closed
    if closed is not None:  # counted in hubbub_disconnects_total by Hub.close_session
        if closed.code >= 4000:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FAREWELL_GRACE):
                    await _send_json(ws, {"type": "disconnect", "code": closed.code,
                                          "reason": closed.reason,
                                          "reconnect": closed.reconnect})  # fmt: skip
        await _close(ws, closed.code, closed.reason)
    else:
        await _close(ws, 1000)


class _Link:
    """One connection's outbound side, the handling of its client frames, and its ending.

    Its :class:`_Writer` is installed as the session's ``direct`` writer (when the server is
    Hubbub's own uvicorn protocol) and :meth:`wake` as its ``waker``. A queued frame starts the
    writer task, which ends as soon as the queue is empty again.

    On Hubbub's protocol (:meth:`listen`) client frames are handled by a task started when one
    arrives (:meth:`heard`, the connection's ``listener``), which ends once none is waiting;
    closing the session cancels a frame being handled (unless the close comes from that task
    itself) and starts :meth:`finish`. Elsewhere the ASGI task reads (:attr:`reader`, in
    :func:`_reader`) and closing the session cancels it."""

    __slots__ = ("ending", "handler", "hub", "interrupted", "out", "proto", "reader", "session",
                 "worker", "writer")  # fmt: skip

    def __init__(self, hub: Hub, ws: WebSocket, session: Session) -> None:
        self.session = session
        self.hub = hub
        proto = self.proto = _protocol(ws)
        self.out = _Writer(ws, proto, hub.metrics)
        self.writer: asyncio.Task[None] | None = None
        self.reader: asyncio.Task[Any] | None = None
        self.worker: asyncio.Task[None] | None = None
        self.ending: asyncio.Task[None] | None = None
        self.handler: FrameHandler | None = None
        self.interrupted = False
        if proto is not None:
            session.direct = self.out
        session.waker = self.wake

    def wake(self) -> None:
        """``Session.waker``: a frame was queued, or the session closed."""
        if self.session.closed is not None:
            current = asyncio.current_task()
            reader = self.reader
            if reader is not None and reader is not current:
                self.reader = None
                self.interrupted = True
                reader.cancel()
            worker = self.worker
            if worker is not None and worker is not current:
                self.worker = None
                worker.cancel()
            if self.handler is not None and self.ending is None and self.proto is not None:
                self.ending = self.proto.spawn(self.finish())
        elif self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self._write())

    def listen(self, handler: FrameHandler) -> None:
        """Handle client frames as they arrive (Hubbub's protocol), and :meth:`finish` once the
        session closes."""
        proto = self.proto
        assert proto is not None
        self.handler = handler
        proto.listener = self.heard
        if self.session.closed is None:
            self.heard()  # frames that arrived meanwhile
        else:
            self.wake()

    def heard(self) -> None:
        """The connection's ``listener``: a client message (or its going away) is waiting."""
        handler = self.handler
        if self.worker is None and self.session.closed is None and handler is not None:
            assert self.proto is not None
            self.worker = self.proto.spawn(self._work(handler))

    async def _work(self, handler: FrameHandler) -> None:
        """Handle what the client sent, one message at a time, until none is waiting."""
        proto = self.proto
        assert proto is not None
        session = self.session
        limit = session_frame_limit(handler.hub)
        try:
            while session.closed is None:
                msg = proto.receive_nowait()
                if msg is None or not await _handle(msg, session, handler, limit):
                    break
        except Exception:
            log.exception("frame handling failed (session %s)", session.id)
            session.close(CLOSE_INTERNAL, "internal error")
        finally:
            if self.worker is asyncio.current_task():
                self.worker = None

    async def finish(self) -> None:
        """The session closed (Hubbub's protocol): let a frame whose handling closed it finish
        (any other was cancelled), stop, tell the client, close the connection, and close the
        session in the hub."""
        session = self.session
        try:
            worker = self.worker
            if worker is not None:
                await asyncio.wait([worker])
            await self.stop()
            await _goodbye(self.out.ws, session)
        except Exception:
            log.exception("closing the connection failed (session %s)", session.id)
        finally:
            await self.hub.close_session(session)

    async def stop(self) -> None:
        """End the frame handling and the writer, detach from the session, write what the
        direct path accepted."""
        session = self.session
        session.waker = None
        session.direct = None
        if self.proto is not None:
            self.proto.listener = None
        self.handler = None
        worker, self.worker = self.worker, None
        if worker is not None and worker is not asyncio.current_task():
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        writer = self.writer
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        self.out.flush()

    async def _write(self) -> None:
        """Write what is queued until the queue is empty, then end. A lost connection closes
        the session with 1006."""
        session = self.session
        try:
            while items := session.take():
                await self.out.write_items(items)
        except (OSError, RuntimeError, WebSocketDisconnect):
            session.close(1006, "connection lost")
        except Exception:
            log.exception("writer failed (session %s)", session.id)
            session.close(CLOSE_INTERNAL, "internal error")
        finally:
            self.writer = None


class _FrameCache:
    """The WebSocket frame of the item being fanned out, built once for every subscriber (the
    fan-out offers one item to all its sessions in a row, so one entry is enough). Hubbub's own
    connection never negotiates extensions, so a frame built once fits every connection."""

    __slots__ = ("data", "item")

    def __init__(self) -> None:
        self.item: Item | None = None
        self.data = b""

    def encode(self, item: Item) -> bytes:
        payload = item.frame
        self.data = data = text_frame_header(len(payload)) + payload
        self.item = item
        return data


_frames = _FrameCache()


class _Writer(DirectWriter):
    """A WebSocket's writer (:class:`~hubbub.transports.direct.DirectWriter`): frames built by
    :data:`_frames`, written by ``proto.write_now`` (which checks the connection is open and
    drops what a connection that went away cannot take); without Hubbub's protocol, one ASGI
    ``websocket.send`` per frame."""

    TRANSPORT = "ws"
    __slots__ = ("ws",)

    def __init__(self, ws: WebSocket, proto: WSConnection | None, metrics: Metrics | None):
        if proto is None:
            super().__init__(metrics, _frames, None, None)
        else:
            super().__init__(metrics, _frames, proto.writable, proto.write_now)
        self.ws = ws

    async def send_items(self, items: list[Item]) -> bool:
        send = self.ws.send
        size = 0
        for item in items:
            size += len(item.frame)
            await send({"type": "websocket.send", "text": item.text})
        self.frames_sent["ws"] += len(items)
        self.bytes_sent["ws"] += size
        return True


def _protocol(ws: WebSocket) -> WSConnection | None:
    proto = (ws.scope.get("extensions") or {}).get("hubbub.ws")
    return proto if isinstance(proto, WSConnection) else None


async def _reader(ws: WebSocket, session: Session, handler: FrameHandler) -> None:
    """Read and handle client frames until the client goes or the session closes (without
    Hubbub's protocol: the ASGI ``receive``)."""
    limit = session_frame_limit(handler.hub)
    while session.closed is None:
        try:
            msg = await ws.receive()
        except (OSError, RuntimeError, WebSocketDisconnect):
            session.close(1006, "connection lost")
            return
        if not await _handle(msg, session, handler, limit):
            return


async def _handle(msg: Message, session: Session, handler: FrameHandler, limit: int) -> bool:
    """Handle one ASGI message from the client. False when no more are to be read (the client
    went away or the session was closed for what it sent)."""
    if msg["type"] == "websocket.disconnect":
        session.close(int(msg.get("code") or 1005), "client closed")
        return False
    text = msg.get("text")
    if text is None:
        session.close(CLOSE_PROTOCOL, "binary frames are not part of the protocol")
        return False
    if len(text) > limit and len(text.encode()) > limit:
        session.close(CLOSE_TOO_LARGE, "frame too large")
        return False
    session.touch()
    try:
        frame = parse_frame(text)
    except BadString as exc:
        session.send(exc.frame(None))
        session.bad_frames += 1
        if session.bad_frames >= MAX_BAD_FRAMES:
            session.close(CLOSE_PROTOCOL, "too many bad frames")
        return True
    except BadRequest as exc:
        session.close(CLOSE_PROTOCOL, exc.message)
        return False
    fid = frame.get("id")
    try:
        await handler.handle(frame)
    except RateLimited as exc:
        handler.refused(exc, fid if isinstance(fid, int) and not isinstance(fid, bool) else None)
    except HubError as exc:
        session.send(exc.frame(fid if isinstance(fid, int) and not isinstance(fid, bool) else None))
        if isinstance(exc, BadRequest):
            session.bad_frames += 1
            if session.bad_frames >= MAX_BAD_FRAMES:
                session.close(CLOSE_PROTOCOL, "too many bad frames")
    except Exception:
        log.exception("frame handler failed (session %s)", session.id)
        session.close(CLOSE_INTERNAL, "internal error")
    return True


def session_frame_limit(hub: Hub) -> int:
    """Largest accepted frame: ``HUB_MAX_MESSAGE_BYTES`` (or a [[rooms]] table's larger
    ``max_message_bytes``) + 16 KiB (PROTOCOL.md §3)."""
    return hub.settings.largest_message_bytes + 16 * 1024


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
