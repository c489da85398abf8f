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

Why sse-starlette's ``EventSourceResponse``: it already races the writer, the ``: ping``
heartbeat and the client-disconnect watch in one task group (the first to finish cancels the
rest), with a send timeout. Its process-wide shutdown watcher (``AppStatus.should_exit``) is
neutralised: the ``shutdown_event`` we hand it only ends *this hub's* stream when the hub is
draining, and the grace period lasts the whole drain, so :class:`transports.server.HubServer`'s
batched ``hub.drain()`` (sessions closed with 4000) is what ends streams, spread over the drain
window, each with a final ``retry:`` hint. Several apps in one process (tests) therefore do not
end each other's streams.

Endings. A session closed with a reconnect code (4000 draining, 4001 slow consumer, 4003 broker,
4005 rate) ends the stream with ``retry: <ms>`` and an ``event: hub.disconnect`` (an extension:
``{"code","reason","reconnect"}``), never a 5xx/429, because EventSource gives up for good on any
non-200. Token expiry (4004) ends it with ``event: hub.expired``. The session is always closed
with :meth:`Hub.close_session` when the response ends, whatever the reason.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
from sse_starlette.event import ServerSentEvent
from sse_starlette.sse import EventSourceResponse, SendTimeoutError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from hub.auth import Identity
from hub.envelope import Position, Publication, check_room, make_cursor, parse_since
from hub.errors import (
    CLOSE_EXPIRED,
    CLOSE_SHUTDOWN,
    BadRequest,
    Disconnect,
    Forbidden,
    HubError,
    Unauthorized,
)
from hub.hub import Hub
from hub.session import Item, Session
from transports.edge import credential, error_response, origin_allowed

log = logging.getLogger("hubbub.sse")

MAX_ROOMS = 32
SEP = "\n"
MEDIA_TYPE = "text/event-stream"
SEND_TIMEOUT = 30.0  # a client that reads nothing for this long is dropped
CLOSE_TIMEOUT = 5.0  # bound on close_session when the response ends
FAREWELL_GRACE = 3.0  # after the session closed, time to write the last events


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


def _retry_hint(settings_ms: int) -> int:
    """A reconnect delay with jitter, so a drained node's clients do not return all at once."""
    return settings_ms + random.randint(0, settings_ms)


def _block(*, event: str | None = None, data: str | None = None, id_: str | None = None,
           retry: int | None = None) -> str:  # fmt: skip
    """One SSE block (WHATWG HTML §9.2). ``data`` is compact JSON: it never holds a raw CR/LF,
    and ids are hub-issued cursors, so nothing the client sent is echoed into the stream."""
    lines = []
    if retry is not None:
        lines.append(f"retry: {retry}")
    if id_ is not None:
        lines.append(f"id: {id_}")
    if event is not None:
        lines.append(f"event: {event}")
    if data is not None:
        lines.append(f"data: {data}")
    return SEP.join(lines) + SEP + SEP


def _ending_response(hub: Hub, closed: Disconnect) -> Response:
    """200 with a ``retry:`` hint and nothing else: the browser comes back later (§4)."""
    body = _farewell(hub, closed)
    return Response(body.encode(), headers={"Cache-Control": "no-cache"}, media_type=MEDIA_TYPE)


def _farewell(hub: Hub, closed: Disconnect) -> str:
    if closed.code == CLOSE_EXPIRED:
        data = {"type": "expired", "code": closed.code, "reason": closed.reason}
        return _block(event="hub.expired", data=orjson.dumps(data).decode())
    data = {"type": "disconnect", "code": closed.code, "reason": closed.reason,
            "reconnect": closed.reconnect}  # fmt: skip
    retry = _retry_hint(hub.settings.sse_retry_ms) if closed.reconnect else None
    return _block(event="hub.disconnect", data=orjson.dumps(data).decode(), retry=retry)


# ---- the stream -----------------------------------------------------------------------------
class _DrainHook:
    """Stands in for the ``anyio.Event`` that sse-starlette sets on (process-wide) shutdown.

    Only when *this* hub is draining does it end the stream (4000); otherwise another app in
    the same process is stopping and the stream goes on."""

    def __init__(self, hub: Hub, session: Session) -> None:
        self.hub = hub
        self.session = session

    def set(self) -> None:
        if self.hub.draining:
            self.session.close(CLOSE_SHUTDOWN, "server shutting down: reconnect elsewhere")

    def is_set(self) -> bool:
        return self.session.closed is not None


class EventStream:
    """One SSE stream's state: its session, its rooms and the client's position in each.

    :meth:`subscribe` runs before the response starts (it raises HubError for refusals);
    :meth:`events` is the body iterator; :meth:`close` always runs at the end.
    """

    def __init__(
        self, hub: Hub, session: Session, rooms: list[str], since: str | None, presence: bool
    ) -> None:
        self.hub = hub
        self.session = session
        self.rooms = rooms
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
            self.prelude.append(_block(event="hub.presence", data=orjson.dumps(data).decode()))
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
                for block in self.prelude:
                    self.session.offer(block)  # pre-encoded str blocks, see _encode
                self.prelude = []
        except HubError as exc:  # the stream has started: end it with the error's close code
            self.session.close(exc.close_code, exc.message)
        except Exception:
            log.exception("late subscribe failed")
            self.session.close(1011, "internal error")

    # ---- writing ----------------------------------------------------------------------------
    def _moved(self, room: str, pos: Position) -> None:
        self.positions[room] = pos
        self._parts[room] = make_cursor({room: pos})

    def cursor(self) -> str:
        """One cursor for every room of the stream (what ``make_cursor(positions)`` gives,
        without re-hashing the rooms that did not move)."""
        return "~".join(self._parts[room] for room in self.positions)

    def first_block(self) -> str:
        return _block(retry=self.hub.settings.sse_retry_ms, id_=self.cursor())

    def _encode(self, items: list[Item]) -> str:
        out: list[str] = []
        for item in items:
            if isinstance(item, Publication):
                event = item.event or "message"
                if item.offset is None or item.epoch is None:  # ephemeral: no position
                    out.append(_block(event=event, data=item.text))
                    continue
                self._moved(item.room, Position(item.epoch, item.offset))
                out.append(_block(id_=self.cursor(), event=event, data=item.text))
                continue
            if item.startswith("event: "):  # a block queued by _subscribe_late
                out.append(item)
                continue
            try:
                frame = orjson.loads(item)
            except orjson.JSONDecodeError:
                continue
            kind = frame.get("type") if isinstance(frame, dict) else None
            if kind == "gap":
                room = frame.get("room")
                if room in self.positions:
                    self._moved(room, Position(str(frame["epoch"]), int(frame["to"])))
                out.append(_block(id_=self.cursor(), event="hub.gap", data=item))
            elif kind in ("join", "leave"):
                out.append(_block(event=f"hub.{kind}", data=item))
            # ``ping`` (SSE has its own ``: ping`` comment) and anything else: not for SSE.
        return "".join(out)

    async def events(self) -> AsyncIterator[bytes]:
        """The response body: first block, prelude, replay, live; ends when the session closes.
        Yields bytes: sse-starlette would wrap a ``str`` in a ``data:`` line."""
        yield (self.first_block() + "".join(self.prelude)).encode()
        self.prelude = []
        if self.pending:
            self._late = asyncio.get_running_loop().create_task(self._subscribe_late())
        items, self.buffered = self.buffered, []
        while True:
            if items:
                chunk = self._encode(items)
                if chunk:
                    yield chunk.encode()
            items = await self.session.next_batch()
            if not items:
                break
        closed = self.session.closed
        if closed is not None:
            yield _farewell(self.hub, closed).encode()

    async def close(self) -> None:
        if self._late is not None:
            self._late.cancel()
            await asyncio.wait([self._late])
        await self.hub.close_session(self.session)


class _EventSourceResponse(EventSourceResponse):
    """EventSourceResponse that always closes its stream's session, whatever ends it, and that
    gives up on the client ``FAREWELL_GRACE`` seconds after the session closed: a client that
    stopped reading (slow consumer, 4001) or a drain must not keep the response (and uvicorn's
    shutdown) waiting on a blocked write for the whole send timeout."""

    def __init__(self, stream: EventStream, **kw: Any) -> None:
        super().__init__(stream.events(), **kw)
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        timer: list[asyncio.TimerHandle] = []
        with anyio.CancelScope() as give_up:

            def closed(_why: Disconnect | None = None) -> None:
                if not timer:
                    timer.append(loop.call_later(FAREWELL_GRACE, give_up.cancel))

            self.stream.session.on_close(closed)
            if self.stream.session.closed is not None:
                closed()
            try:
                await self._respond(scope, receive, send)
            finally:
                for t in timer:
                    t.cancel()
        if give_up.cancelled_caught:
            log.info("sse client did not take its last events in time; stream dropped")

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            log.info("sse client stopped reading; stream dropped")
        except OSError:
            pass  # the client went away mid-write
        finally:
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await self.stream.close()


# ---- endpoint -------------------------------------------------------------------------------
async def _serve(hub: Hub, request: Request, names: list[str]) -> Response:
    settings = hub.settings
    # CORS headers come from the app-wide middleware (transports/http_edge.py), one policy for
    # every endpoint. A disallowed Origin is refused outright here, not merely left without
    # CORS headers: a cross-site page must not open sessions (presence joins) with our cookie.
    try:
        if not origin_allowed(request, settings):
            raise Forbidden("origin not allowed")
        try:
            identity: Identity = hub.auth.authenticate(credential(request))
        except Unauthorized:
            hub.metrics.auth_failures += 1
            raise
        rooms = _rooms(names)
        presence = _flag(request.query_params.get("presence"), "presence")
        for room in rooms:
            if not identity.can("subscribe", room):
                raise Forbidden(f"no subscribe grant for room {room}", details={"room": room})
            if presence and not identity.can("presence", room):
                raise Forbidden(f"no presence grant for room {room}", details={"room": room})
    except HubError as exc:
        return error_response(exc)
    # The Last-Event-ID header (the browser's automatic resume) wins over ``since=`` (§4).
    since = request.headers.get("last-event-id") or request.query_params.get("since") or None
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if request.method == "HEAD":
        return Response(headers=headers, media_type=MEDIA_TYPE)

    try:
        session = await hub.open_session(identity, "sse")
    except Disconnect as closed:
        if closed.reconnect:
            return _ending_response(hub, closed)
        return error_response(Forbidden(closed.reason, details={"code": closed.code}))
    except HubError as exc:
        if exc.temporary:
            return _ending_response(hub, Disconnect(exc.close_code, exc.message))
        return error_response(exc)

    stream = EventStream(hub, session, rooms, since, presence)
    try:
        session.arm_expiry(lambda _left: None)  # at exp: close 4004 → hub.expired
        await stream.subscribe()
    except BaseException as exc:
        with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
            await stream.close()
        if isinstance(exc, HubError):
            if exc.temporary:
                return _ending_response(hub, Disconnect(exc.close_code, exc.message))
            return error_response(exc)
        raise
    if since is not None and not stream.pending:
        # Mercure-style reconciliation header (HARDENING 42).
        headers["Hubbub-Last-Event-ID"] = stream.cursor() if stream.recovered else "earliest"
    interval = settings.sse_ping_interval
    return _EventSourceResponse(
        stream,
        headers=headers,
        ping=interval,
        sep=SEP,
        ping_message_factory=_ping_factory,
        send_timeout=max(SEND_TIMEOUT, 2 * interval),
        shutdown_event=_DrainHook(hub, session),
        shutdown_grace_period=settings.shutdown_timeout,
        cleanup_timeout=CLOSE_TIMEOUT,
    )


def _ping_factory() -> Any:
    return ServerSentEvent(comment="ping", sep=SEP)


def routes(hub: Hub) -> list[BaseRoute]:
    """The SSE routes; mounted by :func:`transports.app.create_app`."""

    async def room_events(request: Request) -> Response:
        return await _serve(hub, request, [request.path_params["room"]])

    async def events(request: Request) -> Response:
        return await _serve(hub, request, request.query_params.getlist("room"))

    return [
        Route("/v1/rooms/{room}/events", room_events, methods=["GET"]),
        Route("/v1/events", events, methods=["GET"]),
    ]
