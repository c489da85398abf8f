"""Server-Sent Events: ``GET /v1/rooms/{room}/events`` and ``GET /v1/events?room=…`` (PROTOCOL.md §4).

One stream = one :class:`~hub.session.Session` of transport ``sse``. The request is fully
checked (origin, credential, rooms, grants) and every room is subscribed *before* the response
starts, so refusals are plain JSON errors (401/403/400) and the first block already names a
position in every room.

The stream itself (cursor bookkeeping, replay, backpressure, the direct write path, the
heartbeat, timeouts) is :class:`hubbub.transports.sse_stream.EventStream`. The SSE paths are
answered ahead of the Starlette stack (:class:`SSEEndpoint`, registered by :func:`install`) with
the app's CORS headers; the Starlette routes remain for other methods (405) and for apps built
without the hook.

Endings. A session closed with a reconnect code (4000 draining, 4001 slow consumer, 4003 broker,
4005 rate) ends the stream with ``retry: <ms>`` and an ``event: hub.disconnect`` (an extension:
``{"code","reason","reconnect"}``), never a 5xx/429, because EventSource gives up for good on any
non-200. Token expiry (4004) ends it with ``event: hub.expired``. A client that does not take
these last events within ``FAREWELL_GRACE`` seconds of the close is dropped. The session is
always closed with :meth:`Hub.close_session` when the response ends, whatever the reason.
"""

from __future__ import annotations

import re
from collections.abc import Coroutine
from typing import Any

import anyio
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from hubbub.hub.envelope import check_room
from hubbub.hub.errors import BadRequest, Disconnect, Forbidden, HubError
from hubbub.hub.hub import Hub
from hubbub.hub.values import parse_bool
from hubbub.transports.edge import admit, error_response, route_path
from hubbub.transports.http_edge import CORSMiddleware
from hubbub.transports.sse_blocks import farewell
from hubbub.transports.sse_stream import CLOSE_TIMEOUT, SEND_TIMEOUT, EventStream

__all__ = ["SEND_TIMEOUT", "EventStream", "SSEEndpoint", "install", "routes"]

MAX_ROOMS = 32
MEDIA_TYPE = "text/event-stream"
_ROOM_PATH = re.compile(r"/v1/rooms/([^/]+)/events")
_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]  # fmt: skip


# ---- request parsing ------------------------------------------------------------------------
def _rooms(names: list[str]) -> list[str]:
    """Validate the requested rooms (at most 32, duplicates dropped, order kept)."""
    if not names:
        raise BadRequest("at least one room is required: ?room=<name>")
    if len(names) > MAX_ROOMS:
        raise BadRequest(f"at most {MAX_ROOMS} rooms per stream", details={"limit": MAX_ROOMS})
    out: list[str] = []
    for name in names:
        check_room(name)
        if name not in out:
            out.append(name)
    return out


def _flag(value: str | None, name: str) -> bool:
    """A boolean query parameter (:func:`~hubbub.hub.values.parse_bool`); absent is False."""
    if value is None:
        return False
    try:
        return parse_bool(value)
    except ValueError:
        raise BadRequest(f"{name} must be 1 or 0") from None


def _ending_response(hub: Hub, closed: Disconnect) -> Response:
    """200 with a ``retry:`` hint and nothing else: the browser comes back later (§4)."""
    body = farewell(closed, hub.settings.sse_retry_ms)
    return Response(body.encode(), headers={"Cache-Control": "no-cache"}, media_type=MEDIA_TYPE)


class _StreamResponse:
    """The ASGI response of an accepted stream; always closes its session at the end. Calling
    it returns the coroutine of :func:`_run_stream` (no frame of its own for the stream's
    life)."""

    __slots__ = ("headers", "stream")

    def __init__(self, stream: EventStream, headers: list[tuple[bytes, bytes]]) -> None:
        self.stream = stream
        self.headers = headers

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
        return _run_stream(self.stream, self.headers, scope, receive, send)


async def _run_stream(stream: EventStream, headers: list[tuple[bytes, bytes]], scope: Scope,
                      receive: Receive, send: Send) -> None:  # fmt: skip
    held = False
    try:
        held = await stream.respond(scope, receive, send, headers)
    except OSError:
        pass  # the client went away mid-write
    finally:
        if not held:  # (a held stream closes its session itself)
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await stream.close()


# ---- endpoint -------------------------------------------------------------------------------
async def _serve(
    hub: Hub, conn: HTTPConnection, names: list[str], cors: list[tuple[bytes, bytes]]
) -> Any:
    """Check and subscribe; the response (an error, an ending, or the stream). ``cors``: the
    CORS headers to add (none when the app's CORS middleware is on the way out)."""
    # CORS headers come from the app-wide policy (transports/http_edge.py), one policy for
    # every endpoint. A disallowed Origin is refused outright (by admit), not merely left
    # without CORS headers: a cross-site page must not open sessions (presence joins) with our
    # cookie.
    try:
        identity = await admit(hub, conn, transport="sse")
        rooms = _rooms(names)
        presence = _flag(conn.query_params.get("presence"), "presence")
        for room in rooms:
            if not identity.can("subscribe", room):
                raise Forbidden(f"no subscribe grant for room {room}", details={"room": room})
            if presence and not identity.can("presence", room):
                raise Forbidden(f"no presence grant for room {room}", details={"room": room})
    except HubError as exc:
        return _with(error_response(exc), cors)
    # The Last-Event-ID header (the browser's automatic resume) wins over ``since=`` (§4).
    since = conn.headers.get("last-event-id") or conn.query_params.get("since") or None
    if conn.scope["method"] == "HEAD":
        return _with(Response(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                              media_type=MEDIA_TYPE), cors)  # fmt: skip

    try:
        session = await hub.open_session(identity, "sse")
    except Disconnect as closed:
        if closed.reconnect:
            return _with(_ending_response(hub, closed), cors)
        return _with(error_response(Forbidden(closed.reason, details={"code": closed.code})), cors)
    except HubError as exc:
        if exc.temporary:
            return _with(_ending_response(hub, Disconnect(exc.close_code, exc.message)), cors)
        return _with(error_response(exc), cors)

    stream = EventStream(hub, session, rooms, since, presence, send_timeout=SEND_TIMEOUT)
    try:
        session.arm_expiry(lambda _left: None)  # at exp: close 4004 → hub.expired
        await stream.subscribe()
    except BaseException as exc:
        with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
            await stream.close()
        if isinstance(exc, HubError):
            if exc.temporary:
                return _with(_ending_response(hub, Disconnect(exc.close_code, exc.message)), cors)
            return _with(error_response(exc), cors)
        raise
    headers = [*_HEADERS, *cors]
    if since is not None and stream.resume_known:
        # Mercure-style reconciliation header (hardening case 42).
        value = stream.cursor.text() if stream.recovered else "earliest"
        headers.append((b"hubbub-last-event-id", value.encode()))
    _forget_request(conn.scope)
    return _StreamResponse(stream, headers)


def _forget_request(scope: Scope) -> None:
    """Let go of the request headers once the stream is accepted: everything read from them
    (origin, credential, ``Last-Event-ID``, CORS) is decided, and a stream keeps its scope for
    hours (several hundred bytes per stream, more with browser cookies)."""
    headers = scope.get("headers")
    if isinstance(headers, list):
        headers.clear()


def _with(response: Response, cors: list[tuple[bytes, bytes]]) -> Response:
    response.raw_headers.extend(cors)
    return response


def routes(hub: Hub) -> list[BaseRoute]:
    """The SSE routes; mounted by :func:`hubbub.app.create_app`. With :func:`install`,
    GET and HEAD on these paths are answered before the Starlette stack is reached."""

    async def room_events(request: Request) -> Any:
        return await _serve(hub, request, [request.path_params["room"]], [])

    async def events(request: Request) -> Any:
        return await _serve(hub, request, request.query_params.getlist("room"), [])

    return [
        Route("/v1/rooms/{room}/events", room_events, methods=["GET"]),
        Route("/v1/events", events, methods=["GET"]),
    ]


class SSEEndpoint:
    """ASGI middleware answering ``GET``/``HEAD`` on the SSE paths itself, ahead of the rest of
    the Starlette stack (routing, exception middleware, CORS): a stream lives for hours, and
    every layer's coroutine frame and ``send`` wrapper would live as long, per stream. The
    app's CORS policy is applied here (:meth:`CORSMiddleware.response_headers`); anything else
    (other paths and methods, preflights) goes on to ``app``."""

    def __init__(self, app: ASGIApp, hub: Hub) -> None:
        self.app = app
        self.hub = hub
        self.cors = CORSMiddleware(app, hub.settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = self.answer(scope, receive, send)
        await (self.app(scope, receive, send) if answer is None else answer)

    def answer(
        self, scope: Scope, receive: Receive, send: Send
    ) -> Coroutine[Any, Any, None] | None:
        """The coroutine answering ``scope`` when it is a ``GET``/``HEAD`` on an SSE path, else
        None. A plain function, so that :class:`hubbub.app.HubApp` can hand the request to it
        without a coroutine frame of its own (and none of this class's either) living as long
        as the stream."""
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return None
        path = route_path(scope)  # as Starlette's router matches it
        if path == "/v1/events":
            names = None
        else:
            match = _ROOM_PATH.fullmatch(path)
            if match is None:
                return None
            names = [match.group(1)]
        return self._answer(scope, receive, send, names)

    async def _answer(self, scope: Scope, receive: Receive, send: Send,
                      names: list[str] | None) -> None:  # fmt: skip
        response = await self._serve(scope, names)
        await response(scope, receive, send)

    async def _serve(self, scope: Scope, names: list[str] | None) -> Any:
        conn = HTTPConnection(scope)  # not kept: it lives in this frame only
        cors = self.cors.response_headers(conn)
        if names is None:
            names = conn.query_params.getlist("room")
        return await _serve(self.hub, conn, names, cors)


def install(app: Any, hub: Hub) -> SSEEndpoint:
    """Register :class:`SSEEndpoint` as the app's outermost middleware (after the others), and
    return one for the app to answer SSE requests with ahead of its whole stack
    (:meth:`SSEEndpoint.answer`)."""
    app.add_middleware(SSEEndpoint, hub=hub)
    return SSEEndpoint(app, hub)
