"""WebSocket transport: ``GET /v1/ws`` (PROTOCOL.md §3).

One connection = one :class:`~hub.session.Session` and two tasks racing in one task group: the
reader handles client frames one at a time (so one publisher's publications keep their order),
the writer drains the session's queue to the socket. The first to finish cancels the other.

Refusals complete the upgrade and then close with the code so browsers can see it (4501, 4510,
4003); a bad ``Origin`` is refused with HTTP 403 at the handshake (HARDENING 13).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import Any

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from hub.auth import Identity
from hub.envelope import Publication, frame_bytes, parse_frame
from hub.errors import (
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
from hub.hub import Hub
from hub.metrics import Metrics
from hub.session import Session
from signaling.relay import relay_signal
from signaling.turn import arm_ice_refresh, ice_servers
from transports.edge import credential, origin_allowed
from transports.ws_frames import FrameHandler

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
        cred = credential(ws)
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


async def ws_endpoint(ws: WebSocket) -> None:
    hub: Hub = ws.app.state.hub
    settings = hub.settings
    if not origin_allowed(ws, settings):
        await ws.close(CLOSE_ORIGIN)  # before accept: HTTP 403 at the handshake
        return
    await ws.accept()
    ident = await _authenticate(hub, ws)
    if ident is None:
        return
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


async def _run(hub: Hub, ws: WebSocket, session: Session) -> None:
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
    session.send(welcome)
    session.start_heartbeat(s.ping_interval, s.ping_timeout, client_pongs=True)
    session.arm_expiry(lambda secs: session.send({"type": "expiring", "in": secs}))
    arm_ice_refresh(session, s)  # PROTOCOL.md §6: fresh TURN credentials before they expire
    handler = FrameHandler(hub, session, relay_signal)
    writer = asyncio.create_task(_writer(ws, session, hub.metrics))
    reader = asyncio.create_task(_reader(ws, session, handler))
    try:
        await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (reader, writer):
            t.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
    closed = session.closed
    if closed is not None:
        hub.metrics.disconnects[closed.code] += 1
        if closed.code >= 4000:
            await _send_json(ws, {"type": "disconnect", "code": closed.code,
                                  "reason": closed.reason, "reconnect": closed.reconnect})  # fmt: skip
        await _close(ws, closed.code, closed.reason)
    else:
        await _close(ws, 1000)


async def _writer(ws: WebSocket, session: Session, metrics: Metrics | None = None) -> None:
    """Drain the queue to the socket: every queued frame per wake-up, the same bytes for every
    subscriber. Ends when the session is closed."""
    send = ws.send
    frames, sent = (metrics.frames_sent, metrics.bytes_sent) if metrics else (Counter(), Counter())
    try:
        while True:
            items = await session.next_batch()
            if not items:
                return
            size = 0
            for item in items:
                if isinstance(item, Publication):
                    text = item.text
                    size += len(item.frame)
                else:
                    text = item
                    size += len(item)  # control frames: ASCII JSON, chars == bytes
                await send({"type": "websocket.send", "text": text})
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


def routes(hub: Hub) -> list[BaseRoute]:
    return [WebSocketRoute("/v1/ws", ws_endpoint)]
