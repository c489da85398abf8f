"""Load-generator processes for ``hubbub bench``: subscriber workers and the publisher.

Each runs in its own process (``multiprocessing``, spawn) with its own event loop (uvloop when
installed) and talks to the orchestrator over a ``Pipe``: ``("ready", …)`` once connected, then
``go`` and ``stop`` from the orchestrator, then ``("done", …)`` with what it counted. Subscriber
workers publish their running delivery count in a shared array, which is how the publisher's
closed loop (``--rate 0``) keeps a bounded number of publications in flight without a reply
from the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson

from hubbub.bench.wire import Subscriber, Tally, open_subscriber, payload_maker, summary


def _setup(pin: int | None) -> None:
    if pin is not None:
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setaffinity(0, {pin})


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(coro)


async def _recv(conn: Connection) -> Any:
    """Wait for the next pipe message without blocking the event loop."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(conn.fileno(), readable)
    try:
        await fut
    finally:
        loop.remove_reader(conn.fileno())
        os.set_blocking(conn.fileno(), True)  # uvloop's add_reader made it non-blocking
    return conn.recv()


# ---- subscribers -------------------------------------------------------------------------------
@dataclass
class WorkerJob:
    index: int
    assignments: list[tuple[str, int, str]]  # (host, port, room) per subscriber
    kind: str  # ws | sse
    dialect: str
    key: str
    pin: int | None = None
    connect_parallel: int = 64


def subscriber_worker(job: WorkerJob, progress: Any, conn: Connection) -> None:
    _setup(job.pin)
    _run(_subscriber_main(job, progress, conn))


async def _subscriber_main(job: WorkerJob, progress: Any, conn: Connection) -> None:
    idx = job.index

    def on_progress(n: int) -> None:
        progress[idx] = n

    tally = Tally(on_progress)
    subs: list[Subscriber] = []
    gate = asyncio.Semaphore(job.connect_parallel)

    async def one(host: str, port: int, room: str) -> None:
        async with gate:
            s = await open_subscriber(job.kind, job.dialect, host, port, room, job.key, tally)
            subs.append(s)
            await asyncio.wait_for(s.ready, 60)

    t_open = time.monotonic()
    results = await asyncio.gather(*(one(*a) for a in job.assignments), return_exceptions=True)
    opened_s = time.monotonic() - t_open  # handshake plus subscribe, every connection
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    conn.send(("ready", len(job.assignments) - len(errors), errors[:3], opened_s))
    await _recv(conn)  # go
    cpu0, t0 = time.process_time(), time.monotonic()
    await _recv(conn)  # stop
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    conn.send(("done", summary(subs), tally.latencies_us.tobytes(), tally.deliveries,
               tally.last_at, cpu, wall))  # fmt: skip
    for s in subs:
        s.close()
    await asyncio.sleep(0.1)


# ---- publisher ---------------------------------------------------------------------------------
@dataclass
class PublishJob:
    targets: list[tuple[str, int]]
    rooms: list[str]
    room_sizes: dict[str, int]
    mode: str  # http | ws
    dialect: str
    key: str
    rate: float  # publications per second; 0: as fast as the closed loop allows
    duration: float
    size: int
    window: int  # closed loop: at most this many publications in flight per subscriber (average)
    connections: int = 4
    pin: int | None = None


@dataclass
class _PubState:
    finals: dict[str, int] = field(default_factory=dict)
    seqs: dict[str, int] = field(default_factory=dict)
    published: int = 0
    acked: int = 0
    errors: list[str] = field(default_factory=list)
    expected: int = 0
    behind: int = 0


def publisher(job: PublishJob, progress: Any, conn: Connection) -> None:
    _setup(job.pin)
    _run(_publisher_main(job, progress, conn))


async def _publisher_main(job: PublishJob, progress: Any, conn: Connection) -> None:
    st = _PubState(seqs=dict.fromkeys(job.rooms, 0))
    make = payload_maker(job.size)
    sender = await (_http_sender if job.mode == "http" else _ws_sender)(job, st, make)
    conn.send(("ready", 1, []))
    await _recv(conn)  # go
    total_subs = max(1, sum(job.room_sizes.values()))
    limit = job.window * total_subs
    cpu0, t0 = time.process_time(), time.monotonic()
    first_at = time.monotonic_ns()
    end = t0 + job.duration
    i = 0
    n_rooms = len(job.rooms)
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if job.rate > 0:
            due = t0 + i / job.rate
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 0.05:
                st.behind += 1
        else:
            while st.expected - sum(progress) > limit and time.monotonic() < end:
                # 1 ms: libuv's timer resolution; uvloop rounds a shorter sleep to 0 ms, which
                # made this wait a busy spin holding a third of the load generator's core.
                await asyncio.sleep(0.001)
            if time.monotonic() >= end:
                break
        room = job.rooms[i % n_rooms]
        i += 1
        st.seqs[room] += 1
        st.expected += job.room_sizes.get(room, 0)
        await sender.send(room, st.seqs[room])
        st.published += 1
    await sender.finish()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    if job.dialect != "hubbub":
        st.finals = {r: s for r, s in st.seqs.items() if s}
    conn.send(("done", st.published, st.finals, first_at, cpu, wall, st.errors[:5], st.behind))
    await _recv(conn)  # stop
    await sender.close()


class _Sender:
    async def send(self, room: str, seq: int) -> None:
        raise NotImplementedError

    async def finish(self) -> None:
        """Wait for outstanding replies (bounded)."""

    async def close(self) -> None:
        pass


async def _http_sender(job: PublishJob, st: _PubState, make: Callable[..., Any]) -> _Sender:
    """POST /v1/rooms/{room}/messages over keep-alive connections, one request in flight each.

    Connections open at the first request (an idle keep-alive connection would be closed by the
    server while the subscribers connect) and reopen once when the server closed them."""
    queue: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue(maxsize=job.connections)
    writers: list[asyncio.StreamWriter] = []

    async def post(host: str, port: int, conn: list[Any], room: str, seq: int) -> None:
        if not conn:
            conn[:] = await asyncio.open_connection(host, port)
            writers.append(conn[1])
        reader, writer = conn
        head = (f"Host: {host}:{port}\r\nAuthorization: Bearer {job.key}\r\n"
                "Content-Type: application/json\r\n").encode()  # fmt: skip
        body = orjson.dumps({"data": make(seq, room)})
        writer.write(b"POST /v1/rooms/%s/messages HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s"
                     % (room.encode(), head, len(body), body))  # fmt: skip
        raw = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in raw.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        reply = await reader.readexactly(length)
        if raw.startswith(b"HTTP/1.1 201"):
            st.acked += 1
            off = int(orjson.loads(reply)["offset"])
            if off > st.finals.get(room, 0):
                st.finals[room] = off
        elif len(st.errors) < 5:
            st.errors.append(raw.split(b"\r\n", 1)[0].decode() + " " + reply[:200].decode())

    async def pump(host: str, port: int) -> None:
        conn: list[Any] = []
        while (item := await queue.get()) is not None:
            try:
                await post(host, port, conn, *item)
            except (OSError, asyncio.IncompleteReadError):
                conn.clear()  # closed by the server: reconnect and retry once
                try:
                    await post(host, port, conn, *item)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    conn.clear()
                    if len(st.errors) < 5:
                        st.errors.append(f"POST failed: {exc!r}")

    tasks = [asyncio.create_task(pump(*job.targets[i % len(job.targets)]))
             for i in range(job.connections)]  # fmt: skip

    class Http(_Sender):
        async def send(self, room: str, seq: int) -> None:
            await queue.put((room, seq))

        async def finish(self) -> None:
            for _ in tasks:
                await queue.put(None)
            await asyncio.wait(tasks, timeout=30)

        async def close(self) -> None:
            for w in writers:
                w.close()

    return Http()


async def _ws_sender(job: PublishJob, st: _PubState, make: Callable[..., Any]) -> _Sender:
    """Publish over one WebSocket: hubbub ``publish`` frames (at most 64 unanswered), or the
    reference servers' publisher endpoints."""
    from websockets.asyncio.client import connect

    host, port = job.targets[0]
    headers = {"Authorization": f"Bearer {job.key}"} if job.key else {}
    path = {"hubbub": "/v1/ws", "plain": "/pub",
            "socketio": "/socket.io/?EIO=4&transport=websocket"}[job.dialect]  # fmt: skip
    ws = await connect(f"ws://{host}:{port}{path}", additional_headers=headers,
                       compression=None, max_size=None)  # fmt: skip
    credit = asyncio.Semaphore(64)
    ids: dict[int, str] = {}
    if job.dialect == "hubbub":
        await ws.recv()  # welcome
    elif job.dialect == "socketio":
        await ws.recv()  # 0{…}
        await ws.send("40")
        await ws.recv()  # 40…

    async def read() -> None:
        async for msg in ws:
            if job.dialect == "socketio":
                if msg == "2":
                    await ws.send("3")
                continue
            if job.dialect != "hubbub":
                continue
            obj = orjson.loads(msg)
            if obj.get("type") == "ping":  # PROTOCOL §3 heartbeat: else 4002 while we wait
                await ws.send('{"type":"pong"}')
                continue
            if obj.get("type") not in ("reply", "error"):
                continue
            room = ids.pop(obj.get("id") or 0, "")
            credit.release()
            if obj["type"] == "reply":
                st.acked += 1
                off = int(obj["result"]["offset"])
                if off > st.finals.get(room, 0):
                    st.finals[room] = off
            elif len(st.errors) < 5:
                st.errors.append(str(msg)[:200])

    reader = asyncio.create_task(read())
    counter = iter(range(1, 1 << 62))

    class Ws(_Sender):
        async def send(self, room: str, seq: int) -> None:
            data = make(seq, room)
            if job.dialect == "hubbub":
                await credit.acquire()
                fid = next(counter)
                ids[fid] = room
                await ws.send(orjson.dumps({"type": "publish", "room": room, "data": data,
                                            "id": fid}).decode())  # fmt: skip
            elif job.dialect == "plain":
                await ws.send(orjson.dumps(data).decode())
            else:
                await ws.send("42" + orjson.dumps(["pub", data]).decode())

        async def finish(self) -> None:
            deadline = time.monotonic() + 30
            while ids and time.monotonic() < deadline:
                await asyncio.sleep(0.01)

        async def close(self) -> None:
            reader.cancel()
            await ws.close()

    return Ws()
