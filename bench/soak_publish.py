"""The soak's publishers: ``hubbub bench``'s publications with idempotency keys and retries, over
HTTP (httpx) and over WebSocket (the bench's client wire code, :mod:`hubbub.bench.wire`).

Every acknowledged publish is recorded (room, epoch, offset, key, transport) for
:mod:`hubbub.bench.soak_check`, and so is every publish given up, with its last error.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from typing import Any

import httpx
import orjson

from hubbub.bench.soak_clients import host_port
from hubbub.bench.wire import Subscriber, Tally, payload_maker

RETRY_STATUSES = {429, 500, 502, 503, 504}
OPEN_WITHIN = 3.0  # s: a WebSocket's TCP connect, then again its welcome
REPLY_WITHIN = 4.0  # s: a WebSocket publish's reply
PONG = b'{"type":"pong"}'


class _Retry(Exception):
    """A publish that may be retried with the same idempotency key (the reason is the text)."""


class _Refused(Exception):
    """A publish answered with an error that retrying will not change."""


class _PubConn(Subscriber):
    """One publishing WebSocket connection (the bench subscriber's handshake and frames):
    ``ready`` resolves on ``welcome``; a ``reply`` or ``error`` goes to the future waiting for
    its ``id``; when the connection ends every waiting future fails with :class:`_Retry`."""

    def __init__(self, host: str, port: int, key: str) -> None:
        super().__init__("ws", "hubbub", host, port, "", key, Tally())
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())

    def on_text(self, text: bytes, now: int) -> None:
        f = orjson.loads(text)
        t = f.get("type")
        if not self.ready.done():
            if t == "welcome":
                self.ready.set_result(None)
            else:
                self.ready.set_exception(ConnectionError(f"first frame {t}"))
                self.close()
        elif t == "ping":
            self.send_text(PONG)
        else:
            fut = self.waiting.pop(f.get("id") or 0, None)
            if fut is not None and not fut.done():
                fut.set_result(f)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(_Retry("connection ended"))
        self.waiting.clear()

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class WsLink:
    """One WebSocket connection used to publish, to a random node, made anew after it ends.
    :meth:`publish` returns the reply's result or raises :class:`_Retry` / :class:`_Refused`."""

    def __init__(self, urls: list[str], key: str, rng: random.Random) -> None:
        self.urls, self.api_key, self.rng = urls, key, rng
        self._conn: _PubConn | None = None
        self._lock = asyncio.Lock()
        self._next = 0

    async def _connection(self) -> _PubConn:
        async with self._lock:
            if self._conn is None or not self._conn.usable:
                host, port = host_port(self.rng.choice(self.urls))
                loop = asyncio.get_running_loop()
                try:
                    _, conn = await asyncio.wait_for(
                        loop.create_connection(lambda: _PubConn(host, port, self.api_key),
                                               host, port), OPEN_WITHIN)  # fmt: skip
                except (OSError, TimeoutError) as exc:
                    raise _Retry(f"connect: {type(exc).__name__}") from exc
                try:
                    await asyncio.wait_for(asyncio.shield(conn.ready), OPEN_WITHIN)
                except (ConnectionError, TimeoutError) as exc:
                    conn.abort()
                    raise _Retry(f"no welcome: {exc!r}"[:200]) from exc
                self._conn = conn
            return self._conn

    def _abandon(self, conn: _PubConn) -> None:
        """Forget ``conn``: every publish waiting on it is to be retried."""
        if self._conn is conn:
            self._conn = None
        conn.abort()

    async def publish(self, room: str, data: dict[str, Any], key: str) -> dict[str, Any]:
        conn = await self._connection()
        self._next += 1
        fid = self._next
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        conn.waiting[fid] = fut
        conn.send_text(orjson.dumps({"type": "publish", "id": fid, "room": room, "data": data,
                                     "key": key}))  # fmt: skip
        try:
            f = await asyncio.wait_for(fut, REPLY_WITHIN)
        except TimeoutError as exc:
            self._abandon(conn)  # a stopped node or a stuck broker: go elsewhere
            raise _Retry(f"no reply within {REPLY_WITHIN:g} s") from exc
        finally:
            conn.waiting.pop(fid, None)
        if f.get("type") == "reply":
            return dict(f["result"])
        text = f"{f.get('code')}: {f.get('message')}"
        if f.get("temporary"):
            raise _Retry(text)
        raise _Refused(text)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.abort()
            self._conn = None


class Publisher:
    """Publishes ``hubbub bench``'s publications of about ``size`` bytes
    (:func:`~hubbub.bench.wire.payload_maker`), each with its ``key``, at ``rate``/s across
    ``rooms`` on random nodes: over HTTP, and a ``ws_share`` of them over WebSocket (``links``
    connections, the frame's ``key``). A publish that fails in transit (5xx or 429, a temporary
    error frame, a lost connection, a timeout) is retried with the same idempotency key, on
    another node for HTTP, until ``give_up`` seconds passed. ``acks`` holds the acknowledged ones
    (with ``via``), ``failed`` the others with their last error."""

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
                link.close()

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
