"""The soak's followers, built on ``hubbub bench``'s subscriber protocol
(:class:`hubbub.bench.wire.Subscriber`: the handshake, WebSocket frames, de-chunked SSE events),
logging every client life for :mod:`hubbub.bench.soak_check`.

A :class:`Follower` follows one room or several on one connection, WebSocket or SSE, through
reconnects: whenever its connection ends (or the soak drops it) it connects to a random node and
resumes from its position, WebSocket with ``since`` {epoch, offset} per room, SSE with
``Last-Event-ID`` (a cursor of every room of the stream). Each connection and room is one *life*
in :attr:`Follower.lives`: its node, its resume point (``since``) and, in arrival order, every
``["msg", epoch, offset]``, ``["gap", epoch, from, to]``, ``["start", epoch, offset]`` (the
subscribe reply or the SSE stream's first cursor), a presence member's ``["presence", listed,
members]`` and ``[join|leave, session]``, and frames of rooms it did not ask for (``stray``).

Sockets get a small receive buffer (:data:`RCVBUF`), so a follower that stops reading backs up
into the node's queue rather than into its own kernel. Reading stops with the transport's
``pause_reading``: for a stall (:meth:`Follower.stall`), and for a slow follower after each read
for ``slow`` seconds per frame (or SSE event) it handled. The followers run in
load-generator worker processes (:mod:`hubbub.bench.soak_workers`).
"""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any
from urllib.parse import quote

import orjson

from hubbub.bench.wire import Subscriber, Tally
from hubbub.hub.envelope import parse_cursor

Pos = tuple[str | None, int]
RCVBUF = 8192
CONNECT_WITHIN = 3.0  # s: TCP connect
OPEN_WITHIN = 6.0  # s: from connecting to the welcome (WebSocket) or the 200 (SSE)
SSE_IDLE = 20.0  # s: an SSE stream read from without a byte for this long is given up
PONG = b'{"type":"pong"}'


def host_port(node: str) -> tuple[str, int]:
    """``http://host:port`` → (host, port)."""
    host, _, port = node.removeprefix("http://").partition(":")
    return host, int(port)


async def small_socket(host: str, port: int) -> socket.socket:
    """A socket connected to ``host:port`` with a receive buffer of :data:`RCVBUF` bytes (set
    before connecting, so the kernel does not grow it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), CONNECT_WITHIN)
    except BaseException:
        sock.close()
        raise
    return sock


def _seen(fut: asyncio.Future[Any]) -> None:
    """Done callback: a connection's ``ready`` failing unawaited is no error."""
    if not fut.cancelled():
        fut.exception()


class Follower:
    """One client following ``rooms`` through reconnects (see the module docstring).

    ``pos`` holds each room's last position (last message, gap end or start position); a new
    connection resumes every room from there. ``live``: subscribed to every room on the current
    connection. ``slow`` > 0: seconds of not reading per frame handled. :meth:`stall` stops the
    reading for a while (across reconnects); :meth:`drop` aborts the connection; :meth:`finish`
    ends the follower, marking its open lives ``final`` when live.
    """

    kind = "?"

    def __init__(self, cid: str, rooms: list[str], nodes: list[str], key: str, seed: float,
                 tally: Tally, slow: float = 0.0) -> None:  # fmt: skip
        self.cid, self.rooms, self.nodes, self.key = cid, rooms, nodes, key
        self.rng = random.Random(seed)
        self.tally = tally
        self.slow = slow
        self.lives: list[dict[str, Any]] = []
        self.open: dict[str, dict[str, Any]] = {}  # room -> the life of the current connection
        self.pos: dict[str, Pos] = {}
        self.started: set[str] = set()  # rooms of the current connection that are live
        self.conn: FollowerConn | None = None
        self.stall_until = 0.0  # loop time
        self._life: asyncio.Task[None] | None = None
        self._stop = False

    @property
    def live(self) -> bool:
        return len(self.started) == len(self.rooms)

    def new_lives(self, node: str, **extra: Any) -> None:
        self.open = {}
        self.started = set()
        for room in self.rooms:
            pos = self.pos.get(room)
            life = {"client": self.cid, "life": len(self.lives), "kind": self.kind, "room": room,
                    "node": node, "since": list(pos) if pos else None, "events": [],
                    "final": False, "end": None, **extra}  # fmt: skip
            self.lives.append(life)
            self.open[room] = life

    def end(self, why: str) -> None:
        """Note why the current connection ended (the first reason stays)."""
        for life in self.open.values():
            life["end"] = life["end"] or why

    def start(self, room: str, epoch: str | None, offset: int) -> None:
        self.open[room]["events"].append(["start", epoch, offset])
        if room not in self.started:
            self.started.add(room)
            if self.open[room]["since"] is None:
                self.pos[room] = (epoch, offset)

    def msg(self, room: str, ev: list[Any], epoch: str | None, offset: int) -> None:
        life = self.open.get(room)
        if life is None:  # a room this client did not ask for
            if self.open:
                next(iter(self.open.values()))["events"].append(["stray", room, *ev])
            return
        life["events"].append(ev)
        self.pos[room] = (epoch, offset)

    def stall(self, hold: float) -> bool:
        """Stop reading for ``hold`` seconds; False when already stalled."""
        now = asyncio.get_running_loop().time()
        if now < self.stall_until:
            return False
        self.stall_until = now + hold
        if self.conn is not None:
            self.conn.hold()
        return True

    async def run(self) -> None:
        while not self._stop:
            node = self.rng.choice(self.nodes)
            self._life = asyncio.create_task(self._connect(node))
            try:
                await self._life
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if self._stop or (me is not None and me.cancelling()):
                    self._life.cancel()
                    raise  # run() itself is cancelled (not a drop of one life): end
            except Exception as exc:  # a life ends for any reason: log it and resume
                self.end(repr(exc)[:200])
            self.started = set()
            self.open = {}
            if self._stop:
                return
            await asyncio.sleep(0.05 + 0.25 * self.rng.random())

    async def _connect(self, node: str) -> None:
        host, port = host_port(node)
        sock = await small_socket(host, port)
        conn: FollowerConn | None = None
        try:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(lambda: self.connection(node, host, port),
                                                   sock=sock)  # fmt: skip
            try:
                await asyncio.wait_for(asyncio.shield(conn.ready), OPEN_WITHIN)
            except ConnectionError:
                return  # refused (a status other than 101/200) or closed before opening
            await asyncio.shield(conn.ended)
        finally:
            if conn is None:
                sock.close()
            else:
                conn.abort()
                if self.conn is conn:
                    self.conn = None

    def connection(self, node: str, host: str, port: int) -> FollowerConn:
        raise NotImplementedError

    def drop(self) -> None:
        """End the current connection abruptly; the client resumes elsewhere."""
        if self._life is not None and not self._life.done():
            self.end("dropped by the soak")
            self._life.cancel()

    def finish(self) -> None:
        """End for good; the open lives (if live) are marked final for the checker."""
        self._stop = True
        if self.live:
            for life in self.open.values():
                life["final"] = True
        if self._life is not None:
            self._life.cancel()


class FollowerConn(Subscriber):
    """One connection of a :class:`Follower` (the bench subscriber's handshake and parsing).
    ``ready`` resolves when the stream is open (welcome / 200), ``ended`` when it is closed."""

    def __init__(self, f: Follower, node: str, kind: str, host: str, port: int) -> None:
        super().__init__(kind, "hubbub", host, port, f.rooms[0], f.key, f.tally)
        self.f = f
        self.node = node
        self.loop = asyncio.get_running_loop()
        self.ended: asyncio.Future[None] = self.loop.create_future()
        self.ready.add_done_callback(_seen)
        self.handled = 0  # frames or events handled: a slow reader's debt
        self.slow_until = 0.0
        self.paused = False
        self.last_rx = self.loop.time()
        self._wake: asyncio.TimerHandle | None = None

    @property
    def current(self) -> bool:
        return self.f.conn is self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.f.conn = self
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        before = self.handled
        try:
            super().data_received(data)
        except Exception as exc:  # a frame the follower cannot read: the life ends, saying so
            if self.current:
                self.f.end(f"unreadable: {exc!r}"[:200])
            self.abort()
            return
        n = self.handled - before
        if n and self.f.slow:
            self.slow_until = max(self.slow_until, self.last_rx) + n * self.f.slow
        self.hold()

    def hold(self) -> None:
        """Read on only when the follower is not stalled and a slow one owes no time (from
        the stream's opening on: a connection made during a stall still subscribes)."""
        t = self.transport
        if t is None or t.is_closing() or not self.ready.done():
            return
        now = self.loop.time()
        until = max(self.f.stall_until, self.slow_until)
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        if until > now:
            if not self.paused:
                t.pause_reading()
                self.paused = True
            self._wake = self.loop.call_at(until, self.hold)
        elif self.paused:
            self.paused = False
            self.last_rx = now
            t.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def why(self) -> str:
        """Why the connection ended, for the lives' ``end``."""
        return f"closed {self.closed_code}"

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._wake is not None:
            self._wake.cancel()
        if self.current:
            self.f.end(self.why())
            self.f.conn = None
        if not self.ended.done():
            self.ended.set_result(None)


class WsConn(FollowerConn):
    """WebSocket: on ``welcome`` one ``subscribe`` per room (``since`` its last position,
    ``presence`` for a presence member)."""

    f: WsFollower

    def __init__(self, f: WsFollower, node: str, host: str, port: int) -> None:
        super().__init__(f, node, "ws", host, port)
        self.session: str | None = None

    def on_text(self, text: bytes, now: int) -> None:
        if not self.current:
            return
        self.handled += 1
        f = orjson.loads(text)
        t = f.get("type")
        follower = self.f
        if not self.ready.done():
            if t != "welcome":  # e.g. a draining node's disconnect: go elsewhere
                self.ready.set_exception(ConnectionError(f"first frame {t}"))
                self.close()
                return
            self.session = f.get("session")
            follower.new_lives(self.node, session=self.session)
            for i, room in enumerate(follower.rooms, 1):
                sub: dict[str, Any] = {"type": "subscribe", "id": i, "room": room}
                if room in follower.pos:
                    sub["since"] = {"epoch": follower.pos[room][0], "offset": follower.pos[room][1]}
                if follower.presence:
                    sub["presence"] = True
                self.send_text(orjson.dumps(sub))
            self.ready.set_result(None)
        elif t == "message" and "offset" in f:
            follower.msg(f["room"], ["msg", f["epoch"], f["offset"]], f["epoch"], f["offset"])
        elif t == "gap":
            follower.msg(f["room"], ["gap", f["epoch"], f["from"], f["to"]], f["epoch"], f["to"])
        elif t == "reply" and 1 <= (f.get("id") or 0) <= len(follower.rooms):
            room, r = follower.rooms[f["id"] - 1], f["result"]
            follower.start(room, r["epoch"], r["offset"])
            if follower.presence:
                members = [m.get("session") for m in r.get("presence") or []]
                follower.open[room]["events"].append(["presence", self.session in members,
                                                      len(members)])  # fmt: skip
        elif t in ("join", "leave") and f.get("room") in follower.open:
            follower.open[f["room"]]["events"].append([t, f.get("session")])
        elif t == "error":
            follower.end(f"error {f.get('code')}: {f.get('message')}")
            self.close()
        elif t == "ping":
            self.send_text(PONG)
        elif t == "disconnect":
            follower.end(f"disconnect {f.get('code')}")


class WsFollower(Follower):
    """Follows over WebSocket; with ``presence`` it subscribes as a presence member and logs
    whether the subscribe reply listed its own session and every ``join``/``leave``."""

    kind = "ws"

    def __init__(self, *a: Any, presence: bool = False, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.presence = presence

    def connection(self, node: str, host: str, port: int) -> FollowerConn:
        return WsConn(self, node, host, port)


class SseConn(FollowerConn):
    """SSE: ``/v1/rooms/{room}/events`` for one room, ``/v1/events?room=…`` for several, with
    ``Last-Event-ID`` once the follower has one; a stream silent for :data:`SSE_IDLE` seconds
    while read from is given up."""

    f: SseFollower

    def __init__(self, f: SseFollower, node: str, host: str, port: int) -> None:
        super().__init__(f, node, "sse", host, port)
        self.first = True  # no block with an id yet: the next one carries the start positions
        self.timed_out = False
        self._idle = self.loop.call_later(SSE_IDLE / 4, self._watch)

    def target(self) -> str:
        rooms = self.f.rooms
        if len(rooms) == 1:
            return f"/v1/rooms/{quote(rooms[0], safe='')}/events"
        return "/v1/events?" + "&".join(f"room={quote(r, safe='')}" for r in rooms)

    def extra_headers(self) -> str:
        last = self.f.last_id
        return f"Last-Event-ID: {last}\r\n" if last is not None else ""

    def on_open(self) -> None:
        if self.current:
            self.f.new_lives(self.node)
            self.ready.set_result(None)

    def _watch(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if not self.paused and self.loop.time() - self.last_rx > SSE_IDLE:
            self.timed_out = True
            self.abort()
            return
        self._idle = self.loop.call_later(SSE_IDLE / 4, self._watch)

    def why(self) -> str:
        if self.timed_out:
            return f"no byte for {SSE_IDLE:g} s"
        return "stream ended" if self.closed_code == 0 else f"connection lost ({self.closed_code})"

    def connection_lost(self, exc: Exception | None) -> None:
        self._idle.cancel()
        super().connection_lost(exc)

    def on_sse(self, ev: bytes, now: int) -> None:
        if not self.current:
            return
        self.handled += 1
        block: dict[str, str] = {}
        for line in ev.decode().split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                block[name] = block[name] + "\n" + value if name in block else value
        self._event(block)
        self.first = self.first and "id" not in block

    def _event(self, block: dict[str, str]) -> None:
        follower = self.f
        event = block.get("event", "message")
        if "data" in block and event == "message":
            f = orjson.loads(block["data"])
            follower.msg(f["room"], ["msg", f["epoch"], f["offset"]], f["epoch"], f["offset"])
        elif "data" in block and event == "hub.gap":
            f = orjson.loads(block["data"])
            follower.msg(f["room"], ["gap", f["epoch"], f["from"], f["to"]], f["epoch"], f["to"])
        elif "data" in block and event == "hub.disconnect":
            follower.end(f"hub.disconnect {block['data'][:100]}")
        elif "id" in block and self.first:
            # The first block: the position of every room this stream starts from.
            for room, p in parse_cursor(block["id"], follower.rooms).items():
                follower.start(room, None if p.epoch == "0" else p.epoch, p.offset)
        if "id" in block:
            follower.last_id = block["id"]


class SseFollower(Follower):
    """Follows over SSE; resumes with ``Last-Event-ID`` (the last event id it read)."""

    kind = "sse"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.last_id: str | None = None

    def connection(self, node: str, host: str, port: int) -> FollowerConn:
        return SseConn(self, node, host, port)
