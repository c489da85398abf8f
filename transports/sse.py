"""Server-Sent Events: ``GET /v1/rooms/{room}/events`` and ``GET /v1/events?room=…`` (PROTOCOL.md §4).

One stream = one :class:`~hub.session.Session` of transport ``sse``. The request is fully
checked (origin, credential, rooms, grants) and every room is subscribed *before* the response
starts, so refusals are plain JSON errors (401/403/400) and the first block already names a
position in every room.

Cursor bookkeeping. The stream keeps one :class:`~hub.envelope.Position` per room: "what the
client has". The first block's ``id:`` is, per room, the position the client resumed from (not
the head: the replayed events follow and must not be skipped when the browser reconnects right
then) or, for a room joined live, the subscribe result's head. Every stored publication and every
``hub.gap`` moves its room's position and carries the cursor of *all* rooms as its ``id:``, so
the browser's automatic ``Last-Event-ID`` resumes every room at once. Events without a stored
position (ephemeral messages, ``hub.join``/``hub.leave``/``hub.presence``, ``hub.expired``,
``hub.disconnect``) carry no ``id:``.

Replay and backpressure. :meth:`Hub.subscribe` queues replayed frames and waits until the
session's queue is nearly empty (:meth:`Session.drained`), so while we subscribe (before anything
may be written) a collector task moves queued frames into a local buffer. The buffer is bounded
by ``HUB_MAX_QUEUE_BYTES``: rooms subscribed with a resume position go last, and once the buffer
passes the bound the remaining resumed rooms are subscribed after the first block, while the
writer streams (their first-block positions are their resume positions, known up front; a room
joined live never waits, so its head is always known before the first block).

Writing. Each event is encoded once per publication, not per subscriber: the block of a
one-room stream (``id:``/``event:``/``data:``) is the same bytes for every subscriber of that
room, framed once as an HTTP/1.1 chunk (:class:`transports.sse_blocks.BlockCache`); a
multi-room stream joins the cached per-room part of the cursor with its other rooms' parts. On Hubbub's uvicorn protocol
(:class:`hubbub.transports.h1.HttpConnection`) the stream installs itself as the session's
``direct`` writer once its first block and replay are out: the fan-out appends the block to the
stream's pending list and one ``call_soon`` per loop iteration (:class:`transports.flush.Flusher`) writes every
stream's pending blocks as one chunk with one ``transport.write`` each, so no task wakes per
subscriber. The
stream refuses (the session queues) while the socket is over its high-water mark or while its
own coroutine holds frames it took from the queue, so the order holds and a client that stops
reading fills its queue: ``HUB_MAX_QUEUE`` → 4001, as for WebSocket. Elsewhere (another
server, HTTP/1.0) every batch goes through the ASGI ``send``.

One coroutine per stream (the ASGI call itself) waits on the session; no task group. The
``: ping`` heartbeat is the session's own heartbeat timer (its ``ping`` frame becomes the
comment). A client going away is noticed by the protocol's ``connection_lost`` (elsewhere, by a
task reading ``receive`` for ``http.disconnect``) and closes the session. A write that waits
for the client longer than ``SEND_TIMEOUT`` (30 s, at least two ping intervals) drops the
stream with 4001. The SSE paths are answered ahead of the Starlette stack (:class:`SSEEndpoint`,
registered by :func:`install`) with the app's CORS headers; the Starlette routes remain for
other methods (405) and for apps built without the hook.

Endings. A session closed with a reconnect code (4000 draining, 4001 slow consumer, 4003 broker,
4005 rate) ends the stream with ``retry: <ms>`` and an ``event: hub.disconnect`` (an extension:
``{"code","reason","reconnect"}``), never a 5xx/429, because EventSource gives up for good on any
non-200. Token expiry (4004) ends it with ``event: hub.expired``. A client that does not take
these last events within ``FAREWELL_GRACE`` seconds of the close is dropped. The session is
always closed with :meth:`Hub.close_session` when the response ends, whatever the reason.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import anyio
import orjson
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from hubbub.hub.auth import Identity
from hubbub.hub.envelope import Position, Publication, check_room, make_cursor, parse_since
from hubbub.hub.errors import (
    CLOSE_NORMAL,
    CLOSE_SLOW,
    BadRequest,
    Disconnect,
    Forbidden,
    HubError,
    Unauthorized,
)
from hubbub.hub.hub import Hub
from hubbub.hub.session import PING, Item, Session
from hubbub.transports.edge import credential, error_response, origin_allowed, route_path
from hubbub.transports.flush import flusher
from hubbub.transports.h1 import ChunkedStream, HttpConnection, http_chunk
from hubbub.transports.http_edge import CORSMiddleware
from hubbub.transports.sse_blocks import (
    PING_BLOCK,
    block,
    blocks,
    farewell,
    pieces,
    pub_block,
)

log = logging.getLogger("hubbub.sse")

MAX_ROOMS = 32
MEDIA_TYPE = "text/event-stream"
SEND_TIMEOUT = 30.0  # a client that reads nothing for this long is dropped
CLOSE_TIMEOUT = 5.0  # bound on close_session when the response ends
FAREWELL_GRACE = 3.0  # after the session closed, time to write the last events
MAX_PENDING = 64  # directly accepted blocks per stream before writing without the flush
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
    if value is None or value.lower() in ("", "0", "false", "no"):
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    raise BadRequest(f"{name} must be 1 or 0")


def _ending_response(hub: Hub, closed: Disconnect) -> Response:
    """200 with a ``retry:`` hint and nothing else: the browser comes back later (§4)."""
    body = farewell(closed, hub.settings.sse_retry_ms)
    return Response(body.encode(), headers={"Cache-Control": "no-cache"}, media_type=MEDIA_TYPE)


# ---- the stream -----------------------------------------------------------------------------
class EventStream:
    """One SSE stream's state: its session, its rooms and the client's position in each.

    :meth:`subscribe` runs before the response starts (it raises HubError for refusals);
    :meth:`respond` writes the response until the session closes; :meth:`close` always runs at
    the end. As the session's ``direct`` writer (:meth:`__call__`) it takes frames from the
    fan-out without waking its coroutine.
    """

    __slots__ = ("_late", "_parts", "_timeout", "buffered", "buffered_bytes", "busy",
                 "closed_at", "flow", "garbage", "gone", "hub", "out", "pending", "pending_blocks",
                 "positions", "prelude", "presence", "recovered", "resume", "rooms", "session",
                 "since", "single")  # fmt: skip

    def __init__(
        self, hub: Hub, session: Session, rooms: list[str], since: str | None, presence: bool
    ) -> None:
        self.hub = hub
        self.session = session
        self.rooms = rooms
        self.single = len(rooms) == 1  # a publication's block is then the same for everyone
        self.since = since
        self.presence = presence
        self.positions: dict[str, Position] = {}
        self._parts: dict[str, str] = {}  # room -> its part of the cursor (one hash per event)
        self.buffered: list[Item] = []
        self.buffered_bytes = 0
        self.pending: list[str] = []  # resumed rooms subscribed after the first block
        self.prelude: list[str] = []  # hub.presence blocks, written right after the first block
        self.recovered = True
        self._late: asyncio.Task[None] | None = None
        # Writing state (see respond).
        self.out: ChunkedStream | None = None  # the direct path, when the server offers one
        self.flow: Any = None  # out.flow: ``write_paused`` is checked per offered frame
        self.pending_blocks: list[bytes] = []  # accepted from the fan-out, not yet written
        self.busy = False  # the coroutine holds frames taken from the queue: keep the order
        self.gone = False  # the client went away: nothing more to write
        self.closed_at: float | None = None  # loop time the session closed
        self._timeout: asyncio.Timeout | None = None  # the current wait for the client
        try:
            self.resume = parse_since(since, rooms) if since is not None else {}
            self.garbage = False
        except BadRequest:
            # Unparseable: the hub answers every room with a gap from 1 (§4), so all are resumed.
            self.resume = {r: Position(None, 0) for r in rooms}
            self.garbage = True

    # ---- subscribing ------------------------------------------------------------------------
    def _start_position(self, room: str, result: dict[str, Any] | None) -> Position:
        """What the client has in ``room`` before anything of this stream is written."""
        epoch = None if result is None else result["epoch"]
        pos = self.resume.get(room)
        if pos is None:
            assert result is not None
            return Position(epoch, result["offset"])
        if self.garbage:
            return Position(epoch, 0)
        return Position(pos.epoch or epoch, pos.offset)

    async def _subscribe_one(self, room: str) -> dict[str, Any]:
        since = self.since if room in self.resume else None
        result = await self.hub.subscribe(self.session, room, since=since, presence=self.presence)
        if room in self.resume and not result.get("recovered"):
            self.recovered = False
        if "presence" in result:
            data = {"type": "presence", "room": room, "members": result["presence"]}
            self.prelude.append(block(event="hub.presence", data=orjson.dumps(data).decode()))
        return result

    async def subscribe(self) -> None:
        """Subscribe every room (live ones first) before anything is written. Raises the
        hub's errors (Forbidden, BadRequest, RoomFull, Unavailable…)."""
        collector = asyncio.get_running_loop().create_task(self._collect())
        try:
            order = [r for r in self.rooms if r not in self.resume]
            order += [r for r in self.rooms if r in self.resume]
            for i, room in enumerate(order):
                if self.session.closed is not None:
                    break
                if room in self.resume and self.buffered_bytes > self.session.max_queue_bytes:
                    self.pending = order[i:]
                    for late in self.pending:
                        self._moved(late, self._start_position(late, None))
                    break
                self._moved(room, self._start_position(room, await self._subscribe_one(room)))
        finally:
            collector.cancel()
            await asyncio.wait([collector])
        self.positions = {r: self.positions[r] for r in self.rooms if r in self.positions}

    async def _collect(self) -> None:
        # Keeps the session's queue short while Hub.subscribe replays (it waits for that).
        while batch := await self.session.next_batch():
            self.buffered.extend(batch)
            self.buffered_bytes += sum(
                len(i.frame) if isinstance(i, Publication) else len(i) for i in batch
            )

    async def _subscribe_late(self) -> None:
        try:
            for room in self.pending:
                if self.session.closed is not None:
                    return
                result = await self._subscribe_one(room)
                pos = self.positions[room]
                if pos.epoch is None:  # nothing written for it yet: learn its epoch
                    self._moved(room, Position(result["epoch"], pos.offset))
                for pre in self.prelude:
                    self.session.offer(pre)  # pre-encoded str blocks, see _encode
                self.prelude = []
        except HubError as exc:  # the stream has started: end it with the error's close code
            self.session.close(exc.close_code, exc.message)
        except Exception:
            log.exception("late subscribe failed")
            self.session.close(1011, "internal error")

    # ---- encoding ---------------------------------------------------------------------------
    def _moved(self, room: str, pos: Position) -> None:
        self.positions[room] = pos
        self._parts[room] = make_cursor({room: pos})

    def cursor(self) -> str:
        """One cursor for every room of the stream (what ``make_cursor(positions)`` gives,
        without re-hashing the rooms that did not move)."""
        return "~".join(self._parts[room] for room in self.positions)

    def first_block(self) -> str:
        return block(retry=self.hub.settings.sse_retry_ms, id_=self.cursor())

    def _encode(self, item: Item) -> bytes | None:
        """One queued or offered frame as an SSE block; None for frames SSE does not carry.

        A one-room stream's cursor is the position of the event itself, so its positions are
        only kept for multi-room streams (and for gaps)."""
        if isinstance(item, Publication):
            cache = blocks
            if item is not cache.item:
                cache.get(item)
            if self.single or not cache.part:  # the stream's only room, or ephemeral: shared
                return cache.block
            assert item.epoch is not None and item.offset is not None
            self.positions[item.room] = Position(item.epoch, item.offset)
            self._parts[item.room] = cache.part
            return pub_block(self.cursor(), cache.event, item.frame)
        if item is PING or item == PING:
            return PING_BLOCK
        if item.startswith("event: "):  # a block queued by _subscribe_late
            return item.encode()
        try:
            frame = orjson.loads(item)
        except orjson.JSONDecodeError:
            return None
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "gap":
            room = frame.get("room")
            if room in self.positions:
                self._moved(room, Position(str(frame["epoch"]), int(frame["to"])))
            return block(id_=self.cursor(), event="hub.gap", data=item).encode()
        if kind in ("join", "leave"):
            return block(event=f"hub.{kind}", data=item).encode()
        return None  # anything else is not for SSE

    # ---- the direct path --------------------------------------------------------------------
    def __call__(self, item: Item) -> bool:
        """``Session.direct``: take one frame from the fan-out, to be written at the end of
        this loop iteration. Refuses (the session queues it) while the coroutine holds queued
        frames or the socket is over its high-water mark."""
        if self.busy or self.flow.write_paused:
            return False
        if self.single and isinstance(item, Publication):
            cache = blocks
            if item is not cache.item:
                cache.get(item)
            block = cache.block
        else:
            encoded = self._encode(item)
            if encoded is None:
                return True  # nothing to write for SSE: taken and dropped
            block = encoded
        pending = self.pending_blocks
        pending.append(block)
        if len(pending) == 1:
            flusher.add(self)
        elif len(pending) >= MAX_PENDING:
            self.flush()
        return True

    def flush(self) -> None:
        """Write what the fan-out handed over as one chunk (dropped if the connection went
        away): the client parses one chunk header per loop iteration, not one per event."""
        pending = self.pending_blocks
        if not pending:
            return
        if len(pending) == 1:
            block = pending[0]
            cache = blocks
            data = cache.chunk if block is cache.block else http_chunk(block)
            size = len(block)
        else:
            size = sum(map(len, pending))
            data = b"".join([b"%x\r\n" % size, *pending, b"\r\n"])
        metrics = self.hub.metrics
        metrics.frames_sent["sse"] += len(pending)
        metrics.bytes_sent["sse"] += size
        pending.clear()
        if self.out is not None:
            self.out.write(data)

    # ---- the response -----------------------------------------------------------------------
    def _closed(self, _why: Disconnect) -> None:
        # Session.on_close: from now on, waits for the client last at most FAREWELL_GRACE.
        self.closed_at = asyncio.get_running_loop().time()
        if self._timeout is not None:
            when = self._timeout.when()
            limit = self.closed_at + FAREWELL_GRACE
            if when is None or when > limit:
                self._timeout.reschedule(limit)

    def _lost(self) -> None:
        self.gone = True
        self.session.close(CLOSE_NORMAL, "client went away")

    async def _wait(self, aw: Any) -> None:
        """Await one wait on the client (its socket draining, an ASGI send) within
        ``SEND_TIMEOUT`` (at least two ping intervals), or within what is left of
        ``FAREWELL_GRACE`` once the session is closed (:meth:`_closed` shortens a wait already
        running). Raises TimeoutError."""
        if self.closed_at is None:
            patience = max(SEND_TIMEOUT, 2 * self.hub.settings.sse_ping_interval)
            when = asyncio.get_running_loop().time() + patience
        else:
            when = self.closed_at + FAREWELL_GRACE
        self._timeout = asyncio.timeout_at(when)
        try:
            async with self._timeout:
                await aw
        finally:
            self._timeout = None

    async def _write(self, blocks: list[bytes], send: Send) -> bool:
        """Write blocks (a batch taken from the queue, the farewell) after what the fan-out
        handed over, in pieces of about ``WRITE_PIECE`` bytes, each once the socket takes
        more. Returns False when the client is gone."""
        if not blocks:
            return True
        metrics = self.hub.metrics
        metrics.frames_sent["sse"] += len(blocks)
        self.busy = True
        try:
            self.flush()
            for piece in pieces(blocks):
                metrics.bytes_sent["sse"] += len(piece)
                out = self.out
                if out is None:
                    body = {"type": "http.response.body", "body": piece, "more_body": True}
                    await self._wait(send(body))
                    continue
                if self.flow.write_paused:
                    await self._wait(out.drain())
                if not out.write(http_chunk(piece)):
                    return False
            return True
        finally:
            self.busy = False

    async def _watch(self, receive: Receive) -> None:
        # Without the direct path nothing else notices a client that goes away.
        while (await receive())["type"] != "http.disconnect":
            pass
        self._lost()

    async def respond(self, scope: Scope, receive: Receive, send: Send,
                      headers: list[tuple[bytes, bytes]]) -> None:  # fmt: skip
        """Write the response: first block, prelude, replay, live; ends when the session
        closes, with the farewell block when the client is still there."""
        session = self.session
        session.on_close(self._closed)
        if session.closed is not None:
            self._closed(session.closed)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        first = (self.first_block() + "".join(self.prelude)).encode()
        self.prelude = []
        await send({"type": "http.response.body", "body": first, "more_body": True})
        proto = (scope.get("extensions") or {}).get("hubbub.http")
        out = proto.chunked_stream(scope) if isinstance(proto, HttpConnection) else None
        watcher = None
        loop = asyncio.get_running_loop()
        if out is None:
            watcher = loop.create_task(self._watch(receive))
        else:
            self.out, self.flow = out, out.flow
            out.on_lost = self._lost
        if self.pending:
            self._late = loop.create_task(self._subscribe_late())
        interval = self.hub.settings.sse_ping_interval
        session.start_heartbeat(interval, 0.0, client_pongs=False)  # PING → ": ping"
        try:
            await self._stream(send)
        except TimeoutError:
            if session.closed is None:
                log.info("sse client stopped reading; stream dropped")
                session.close(CLOSE_SLOW, "slow consumer: client stopped reading")
            else:
                log.info("sse client did not take its last events in time; stream dropped")
            if self.out is not None:
                self.out.abort()
        finally:
            session.direct = None
            self.flush()
            if out is not None:
                out.detach()
            self.out = None
            if watcher is not None:
                watcher.cancel()

    async def _stream(self, send: Send) -> None:
        session = self.session
        items, self.buffered = self.buffered, []
        while True:
            if items and not await self._write(self._blocks(items), send):
                return
            if self.out is not None and session.direct is None and session.closed is None:
                session.direct = self  # the queue is empty or taken: fan-out may write now
            items = await session.next_batch()
            if not items:
                break
        session.direct = None
        self.flush()
        closed = session.closed
        if self.gone or closed is None:
            return
        if await self._write([farewell(closed, self.hub.settings.sse_retry_ms).encode()], send):
            await self._wait(send({"type": "http.response.body", "body": b"", "more_body": False}))

    def _blocks(self, items: list[Item]) -> list[bytes]:
        return [b for b in map(self._encode, items) if b is not None]

    async def close(self) -> None:
        if self._late is not None:
            self._late.cancel()
            await asyncio.wait([self._late])
        await self.hub.close_session(self.session)


class _StreamResponse:
    """The ASGI response of an accepted stream; always closes its session at the end."""

    __slots__ = ("headers", "stream")

    def __init__(self, stream: EventStream, headers: list[tuple[bytes, bytes]]) -> None:
        self.stream = stream
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.stream.respond(scope, receive, send, self.headers)
        except OSError:
            pass  # the client went away mid-write
        finally:
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await self.stream.close()


# ---- endpoint -------------------------------------------------------------------------------
async def _serve(
    hub: Hub, conn: HTTPConnection, names: list[str], cors: list[tuple[bytes, bytes]]
) -> Any:
    """Check and subscribe; the response (an error, an ending, or the stream). ``cors``: the
    CORS headers to add (none when the app's CORS middleware is on the way out)."""
    settings = hub.settings
    # CORS headers come from the app-wide policy (transports/http_edge.py), one policy for
    # every endpoint. A disallowed Origin is refused outright here, not merely left without
    # CORS headers: a cross-site page must not open sessions (presence joins) with our cookie.
    try:
        if not origin_allowed(conn, settings):
            raise Forbidden("origin not allowed")
        try:
            identity: Identity = hub.auth.authenticate(credential(conn))
        except Unauthorized:
            hub.metrics.auth_failures += 1
            raise
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

    stream = EventStream(hub, session, rooms, since, presence)
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
    if since is not None and not stream.pending:
        # Mercure-style reconciliation header (hardening case 42).
        value = stream.cursor() if stream.recovered else "earliest"
        headers.append((b"hubbub-last-event-id", value.encode()))
    return _StreamResponse(stream, headers)


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
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        path = route_path(scope)  # as Starlette's router matches it
        if path == "/v1/events":
            names = None
        else:
            match = _ROOM_PATH.fullmatch(path)
            if match is None:
                await self.app(scope, receive, send)
                return
            names = [match.group(1)]
        response = await self._serve(scope, names)
        await response(scope, receive, send)

    async def _serve(self, scope: Scope, names: list[str] | None) -> Any:
        conn = HTTPConnection(scope)  # not kept: it lives in this frame only
        cors = self.cors.response_headers(conn)
        if names is None:
            names = conn.query_params.getlist("room")
        return await _serve(self.hub, conn, names, cors)


def install(app: Any, hub: Hub) -> None:
    """Register :class:`SSEEndpoint` as the app's outermost middleware (after the others)."""
    app.add_middleware(SSEEndpoint, hub=hub)
