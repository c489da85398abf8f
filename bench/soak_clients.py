"""The soak's load: HTTP publishers with idempotency keys, and WebSocket / SSE followers that
log every client life (one connection) for :mod:`hubbub.bench.soak_check`.

A follower reconnects to a random node whenever its connection ends (or the soak drops it) and
resumes from its position: WebSocket with ``since`` {epoch, offset}, SSE with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
from collections import Counter
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import connect

from hubbub.bench.wire import payload_maker
from hubbub.hub.envelope import parse_cursor

Pos = tuple[str | None, int]
RETRY_STATUSES = {429, 500, 502, 503, 504}


class _Retry(Exception):
    """A publish that may be retried with the same idempotency key (the reason is the text)."""


class _Refused(Exception):
    """A publish answered with an error that retrying will not change."""


class WsLink:
    """One WebSocket connection used to publish, to a random node, made anew after it ends.
    :meth:`publish` returns the reply's result or raises :class:`_Retry` / :class:`_Refused`."""

    def __init__(self, urls: list[str], key: str, rng: random.Random) -> None:
        self.urls, self.api_key, self.rng = urls, key, rng
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._closing: set[asyncio.Future[None]] = set()
        self._next = 0

    async def _connection(self) -> Any:
        async with self._lock:
            if self._ws is None:
                url = self.rng.choice(self.urls).replace("http://", "ws://") + "/v1/ws"
                hdrs = {"Authorization": f"Bearer {self.api_key}"}
                try:
                    ws = await connect(url, additional_headers=hdrs, open_timeout=3,
                                       ping_interval=None, close_timeout=1)  # fmt: skip
                except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                    raise _Retry(f"connect: {type(exc).__name__}") from exc
                try:
                    first = json.loads(await asyncio.wait_for(ws.recv(), 3))
                except (TimeoutError, websockets.ConnectionClosed) as exc:
                    await ws.close()
                    raise _Retry("no welcome") from exc
                if first.get("type") != "welcome":
                    await ws.close()
                    raise _Retry(f"first frame {first.get('type')}")
                self._ws = ws
                self._reader = asyncio.create_task(self._read(ws))
            return self._ws

    async def _read(self, ws: Any) -> None:
        try:
            async for raw in ws:
                f = json.loads(raw)
                fut = self._pending.pop(f.get("id") or 0, None)
                if fut is not None and not fut.done():
                    fut.set_result(f)
                elif f.get("type") == "ping":
                    await ws.send('{"type":"pong"}')
        except websockets.ConnectionClosed:
            pass
        finally:
            self._abandon(ws)

    def _abandon(self, ws: Any) -> None:
        """Forget ``ws``: every publish waiting on it is to be retried."""
        if self._ws is ws:
            self._ws = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(_Retry("connection ended"))
        self._pending.clear()
        t = asyncio.ensure_future(ws.close())
        self._closing.add(t)
        t.add_done_callback(self._closing.discard)

    async def publish(self, room: str, data: dict[str, Any], key: str) -> dict[str, Any]:
        ws = await self._connection()
        self._next += 1
        fid = self._next
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[fid] = fut
        frame = {"type": "publish", "id": fid, "room": room, "data": data, "key": key}
        try:
            await ws.send(json.dumps(frame))
            f = await asyncio.wait_for(fut, 4.0)
        except websockets.ConnectionClosed as exc:
            self._abandon(ws)
            raise _Retry("connection ended") from exc
        except TimeoutError as exc:
            self._abandon(ws)  # a stopped node or a stuck broker: go elsewhere
            raise _Retry("no reply within 4 s") from exc
        finally:
            self._pending.pop(fid, None)
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()  # failed while the frame was being sent: seen, not awaited
        if f.get("type") == "reply":
            return dict(f["result"])
        text = f"{f.get('code')}: {f.get('message')}"
        if f.get("temporary"):
            raise _Retry(text)
        raise _Refused(text)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._ws is not None:
            await self._ws.close()


class Publisher:
    """Publishes ``hubbub bench``'s publications of about ``size`` bytes
    (:func:`~hubbub.bench.wire.payload_maker`), each with its ``key``, at ``rate``/s across ``rooms`` on random nodes: over HTTP,
    and a ``ws_share`` of them over WebSocket (``links`` connections, the frame's ``key``). A
    publish that fails in transit (5xx or a temporary error frame, a lost connection, a
    timeout) is retried with the same idempotency key, on another node for HTTP, until
    ``give_up`` seconds passed. ``acks`` holds the acknowledged ones (with ``via``), ``failed``
    the others with their last error."""

    def __init__(self, urls: list[str], key: str, rooms: list[str], rate: float, seed: int,
                 ws_share: float = 0.3, links: int = 2, size: int = 0):  # fmt: skip
        self.urls, self.api_key, self.rooms, self.rate = urls, key, rooms, rate
        self.rng = random.Random(seed ^ 0x5EED)
        self.ws_share = ws_share
        self.make = payload_maker(size)
        self.links = [WsLink(urls, key, random.Random(self.rng.random())) for _ in range(links)]
        self.acks: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.retries = 0
        self.sent = 0
        self.by_transport: Counter[str] = Counter()
        self.give_up = 20.0
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, until: asyncio.Event) -> None:
        """Publish until ``until`` is set, then wait for the publishes in flight."""
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as c:
                t0, n = time.monotonic(), 0
                while not until.is_set():
                    room = self.rng.choice(self.rooms)
                    via = "ws" if self.links and self.rng.random() < self.ws_share else "http"
                    t = asyncio.create_task(self._one(c, room, n, via))
                    self._tasks.add(t)
                    t.add_done_callback(self._tasks.discard)
                    n += 1
                    self.sent = n
                    self.by_transport[via] += 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            until.wait(), max(0.0, t0 + n / self.rate - time.monotonic())
                        )
                if self._tasks:
                    await asyncio.gather(*self._tasks)
        finally:
            for t in self._tasks:  # cancelled: nothing may outlive the HTTP client
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for link in self.links:
                with contextlib.suppress(Exception):
                    await link.close()

    async def _http(self, c: httpx.AsyncClient, room: str, data: dict[str, Any],
                    key: str) -> dict[str, Any]:  # fmt: skip
        url = f"{self.rng.choice(self.urls)}/v1/rooms/{room}/messages"
        headers = {"Authorization": f"Bearer {self.api_key}", "Idempotency-Key": key}
        try:
            r = await c.post(url, json={"data": data}, headers=headers)
        except httpx.HTTPError as exc:
            raise _Retry(type(exc).__name__) from exc
        if r.status_code == 201:
            return dict(r.json())
        text = f"{r.status_code} {r.text[:200]}"
        raise (_Retry if r.status_code in RETRY_STATUSES else _Refused)(text)

    async def _one(self, c: httpx.AsyncClient, room: str, n: int, via: str) -> None:
        key = f"soak-{n}"
        data = {**self.make(n, room), "key": key}
        link = self.links[n % len(self.links)] if via == "ws" else None
        deadline = time.monotonic() + self.give_up
        last = ""
        while time.monotonic() < deadline:
            try:
                if link is not None:
                    b = await link.publish(room, data, key)
                else:
                    b = await self._http(c, room, data, key)
            except _Refused as exc:
                last = str(exc)
                break
            except _Retry as exc:
                last = str(exc)
            else:
                self.acks.append({"room": room, "epoch": b["epoch"], "offset": b["offset"],
                                  "key": key, "via": via})  # fmt: skip
                return
            self.retries += 1
            await asyncio.sleep(0.05 + 0.1 * self.rng.random())
        self.failed.append({"room": room, "key": key, "via": via, "last": last})


class Follower:
    """One client following ``rooms`` (one or several, on one connection) through reconnects.

    ``lives`` is its log: one life per connection and room, so the checker reads each room of a
    connection on its own. ``pos`` holds the last position of each room (last message, gap end
    or start position); a new connection resumes every room from there.

    ``slow`` > 0: the client sleeps that long after each frame (a slow consumer that keeps up
    with a modest rate). :meth:`stall` makes it stop reading for a while (the server's queue and
    the socket buffers fill; the server may end the session with 4001 and the client resumes).
    """

    kind = "?"

    def __init__(self, cid: str, rooms: list[str], urls: list[str], key: str,
                 rng: random.Random, slow: float = 0.0):  # fmt: skip
        self.cid, self.rooms, self.urls, self.api_key, self.rng = cid, rooms, urls, key, rng
        self.slow = slow
        self.lives: list[dict[str, Any]] = []
        self.open: dict[str, dict[str, Any]] = {}  # room -> the life of the current connection
        self.pos: dict[str, Pos] = {}
        self.started: set[str] = set()  # rooms of the current connection that are live
        self.stalls = 0
        self._life: asyncio.Task[None] | None = None
        self._stop = False
        self._reading = asyncio.Event()
        self._reading.set()

    @property
    def live(self) -> bool:
        """Subscribed to every room on the current connection, and reading."""
        return len(self.started) == len(self.rooms)

    def _new_lives(self, node: str, **extra: Any) -> None:
        self.open = {}
        self.started = set()
        for room in self.rooms:
            pos = self.pos.get(room)
            life = {"client": self.cid, "life": len(self.lives), "kind": self.kind, "room": room,
                    "node": node, "since": list(pos) if pos else None, "events": [],
                    "final": False, "end": None, **extra}  # fmt: skip
            self.lives.append(life)
            self.open[room] = life

    def _end(self, why: str) -> None:
        """Note why the current connection ended (the first reason stays)."""
        for life in self.open.values():
            life["end"] = life["end"] or why

    def _start(self, room: str, epoch: str | None, offset: int) -> None:
        self.open[room]["events"].append(["start", epoch, offset])
        if room not in self.started:
            self.started.add(room)
            if self.open[room]["since"] is None:
                self.pos[room] = (epoch, offset)

    def stall(self, hold: float) -> bool:
        """Stop reading for ``hold`` seconds; False when already stalled."""
        if not self._reading.is_set():
            return False
        self.stalls += 1
        self._reading.clear()
        asyncio.get_running_loop().call_later(hold, self._reading.set)
        return True

    async def _pace(self) -> None:
        """Called after each frame read: waits out a stall, then the slow client's delay."""
        if not self._reading.is_set():
            await self._reading.wait()
        if self.slow:
            await asyncio.sleep(self.slow)

    async def run(self) -> None:
        while not self._stop:
            node = self.rng.choice(self.urls)
            self._life = asyncio.create_task(self._connect(node))
            try:
                await self._life
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if self._stop or (me is not None and me.cancelling()):
                    self._life.cancel()
                    raise  # run() itself is cancelled (not a drop of one life): end
            except Exception as exc:  # a life ends for any reason: log it and resume
                self._end(repr(exc)[:200])
            self.started = set()
            self.open = {}
            if self._stop:
                return
            await asyncio.sleep(0.05 + 0.25 * self.rng.random())

    def drop(self) -> None:
        """End the current connection abruptly; the client resumes elsewhere."""
        if self._life is not None and not self._life.done():
            self._end("dropped by the soak")
            self._life.cancel()

    def finish(self) -> None:
        """End for good; the open lives (if live) are marked final for the checker."""
        self._stop = True
        self._reading.set()
        if self.live:
            for life in self.open.values():
                life["final"] = True
        if self._life is not None:
            self._life.cancel()

    def _msg(self, room: str, ev: list[Any], epoch: str | None, offset: int) -> None:
        life = self.open.get(room)
        if life is None:  # a room this client did not ask for
            life = next(iter(self.open.values()))
            life["events"].append(["stray", room, *ev])
            return
        life["events"].append(ev)
        self.pos[room] = (epoch, offset)

    async def _connect(self, node: str) -> None:
        raise NotImplementedError


RCVBUF = 8192


async def _small_socket(node: str) -> socket.socket:
    """A connected socket to ``node`` with a small receive buffer (set before connecting, so
    the kernel does not grow it): a client that stops reading backs up into the server's
    queue within seconds instead of into megabytes of loopback buffers."""
    host, _, port = node.removeprefix("http://").partition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, int(port))), 3)
    except BaseException:
        sock.close()
        raise
    return sock


class WsFollower(Follower):
    """Follows over WebSocket (one ``subscribe`` per room, ``since`` its last position); with
    ``presence`` it subscribes as a presence member and logs whether the subscribe reply listed
    its own session (``["presence", listed, members]``) and every ``join``/``leave`` it gets."""

    kind = "ws"

    def __init__(self, *a: Any, presence: bool = False, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.presence = presence

    async def _connect(self, node: str) -> None:
        url = node.replace("http://", "ws://") + "/v1/ws"
        hdrs = {"Authorization": f"Bearer {self.api_key}"}
        sock = await _small_socket(node)
        async with connect(url, additional_headers=hdrs, open_timeout=3, ping_interval=None,
                           close_timeout=1, max_size=None, max_queue=4, sock=sock) as ws:  # fmt: skip
            first = json.loads(await asyncio.wait_for(ws.recv(), 3))
            if first.get("type") != "welcome":
                return  # e.g. a draining node's disconnect: go elsewhere
            session = first.get("session")
            self._new_lives(node, session=session)
            for i, room in enumerate(self.rooms, 1):
                sub: dict[str, Any] = {"type": "subscribe", "id": i, "room": room}
                if room in self.pos:
                    sub["since"] = {"epoch": self.pos[room][0], "offset": self.pos[room][1]}
                if self.presence:
                    sub["presence"] = True
                await ws.send(json.dumps(sub))
            try:
                async for raw in ws:
                    await self._pace()
                    f = json.loads(raw)
                    t = f.get("type")
                    if t == "message" and "offset" in f:
                        self._msg(f["room"], ["msg", f["epoch"], f["offset"]], f["epoch"],
                                  f["offset"])  # fmt: skip
                    elif t == "gap":
                        self._msg(f["room"], ["gap", f["epoch"], f["from"], f["to"]], f["epoch"],
                                  f["to"])  # fmt: skip
                    elif t == "reply" and 1 <= (f.get("id") or 0) <= len(self.rooms):
                        room, r = self.rooms[f["id"] - 1], f["result"]
                        self._start(room, r["epoch"], r["offset"])
                        if self.presence:
                            members = [m.get("session") for m in r.get("presence") or []]
                            self.open[room]["events"].append(["presence", session in members,
                                                              len(members)])  # fmt: skip
                    elif t in ("join", "leave") and f.get("room") in self.open:
                        self.open[f["room"]]["events"].append([t, f.get("session")])
                    elif t == "error":
                        self._end(f"error {f.get('code')}: {f.get('message')}")
                        return
                    elif t == "ping":
                        await ws.send('{"type":"pong"}')
                    elif t == "disconnect":
                        self._end(f"disconnect {f.get('code')}")
            except websockets.ConnectionClosed:
                pass
            self._end(f"closed {ws.close_code}")


class SseFollower(Follower):
    """Follows over SSE: ``/v1/rooms/{room}/events`` for one room, ``/v1/events?room=…`` for
    several; resumes with ``Last-Event-ID`` (a cursor of every room of the stream)."""

    kind = "sse"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.last_id: str | None = None

    async def _connect(self, node: str) -> None:
        hdrs = {"Authorization": f"Bearer {self.api_key}"}
        if self.last_id is not None:
            hdrs["Last-Event-ID"] = self.last_id
        params: dict[str, list[str]] = {}
        if len(self.rooms) == 1:
            url = f"{node}/v1/rooms/{self.rooms[0]}/events"
        else:
            url, params = f"{node}/v1/events", {"room": self.rooms}
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(3.0, read=20.0)) as h,
            h.stream("GET", url, headers=hdrs, params=params) as resp,
        ):
            if resp.status_code != 200:
                return
            self._new_lives(node)
            first = True
            block: dict[str, str] = {}
            async for line in resp.aiter_lines():
                if line == "":
                    await self._pace()
                    self._event(block, first)
                    first = first and "id" not in block
                    block = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    block[name] = block[name] + "\n" + value if name in block else value
            self._end("stream ended")

    def _event(self, block: dict[str, str], first: bool) -> None:
        event = block.get("event", "message")
        if "data" in block and event == "message":
            f = json.loads(block["data"])
            self._msg(f["room"], ["msg", f["epoch"], f["offset"]], f["epoch"], f["offset"])
        elif "data" in block and event == "hub.gap":
            f = json.loads(block["data"])
            self._msg(f["room"], ["gap", f["epoch"], f["from"], f["to"]], f["epoch"], f["to"])
        elif "data" in block and event == "hub.disconnect":
            self._end(f"hub.disconnect {block['data'][:100]}")
        elif "id" in block and first:
            # The first block: the position of every room this stream starts from.
            for room, p in parse_cursor(block["id"], self.rooms).items():
                self._start(room, None if p.epoch == "0" else p.epoch, p.offset)
        if "id" in block:
            self.last_id = block["id"]
