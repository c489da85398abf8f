"""Clients of ``hubbub bench --storm``: WebSocket subscribers that follow a drain to another node.

Each client lives as ``hubbub.js`` does: it subscribes on node A; when A closes it with a
reconnect code (4000-4499) or the connection drops, it waits a full-jitter backoff
(``random(0, min(30 s, 0.5 s * 2^attempt))``) and connects to node B, subscribing with
``since`` = the last position it saw. An ``error`` answer to that subscribe is counted by code and
the subscribe is retried after the same backoff. What a client records: its start offset on A,
every offset delivered after it (unique and duplicate counts), whether the resume said
``recovered: true``, the moment it did (CLOCK_MONOTONIC ns, comparable across the machine's
processes), gaps, errors by code and closes by code.

Workers run in their own processes (``multiprocessing``, spawn) with their own event loop and talk
to the orchestrator over a ``Pipe``: ``("ready", n)`` once every client is live on A, then
``("resumed", n)`` when all of them resumed on B, ``stop`` from the orchestrator, then
``("done", report)``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import orjson

from hubbub.bench.load import _recv, _run, _setup
from hubbub.bench.wire import Subscriber, Tally

BACKOFF_BASE = 0.5  # s, as hubbub.js
BACKOFF_MAX = 30.0


@dataclass
class StormJob:
    index: int
    clients: list[tuple[str, str]]  # (room, token) per client
    a: tuple[str, int]  # (host, port) of the node drained
    b: tuple[str, int]  # of the node the clients move to
    pin: int | None = None
    connect_parallel: int = 64


class Life:
    """One client across its connections."""

    def __init__(self, worker: Worker, room: str, token: str) -> None:
        self.worker = worker
        self.room = room
        self.token = token
        self.epoch = ""
        self.start = -1  # the offset its subscription on A began after
        self.last = 0
        self.uniq = 0
        self.dup = 0
        self.gaps = 0
        self.attempt = 0
        self.moved = False  # connected (or connecting) to B
        self.recovered: bool | None = None
        self.resumed_ns = 0
        self.conn: Conn | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def backoff(self) -> float:
        delay = random.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2**self.attempt))
        self.attempt += 1
        return delay

    def subscribe_frame(self) -> bytes:
        frame: dict[str, Any] = {"type": "subscribe", "room": self.room, "id": 1}
        if self.moved:
            frame["since"] = {"epoch": self.epoch, "offset": self.last}
        return orjson.dumps(frame)

    def on_reply(self, result: dict[str, Any]) -> None:
        if not self.moved:
            self.epoch = str(result["epoch"])
            self.start = self.last = int(result["offset"])
            if not self.ready.done():
                self.ready.set_result(None)
            return
        self.recovered = bool(result.get("recovered"))
        self.resumed_ns = time.monotonic_ns()
        self.attempt = 0
        self.worker.resumed_one()

    def on_message(self, offset: int) -> None:
        if offset > self.last:
            self.last = offset
            self.uniq += 1
        else:
            self.dup += 1

    def on_closed(self, code: int) -> None:
        self.conn = None
        self.worker.closes[code] += 1
        if self.worker.stopping:
            return
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed with {code} before ready on A"))
            return
        if 4500 <= code < 5000 or (code == -1 and self.moved and self.attempt > 8):
            return  # terminal, as hubbub.js: counted, not retried
        self.moved = True
        self.worker.later(self.backoff(), self.connect)

    def connect(self) -> None:
        self.worker.spawn(self._connect())

    async def _connect(self) -> None:
        host, port = self.worker.job.b if self.moved else self.worker.job.a
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: Conn(self, host, port), host, port)
        except OSError:
            self.on_closed(1006)
            return
        self.conn = conn


class Conn(Subscriber):
    """One connection of a :class:`Life` (the frame parsing is the bench subscriber's)."""

    def __init__(self, life: Life, host: str, port: int) -> None:
        super().__init__("ws", "hubbub", host, port, life.room, life.token, life.worker.tally)
        self.life = life
        # Nobody awaits a storm connection's own future; a refused handshake is a close (-1).
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())

    def on_text(self, text: bytes, now: int) -> None:
        life = self.life
        obj = orjson.loads(text)
        kind = obj.get("type")
        if kind == "message":
            life.on_message(int(obj["offset"]))
        elif kind == "welcome":
            self.send_text(life.subscribe_frame())
        elif kind == "reply" and obj.get("id") == 1:
            life.on_reply(obj["result"])
        elif kind == "error" and obj.get("id") == 1:
            life.worker.errors[str(obj.get("code"))] += 1
            life.worker.later(life.backoff(), lambda: self.send_text(life.subscribe_frame()))
        elif kind == "gap":
            life.gaps += 1
        elif kind == "ping":
            self.send_text(b'{"type":"pong"}')

    def connection_lost(self, exc: Exception | None) -> None:
        code = self.closed_code
        if not self.ready.done():
            self.ready.set_result(None)
        self.life.on_closed(1006 if code is None else code)


class Worker:
    def __init__(self, job: StormJob) -> None:
        self.job = job
        self.tally = Tally()
        self.errors: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()
        self.stopping = False
        self.resumed = 0
        self.all_resumed = asyncio.get_running_loop().create_future()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.lives = [Life(self, room, token) for room, token in job.clients]

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def later(self, delay: float, fn: Any) -> None:
        asyncio.get_running_loop().call_later(delay, fn)

    def resumed_one(self) -> None:
        self.resumed += 1
        if self.resumed == len(self.lives) and not self.all_resumed.done():
            self.all_resumed.set_result(None)

    async def open_all(self) -> None:
        gate = asyncio.Semaphore(self.job.connect_parallel)

        async def one(life: Life) -> None:
            async with gate:
                life.connect()
                await life.ready

        await asyncio.gather(*(one(life) for life in self.lives))

    def report(self) -> dict[str, Any]:
        return {
            "clients": [
                (x.room, x.start, x.uniq, x.dup, x.gaps, x.recovered, x.resumed_ns)
                for x in self.lives
            ],
            "errors": dict(self.errors),
            "closes": {str(k): v for k, v in self.closes.items()},
        }


def storm_worker(job: StormJob, conn: Connection) -> None:
    _setup(job.pin)
    _run(_main(job, conn))


async def _main(job: StormJob, conn: Connection) -> None:
    w = Worker(job)
    await w.open_all()
    conn.send(("ready", len(w.lives)))
    waiter = asyncio.ensure_future(_recv(conn))
    done, _ = await asyncio.wait({waiter, w.all_resumed}, return_when=asyncio.FIRST_COMPLETED)
    if w.all_resumed in done:
        conn.send(("resumed", w.resumed))
        msg = await waiter
    else:
        msg = waiter.result()
    assert msg == "stop", msg
    w.stopping = True
    conn.send(("done", w.report()))
    for life in w.lives:
        if life.conn is not None:
            life.conn.close()
