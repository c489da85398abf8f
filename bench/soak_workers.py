"""The soak's followers spread over load-generator worker processes, as ``hubbub bench`` runs
its subscribers (:mod:`hubbub.bench.load`): each worker is its own process (``multiprocessing``,
spawn) with its own event loop (uvloop when installed) and runs the
:class:`~hubbub.bench.soak_clients.Follower` objects of its share of the clients.

The soak drives them through :class:`Crowd` over one ``Pipe`` per worker. A worker says
``(0, "up")`` once its followers run, then answers each request ``(rid, command, *args)``
with ``(rid, result)``:

* ``("settle", head, within)``: wait until every follower is live at ``head`` (room →
  ``[epoch, offset]``, the rooms' last acknowledged positions) or ``within`` seconds: True/False;
* ``("drop", cids)``: abort those followers' connections (they resume): how many;
* ``("stall", cids, hold)``: stop them reading for ``hold`` seconds: how many were not stalled;
* ``("finish",)``: end every follower (open lives that are live become ``final``): the lives of
  each follower, in the job's order; the worker then exits.

Workers ignore SIGINT (the soak ends them, by pid, when it stops).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from hubbub.bench.load import _recv, _run
from hubbub.bench.soak_clients import Follower, SseFollower, WsFollower
from hubbub.bench.soak_faults import SoakError
from hubbub.bench.wire import Tally

Lives = list[dict[str, Any]]


@dataclass(frozen=True)
class FollowerSpec:
    """One follower: ``kind`` ws or sse, ``seed`` of its own choices (nodes, pauses)."""

    cid: str
    kind: str
    rooms: list[str]
    seed: float
    slow: float = 0.0
    presence: bool = False


@dataclass
class FollowerJob:
    index: int
    specs: list[FollowerSpec]
    nodes: list[str]  # http://127.0.0.1:port of each node
    key: str


def _follower(spec: FollowerSpec, job: FollowerJob, tally: Tally) -> Follower:
    args = (spec.cid, spec.rooms, job.nodes, job.key, spec.seed, tally)
    if spec.kind == "sse":
        return SseFollower(*args, slow=spec.slow)
    return WsFollower(*args, slow=spec.slow, presence=spec.presence)


async def settle(followers: list[Follower], head: dict[str, list[Any]], within: float) -> bool:
    """Wait until every follower is live and, in each of its rooms named in ``head``, at that
    epoch and at or past that offset; False after ``within`` seconds."""

    def there(f: Follower, room: str) -> bool:
        if room not in head:
            return True
        e, o = f.pos.get(room, (None, -1))
        return bool(e == head[room][0] and o >= head[room][1])

    deadline = time.monotonic() + within
    while True:
        if all(f.live and all(there(f, r) for r in f.rooms) for f in followers):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)


def follower_worker(job: FollowerJob, conn: Connection) -> None:
    """A worker process's entry point."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _run(_worker_main(job, conn))


async def _worker_main(job: FollowerJob, conn: Connection) -> None:
    tally = Tally()
    followers = [_follower(s, job, tally) for s in job.specs]
    by_cid = {f.cid: f for f in followers}
    runs = [asyncio.create_task(f.run()) for f in followers]
    pending: set[asyncio.Task[None]] = set()
    conn.send((0, "up"))

    async def settled(rid: int, head: dict[str, list[Any]], within: float) -> None:
        conn.send((rid, await settle(followers, head, within)))

    while True:
        rid, cmd, *args = await _recv(conn)
        if cmd == "settle":
            t = asyncio.create_task(settled(rid, *args))
            pending.add(t)
            t.add_done_callback(pending.discard)
        elif cmd == "drop":
            for cid in args[0]:
                by_cid[cid].drop()
            conn.send((rid, len(args[0])))
        elif cmd == "stall":
            conn.send((rid, sum(by_cid[cid].stall(args[1]) for cid in args[0])))
        elif cmd == "finish":
            for f in followers:
                f.finish()
            await asyncio.gather(*runs, return_exceptions=True)
            conn.send((rid, [f.lives for f in followers]))
            return
        else:
            raise ValueError(f"unknown command {cmd!r}")


class _Handle:
    """The soak's end of one worker: its process, its pipe and the requests awaiting a reply."""

    def __init__(self, job: FollowerJob) -> None:
        ctx = mp.get_context("spawn")
        self.job = job
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=follower_worker, args=(job, theirs), daemon=True,
                                name=f"soak-followers-{job.index}")  # fmt: skip
        self.proc.start()
        theirs.close()  # the worker's end lives in the worker: its exit is our EOF
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.next = 0
        self.loop = asyncio.get_running_loop()
        self.up: asyncio.Future[Any] = self.loop.create_future()
        self.waiting[0] = self.up
        self.loop.add_reader(self.conn.fileno(), self._readable)
        self.reading = True
        self.finished = False

    def _readable(self) -> None:
        try:
            while self.conn.poll():
                rid, result = self.conn.recv()
                fut = self.waiting.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(result)
        except (EOFError, OSError):
            self._stop_reading()
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(SoakError(f"follower worker {self.job.index} exited"))
            self.waiting.clear()

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.conn.fileno())

    async def ask(self, cmd: str, *args: Any) -> Any:
        if not self.reading:
            raise SoakError(f"follower worker {self.job.index} exited")
        self.next += 1
        fut = self.loop.create_future()
        self.waiting[self.next] = fut
        self.conn.send((self.next, cmd, *args))
        return await fut

    def close(self) -> None:
        """End the process (by pid): SIGTERM, SIGKILL if it lingers."""
        self._stop_reading()
        if self.finished:  # it exits on its own
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        with contextlib.suppress(OSError):
            self.conn.close()


class Crowd:
    """Every follower of the soak, spread over ``workers`` processes (follower ``i`` in worker
    ``i % workers``)."""

    def __init__(self, specs: list[FollowerSpec], workers: int, nodes: list[str], key: str):
        self.specs = specs
        self.n = max(1, min(workers, len(specs)))
        self.where = {s.cid: i % self.n for i, s in enumerate(specs)}
        self.jobs = [FollowerJob(w, specs[w :: self.n], nodes, key) for w in range(self.n)]
        self.handles: list[_Handle] = []

    async def start(self, within: float = 60.0) -> None:
        """Start the workers; returns once each said its followers run."""
        self.handles = [_Handle(job) for job in self.jobs]
        try:
            await asyncio.wait_for(asyncio.gather(*(h.up for h in self.handles)), within)
        except TimeoutError as exc:
            raise SoakError(f"follower workers not up after {within:.0f} s") from exc

    @property
    def pids(self) -> list[int]:
        return [h.proc.pid for h in self.handles if h.proc.pid is not None]

    async def settle(self, head: dict[str, list[Any]], within: float) -> bool:
        oks = await asyncio.gather(*(h.ask("settle", head, within) for h in self.handles))
        return all(oks)

    def _by_worker(self, cids: list[str]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for cid in cids:
            out.setdefault(self.where[cid], []).append(cid)
        return out

    async def drop(self, cids: list[str]) -> int:
        parts = self._by_worker(cids).items()
        return sum(await asyncio.gather(*(self.handles[w].ask("drop", c) for w, c in parts)))

    async def stall(self, cids: list[str], hold: float) -> int:
        parts = self._by_worker(cids).items()
        return sum(await asyncio.gather(*(self.handles[w].ask("stall", c, hold)
                                          for w, c in parts)))  # fmt: skip

    async def finish(self) -> dict[str, Lives]:
        """End every follower; each one's lives by client id."""
        per = await asyncio.gather(*(h.ask("finish") for h in self.handles))
        for h in self.handles:
            h.finished = True
        out: dict[str, Lives] = {}
        for job, lives in zip(self.jobs, per, strict=True):
            for spec, mine in zip(job.specs, lives, strict=True):
                out[spec.cid] = mine
        return out

    def close(self) -> None:
        for h in self.handles:
            h.close()
