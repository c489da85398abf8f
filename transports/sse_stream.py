"""One Server-Sent Events stream (the endpoint is :mod:`hubbub.transports.sse`).

Cursor bookkeeping. The stream keeps one :class:`~hub.envelope.Position` per room: "what the
client has" (:class:`~hubbub.transports.sse_blocks.Cursor`). The first block's ``id:`` is, per
room, the position the client resumed from (not the head: the replayed events follow and must
not be skipped when the browser reconnects right then) or, for a room joined live, the subscribe
result's head. Every stored publication and every ``hub.gap`` moves its room's position and
carries the cursor of *all* rooms as its ``id:``, so the browser's automatic ``Last-Event-ID``
resumes every room at once. Events without a stored position (ephemeral messages,
``hub.join``/``hub.leave``/``hub.presence``, ``hub.expired``, ``hub.disconnect``) carry no
``id:``.

Replay and backpressure. :meth:`Hub.subscribe` replays a page (``HUB_MAX_REPLY_BYTES``) at a
time and reads the next once the session's writer wrote the last (:meth:`Session.drained`). While
we subscribe (before anything may be written) a collector task takes queued frames into a local
buffer, which stands in for the writer. Rooms subscribed with a resume position go last; once the
buffer holds ``HUB_MAX_REPLY_BYTES`` during a resumed room's subscribe, or before the next resumed
room, the stream starts with what it has, and the rest of the subscribing goes on after the first
block while the writer streams: the replays then go page by page as the client reads (their
first-block positions are their resume positions, known up front; a room joined live never
waits, so its head is always known before the first block). ``Hubbub-Last-Event-ID`` is sent
when every resumed room said before the stream started whether it resumed without loss (a room
whose replay goes on said so with its first page: its ``gap`` comes first).

Writing. Each event is encoded once per item, not per subscriber, where it can be
(:mod:`hubbub.transports.sse_blocks`). On Hubbub's uvicorn protocol
(:class:`hubbub.transports.h1.HttpConnection`) the stream's :class:`_Writer` (the shared
:class:`~hubbub.transports.direct.DirectWriter`) is installed as the session's ``direct`` writer
once the first block and the replay are out: the fan-out's blocks leave as one HTTP chunk per
loop iteration, and no task wakes per subscriber. It refuses (the session queues) while the
socket is over its high-water mark or while the stream's writer holds frames it took from the
queue, so the order holds and a client that stops reading fills its queue: ``HUB_MAX_QUEUE`` →
4001, as for WebSocket. Elsewhere (another server, HTTP/1.0) every batch goes through the ASGI
``send``.

On Hubbub's protocol a stream, once started, is held without a task or coroutine: the ASGI call
returns (:meth:`ChunkedStream.hold`), frames the session queues are written by a task that ends
when the queue is empty, and the session's close starts the task that ends the response and
closes the session. Elsewhere one coroutine per stream (the ASGI call itself) waits on the
session. The ``: ping`` heartbeat is the session's own heartbeat timer (its ``ping`` frame becomes the
comment). A client going away is noticed by the protocol's ``connection_lost`` (elsewhere, by a
task reading ``receive`` for ``http.disconnect``) and closes the session. A write that waits
for the client longer than the send timeout (30 s, at least two ping intervals) drops the
stream with 4001. A session closed with a reconnect code ends the stream with ``retry: <ms>``
and ``event: hub.disconnect``; token expiry (4004) with ``event: hub.expired``. A client that
does not take these last events within ``FAREWELL_GRACE`` seconds of the close is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio
from starlette.types import Receive, Scope, Send

from hubbub.hub.envelope import Position, Publication, parse_since
from hubbub.hub.errors import CLOSE_NORMAL, CLOSE_SLOW, BadRequest, Disconnect, HubError
from hubbub.hub.hub import Hub
from hubbub.hub.session import GAP, Control, Item, Session
from hubbub.transports.direct import DirectWriter
from hubbub.transports.h1 import HttpConnection
from hubbub.transports.h1_cycle import ChunkedStream, http_chunk
from hubbub.transports.sse_blocks import Cursor, block, blocks, control_block, farewell, pieces

log = logging.getLogger("hubbub.sse")

SEND_TIMEOUT = 30.0  # a client that reads nothing for this long is dropped
FAREWELL_GRACE = 3.0  # after the session closed, time to write the last events
CLOSE_TIMEOUT = 5.0  # bound on close_session when the response ends
_NOTHING: list[Item] = []  # (never appended to)


class EventStream:
    """One SSE stream's state: its session, its rooms and the client's position in each.

    :meth:`subscribe` runs before the response starts (it raises HubError for refusals);
    :meth:`respond` writes the response until the session closes; :meth:`close` always runs at
    the end. ``send_timeout``: how long one write may wait for the client (at least two ping
    intervals are allowed).
    """

    __slots__ = ("_current", "_ending", "_late", "_order", "_out", "_park", "_pumping", "_timeout",
                 "_writer", "buffered", "buffered_bytes", "closed_at", "cursor", "garbage",
                 "gone", "hub", "prelude", "presence", "recovered", "resume", "resume_known",
                 "rooms", "send_timeout", "session", "since", "single",
                 "started")  # fmt: skip

    def __init__(
        self,
        hub: Hub,
        session: Session,
        rooms: list[str],
        since: str | None,
        presence: bool,
        *,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.hub = hub
        self.session = session
        self.rooms = rooms
        self.single = len(rooms) == 1  # its blocks are then the same for every subscriber
        self.since = since
        self.presence = presence
        self.send_timeout = send_timeout
        self.cursor = Cursor()
        self.buffered: list[Item] = []
        self.buffered_bytes = 0
        self.prelude: list[Control] = []  # hub.presence events, right after the first block
        self.recovered = True  # every resumed room resumed without loss
        self.resume_known = True  # … and each said so before the response (subscribe)
        self.started = False  # the first block is decided: later subscriptions go on behind it
        self._order: list[str] = []  # the rooms in the order they are subscribed
        self._current: str | None = None  # the room being subscribed
        self._park: asyncio.Future[None] | None = None  # set: the stream starts (subscribe)
        # The subscriptions that go on after the first block (a replay too large to gather).
        self._late: asyncio.Task[None] | None = None
        self.gone = False  # the client went away: nothing more to write
        self.closed_at: float | None = None  # loop time the session closed
        self._timeout: asyncio.Timeout | None = None  # the current wait for the client
        # A held stream (Hubbub's protocol): its connection, writer, and the tasks that run
        # while it writes queued frames and while it ends.
        self._out: ChunkedStream | None = None
        self._writer: _Writer | None = None
        self._pumping: asyncio.Task[None] | None = None
        self._ending: asyncio.Task[None] | None = None
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
            members = result["presence"]
            self.prelude.append(Control.of({"type": "presence", "room": room, "members": members}))
        return result

    async def subscribe(self) -> None:
        """Subscribe every room (live ones first, then the resumed ones) before anything is
        written, so refusals raise the hub's errors (Forbidden, BadRequest, RoomFull,
        Unavailable…). Replays are gathered meanwhile (:meth:`_collect`) up to
        ``HUB_MAX_REPLY_BYTES``; past that the stream starts with what it has and the
        subscriptions go on after the first block (:attr:`_late`), their replays a page at a
        time as the client reads."""
        loop = asyncio.get_running_loop()
        park = self._park = loop.create_future()
        collector = loop.create_task(self._collect())
        order = [r for r in self.rooms if r not in self.resume]
        order += [r for r in self.rooms if r in self.resume]
        rooms = loop.create_task(self._subscribe_rooms(order))
        try:
            await asyncio.wait([rooms, park], return_when=asyncio.FIRST_COMPLETED)
            collector.cancel()
            await asyncio.wait([collector])
        except BaseException:
            collector.cancel()
            rooms.cancel()
            raise
        self.started = True
        if rooms.done():
            rooms.result()  # the hub's refusals
        else:
            self._late = rooms
            last = self._current is not None and self._current == self._order[-1]
            current = self._current_recovered() if last else None
            # The Hubbub-Last-Event-ID header needs every resumed room's answer.
            self.resume_known = current is not None
            self.recovered = self.recovered and bool(current)
        # Rooms not subscribed yet (a replay goes on after the first block, a session closed
        # meanwhile: 4001, a kick) still get their place in the first block: it must carry
        # every resumed room's position, or the client's next Last-Event-ID forgets those rooms
        # and they come back live from their head, skipping what was published meanwhile
        # without a gap.
        cursor = self.cursor
        for room in self.rooms:
            if room in self.resume and room not in cursor.positions:
                cursor.move(room, self._start_position(room, None))
        cursor.order(self.rooms)

    def _current_recovered(self) -> bool | None:
        """Whether the room whose replay goes on after the first block resumed without loss:
        a replay's first frame is its ``gap`` when something is lost, so what was gathered
        tells once it holds anything of that room (None: nothing yet, not known)."""
        room = self._current
        for i in self.buffered:
            if isinstance(i, Publication):
                if i.room == room:
                    return True
            elif i.kind == GAP and i.decoded().get("room") == room:
                return False
        return None

    async def _subscribe_rooms(self, order: list[str]) -> None:
        """Subscribe ``order`` one room at a time. Before the first block a room's position
        there is its start position and a refusal is raised; afterwards a room only learns its
        epoch (its events have moved it on) and a refusal ends the stream with the error's
        close code."""
        cursor = self.cursor
        self._order = order
        session = self.session
        limit = self.hub.settings.max_reply_bytes
        try:
            for room in order:
                if session.closed is not None:
                    return
                self._current = room
                if room in self.resume:
                    # What the rooms before queued is gathered first (or, once the stream
                    # started, written: a replay at a time); past the bound the stream starts.
                    await session.drained()
                    if session.closed is not None:
                        return
                    if not self.started and self.buffered_bytes >= limit:
                        self._start_stream()
                result = await self._subscribe_one(room)
                if not self.started:
                    cursor.move(room, self._start_position(room, result))
                    continue
                pos = cursor.positions[room]
                if pos.epoch is None:  # nothing written for it yet: learn its epoch
                    cursor.move(room, Position(result["epoch"], pos.offset))
                for pre in self.prelude:
                    self.session.offer(pre)
                self.prelude = []
            self._current = None
        except HubError as exc:
            if not self.started:
                raise
            self.session.close(exc.close_code, exc.message)
        except Exception:
            if not self.started:
                raise
            log.exception("late subscribe failed")
            self.session.close(1011, "internal error")

    async def _collect(self) -> None:
        """While the rooms are subscribed (nothing may be written yet), take what the session
        queues (replays wait for that, :meth:`Session.drained`) into :attr:`buffered`; once it
        holds ``HUB_MAX_REPLY_BYTES`` while a resumed room is subscribed (its replay would go
        on), stop gathering and start the stream. A room joined live never waits for this, so
        its head is known before the first block."""
        limit = self.hub.settings.max_reply_bytes
        while batch := await self.session.next_batch():
            self.buffered.extend(batch)
            self.buffered_bytes += sum(len(i.frame) for i in batch)
            if self.buffered_bytes >= limit and self._current in self.resume:
                self._start_stream()
                return

    def _start_stream(self) -> None:
        """Stop gathering: :meth:`subscribe` returns and the response starts."""
        park = self._park
        if park is not None and not park.done():
            park.set_result(None)

    def first_block(self) -> bytes:
        """The ``retry:`` hint and the cursor of every room, then the prelude's events."""
        first = block(retry=self.hub.settings.sse_retry_ms, id_=self.cursor.text()).encode()
        prelude, self.prelude = self.prelude, []
        return first + b"".join(b for b in map(control_block, prelude) if b is not None)

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

    async def wait_for_client(self, aw: Any) -> None:
        """Await one wait on the client (its socket draining, an ASGI send) within the send
        timeout, or within what is left of ``FAREWELL_GRACE`` once the session is closed
        (:meth:`_closed` shortens a wait already running). Raises TimeoutError."""
        if self.closed_at is None:
            patience = max(self.send_timeout, 2 * self.hub.settings.sse_ping_interval)
            when = asyncio.get_running_loop().time() + patience
        else:
            when = self.closed_at + FAREWELL_GRACE
        self._timeout = asyncio.timeout_at(when)
        try:
            async with self._timeout:
                await aw
        finally:
            self._timeout = None

    async def _watch(self, receive: Receive) -> None:
        # Without the direct path nothing else notices a client that goes away.
        while (await receive())["type"] != "http.disconnect":
            pass
        self._lost()

    async def respond(self, scope: Scope, receive: Receive, send: Send,
                      headers: list[tuple[bytes, bytes]]) -> bool:  # fmt: skip
        """Write the response: first block, prelude, replay, live; ends when the session
        closes, with the farewell block when the client is still there.

        On Hubbub's protocol the stream is handed over once started (:meth:`_hold`) and this
        returns True at once: it goes on without this coroutine and closes its session itself.
        Elsewhere it returns False when the response is over (the caller closes the session)."""
        session = self.session
        session.on_close(self._closed)
        if session.closed is not None:
            self._closed(session.closed)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.first_block(), "more_body": True})
        proto = (scope.get("extensions") or {}).get("hubbub.http")
        out = proto.chunked_stream(scope) if isinstance(proto, HttpConnection) else None
        writer = _Writer(self, out, send)
        watcher = None
        loop = asyncio.get_running_loop()
        if out is None:
            watcher = loop.create_task(self._watch(receive))
        else:
            out.on_lost = self._lost
        interval = self.hub.settings.sse_ping_interval
        session.start_heartbeat(interval, 0.0, client_pongs=False)  # PING → ": ping"
        if out is not None:
            self._hold(out, writer)
            return True
        try:
            items, self.buffered = self.buffered, []
            while True:
                if items:
                    written = await writer.write_items(items)
                    items = _NOTHING  # (the batch is not kept while the stream waits)
                    if not written:
                        return False
                arrival = session.arrival()
                if arrival is not None:
                    await arrival
                items = session.take()
                if not items and session.closed is not None:
                    break  # closed, and everything queued before the close is written
            await self._finish(writer)
        except TimeoutError:
            self._timed_out(None)
        finally:
            self._release(writer, None, watcher)
        return False

    # ---- a held stream (Hubbub's protocol) ----------------------------------------------------
    # No task or coroutine while the stream is idle: the fan-out writes through the session's
    # ``direct`` writer; frames the session queues (socket over its high-water mark, replay)
    # are written by a task started by the session's ``waker`` that ends when the queue is
    # empty (:meth:`_pump`); the session's close starts the ending (:meth:`_end_held`).
    def _hold(self, out: ChunkedStream, writer: _Writer) -> None:
        session = self.session
        self._out = out
        self._writer = writer
        out.hold()
        session.waker = self._woken
        items, self.buffered = self.buffered, []
        if not items:
            items = session.take()  # (what the replay queued after the collector stopped)
        if items:
            self._pumping = out.spawn(self._pump(items))
        elif session.closed is None:
            session.direct = writer
        if session.closed is not None:
            self._woken()

    def _woken(self) -> None:
        """``Session.waker`` of a held stream: a frame was queued, or the session closed."""
        out = self._out
        if out is None:
            return
        if self.session.closed is not None:
            if self._ending is None:
                self._ending = out.spawn(self._end_held(out))
        elif self._pumping is None:
            self._pumping = out.spawn(self._pump(_NOTHING))

    async def _pump(self, items: list[Item]) -> None:
        """Write ``items``, then what the session queued, until nothing is queued; then the
        fan-out writes directly again."""
        session = self.session
        writer = self._writer
        assert writer is not None
        try:
            while True:
                if items:
                    written = await writer.write_items(items)
                    items = _NOTHING
                    if not written:
                        self._lost()
                        return
                if session.closed is not None:
                    return
                items = session.take()
                if not items:
                    if writer.direct and session.direct is None:
                        session.direct = writer  # the queue is empty: fan-out may write now
                    return
        except TimeoutError:
            self._timed_out(self._out)
        finally:
            if self._pumping is asyncio.current_task():
                self._pumping = None

    async def _end_held(self, out: ChunkedStream) -> None:
        """The held stream's session closed: what is being written, then the farewell and the
        end of the response, then the session closed in the hub."""
        writer = self._writer
        assert writer is not None
        try:
            pumping = self._pumping
            if pumping is not None:
                await asyncio.wait([pumping])  # bounded by FAREWELL_GRACE (_closed)
            await self._finish(writer)
        except TimeoutError:
            self._timed_out(out)
        except OSError:
            pass  # the client went away mid-write
        finally:
            self.session.waker = None
            self._release(writer, out, None)
            self._out = self._writer = None
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await self.close()

    def _timed_out(self, out: ChunkedStream | None) -> None:
        session = self.session
        if session.closed is None:
            log.info("sse client stopped reading; stream dropped")
            session.close(CLOSE_SLOW, "slow consumer: client stopped reading")
        else:
            log.info("sse client did not take its last events in time; stream dropped")
        if out is not None:
            out.abort()

    def _release(
        self, writer: _Writer, out: ChunkedStream | None, watcher: asyncio.Task[None] | None
    ) -> None:
        self.session.direct = None
        writer.flush()
        writer.detach()
        if out is not None:
            out.detach()
        if watcher is not None:
            watcher.cancel()

    async def _finish(self, writer: _Writer) -> None:
        """The session closed: the farewell block and the end of the response, when the
        client is still there."""
        session = self.session
        session.direct = None
        writer.flush()
        closed = session.closed
        if self.gone or closed is None:
            return
        last = farewell(closed, self.hub.settings.sse_retry_ms).encode()
        if await writer.write_last(last):
            end = {"type": "http.response.body", "body": b"", "more_body": False}
            await self.wait_for_client(writer.send(end))

    async def close(self) -> None:
        if self._late is not None:
            self._late.cancel()
            await asyncio.wait([self._late])
        await self.hub.close_session(self.session)


class _Writer(DirectWriter):
    """An SSE stream's writer (:class:`~hubbub.transports.direct.DirectWriter`): blocks from
    the shared :data:`~hubbub.transports.sse_blocks.blocks` (a one-room stream) or from the
    stream's :class:`~hubbub.transports.sse_blocks.Cursor`; each write one HTTP chunk on the
    :class:`~hubbub.transports.h1.ChunkedStream` ``out``; every wait for the client bounded
    by :meth:`EventStream.wait_for_client`. Without ``out``, blocks go through the ASGI
    ``send`` in pieces of about 64 KiB."""

    TRANSPORT = "sse"
    PLAIN = False
    __slots__ = ("send", "stream")

    def __init__(self, stream: EventStream, out: ChunkedStream | None, send: Send) -> None:
        cache = blocks if stream.single else stream.cursor
        metrics = stream.hub.metrics
        if out is None:
            super().__init__(metrics, cache, None, None)
        else:
            super().__init__(metrics, cache, out.conn.writable, out.write)
        self.stream = stream
        self.send = send

    def frame(self, frames: list[bytes]) -> bytes:
        """Blocks as one HTTP chunk: the client parses one chunk header per write."""
        if len(frames) == 1:
            only = frames[0]
            cache = blocks
            return cache.chunk if only is cache.data else http_chunk(only)
        size = sum(map(len, frames))
        return b"".join([b"%x\r\n" % size, *frames, b"\r\n"])

    async def wait_writable(self) -> None:
        await self.stream.wait_for_client(self.writable.wait())

    async def send_items(self, items: list[Item]) -> bool:
        if self.direct:
            return False  # the direct path refused: the client is gone
        cache = self.cache
        encoded = (cache.data if item is cache.item else cache.encode(item) for item in items)
        return await self._send_blocks([b for b in encoded if b is not None])

    async def write_last(self, data: bytes) -> bool:
        """Write one last block (the farewell) after everything else; False when the client
        is gone."""
        self.flush()
        if not self.direct:
            return await self._send_blocks([data])
        if not self.writable.is_set():
            await self.wait_writable()
        chunk = http_chunk(data)
        self.frames_sent["sse"] += 1
        self.bytes_sent["sse"] += len(chunk)
        return self.sink(chunk)

    async def _send_blocks(self, data: list[bytes]) -> bool:
        self.frames_sent["sse"] += len(data)
        for piece in pieces(data):
            self.bytes_sent["sse"] += len(piece)
            body = {"type": "http.response.body", "body": piece, "more_body": True}
            await self.stream.wait_for_client(self.send(body))
        return True
