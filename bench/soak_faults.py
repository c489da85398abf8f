"""The soak's processes (one ``redis-server``, K ``hubbub serve`` nodes, each reaching Redis
through a TCP :class:`Proxy` of its own) and its fault schedule.

Everything binds 127.0.0.1 on free ports and is stopped by pid (:meth:`Cluster.close`). The
schedule is drawn from ``random.Random(seed)`` (:func:`schedule`): node faults run one after the
other (so with two nodes one is always up), broker faults (Redis, the proxies) one after the
other beside them, and client faults beside both; each kind at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from hubbub.bench.run import free_port, stop_process
from hubbub.bench.soak_proxy import Proxy

NODE_FAULTS = ("kill", "term", "stop")
BROKER_FAULTS = ("redis_stop", "redis_restart_aof", "redis_restart_empty", "pubsub_kill",
                 "proxy_latency", "proxy_drop", "proxy_blackhole")  # fmt: skip
CLIENT_FAULTS = ("client_drop", "client_stall")
FAULT_KINDS = (*NODE_FAULTS, *BROKER_FAULTS, *CLIENT_FAULTS)


class SoakError(Exception):
    """A soak could not run (a process did not start); the message says which."""


@dataclass
class Node:
    """One ``hubbub serve`` process; its output goes to ``log``."""

    index: int
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False  # SIGSTOPped

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "hubbub.cli", "serve", "--host", "127.0.0.1",
               "--port", str(self.port)]  # fmt: skip
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)  # fmt: skip

    async def wait_ready(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        async with httpx.AsyncClient() as c:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    raise SoakError(f"node {self.index} exited; see {self.log}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await c.get(self.url + "/health/ready", timeout=1)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise SoakError(f"node {self.index} not ready after {within:.0f}s; see {self.log}")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def wait_exit(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while self.proc is not None and self.proc.poll() is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def stop(self) -> None:
        """End the process for good (SIGCONT first if stopped, SIGTERM, then SIGKILL)."""
        _end(self.proc, self.stopped, 8)
        self.stopped = False


def _end(p: subprocess.Popen[bytes] | None, stopped: bool, timeout: float) -> None:
    """End a process for good: SIGCONT first when it was stopped (a stopped process does not
    act on SIGTERM), then :func:`stop_process` (SIGTERM, SIGKILL after ``timeout`` seconds)."""
    if p is None or p.poll() is not None:
        return
    if stopped:
        p.send_signal(signal.SIGCONT)
    stop_process(p, timeout)


class Redis:
    """The private ``redis-server``: append-only file on, in ``data`` (so a restart keeps what
    was acknowledged), or wiped before a restart (a Redis without persistence)."""

    def __init__(self, out: Path) -> None:
        self.out, self.data = out, out / "redis-data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False
        self.exe = shutil.which("redis-server") or ""

    def spawn(self) -> None:
        if not self.exe:
            raise SoakError("redis-server not found on PATH (apt-get install redis-server)")
        self.data.mkdir(parents=True, exist_ok=True)
        argv = [self.exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.data),
                "--protected-mode", "yes"]  # fmt: skip
        with open(self.out / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)  # fmt: skip

    async def wait_ready(self, within: float = 10.0) -> None:
        """Until Redis answers PING (it loads its AOF first)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise SoakError(f"redis-server exited; see {self.out / 'redis.log'}")
            with contextlib.suppress(Exception):
                if await self.command("PING", within=1.0):
                    return
            await asyncio.sleep(0.05)
        raise SoakError("redis-server did not start")

    async def command(self, *args: str, within: float = 3.0) -> object:
        """One command on a connection of its own, straight to Redis (not through a proxy)."""
        r = aioredis.Redis(host="127.0.0.1", port=self.port, socket_timeout=within,
                           socket_connect_timeout=within)  # fmt: skip
        try:
            return await r.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            await r.aclose()

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.stopped = sig == signal.SIGSTOP

    def kill(self, wipe: bool) -> None:
        """SIGKILL; with ``wipe`` the append-only file goes too (everything is lost)."""
        p = self.proc
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(10)
        self.stopped = False
        if wipe:
            shutil.rmtree(self.data, ignore_errors=True)

    def stop(self) -> None:
        """End the process for good, as :meth:`Node.stop`."""
        _end(self.proc, self.stopped, 5)
        self.stopped = False


class Cluster:
    """A private Redis and ``n`` nodes on it, each node through a :class:`Proxy` of its own."""

    def __init__(self, out: Path, n: int, api_key: str, secret: str, history: int,
                 env_extra: dict[str, str] | None = None) -> None:  # fmt: skip
        self.out = out
        self.redis = Redis(out)
        self.proxies = [Proxy(self.redis.port) for _ in range(n)]
        base = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        base.update(HUB_API_KEYS=api_key, HUB_JWT_SECRET=secret, HUB_API_RATE="0",
                    HUB_CLIENT_PUBLISH_RATE="0", HUB_CLIENT_COMMAND_RATE="0",
                    HUB_HISTORY_SIZE=str(history), HUB_HISTORY_TTL="0",
                    HUB_LOG_LEVEL="warning", HUB_SHUTDOWN_TIMEOUT="3", HUB_BROKER_TIMEOUT="2",
                    PYTHONUNBUFFERED="1")  # fmt: skip
        base.update(env_extra or {})
        self.base_env = base
        self.nodes = [Node(i, dict(base), out / f"node{i}.log") for i in range(n)]

    @property
    def urls(self) -> list[str]:
        return [nd.url for nd in self.nodes]

    async def start(self) -> None:
        self.redis.spawn()
        await self.redis.wait_ready()
        for px, nd in zip(self.proxies, self.nodes, strict=True):
            await px.start()
            nd.env["HUB_BROKER_URL"] = f"redis://127.0.0.1:{px.port}/0"
            nd.start()
        await asyncio.gather(*(nd.wait_ready() for nd in self.nodes))

    def close(self) -> None:
        """Stop every process by pid; safe to call twice and after a failed start."""
        for nd in self.nodes:
            with contextlib.suppress(Exception):
                nd.stop()
        self.redis.stop()

    async def close_proxies(self) -> None:
        for px in self.proxies:
            with contextlib.suppress(Exception):
                await px.close()


@dataclass(frozen=True)
class Fault:
    """``kind`` at ``at`` seconds into the run. ``target``: a node's index (node and proxy
    faults; -1 is every node's proxy) or how many clients (client faults). ``hold``: how long
    the fault lasts (a node or Redis down or stopped, latency, a blackhole, a stalled client).
    ``arg``: the added latency in seconds (``proxy_latency``)."""

    at: float
    kind: str
    target: int
    hold: float
    arg: float = 0.0


def _lane(rng: random.Random, kinds: tuple[str, ...], end: float, every: float) -> list[str]:
    """One fault per ``every`` seconds (at least one of each kind): rounds of every kind, each
    round in a seeded order, so the kinds stay within one of each other."""
    out: list[str] = []
    while len(out) < max(len(kinds), int(end // every)):
        round_ = list(kinds)
        rng.shuffle(round_)
        out += round_
    return out[: max(len(kinds), int(end // every))]


def _timed(rng: random.Random, kinds: list[str], end: float) -> list[tuple[float, str]]:
    step = (end - 1.0) / len(kinds)
    return [(1.0 + i * step + rng.uniform(0, step / 3), k) for i, k in enumerate(kinds)]


def schedule(seed: int, duration: float, nodes: int, kinds: set[str] | None = None) -> list[Fault]:
    """The run's faults, sorted by time, all in the first 80 % of the run, in three lanes run
    side by side: node faults (one every ~5 s), broker faults (Redis and the proxies, one every
    ~5 s) and client faults (every 0.5-2 s). Within a lane a fault starts once the previous one
    is over; each kind of a lane comes at least once. ``kinds`` keeps only those kinds."""
    rng = random.Random(seed)
    end = duration * 0.8
    allowed = set(FAULT_KINDS) if kinds is None else kinds
    out: list[Fault] = []
    for t, k in _timed(rng, _lane(rng, NODE_FAULTS, end, 5.0), end):
        hold = rng.uniform(0.3, 2.5) if k == "stop" else rng.uniform(0.3, 1.5)
        out.append(Fault(t, k, rng.randrange(nodes), hold))
    for t, k in _timed(rng, _lane(rng, BROKER_FAULTS, end, 5.0), end):
        node = -1 if rng.random() < 0.25 else rng.randrange(nodes)
        if k == "redis_stop":
            out.append(Fault(t, k, -1, rng.uniform(0.3, 3.0)))
        elif k.startswith("redis_restart"):
            out.append(Fault(t, k, -1, rng.uniform(0.2, 1.5)))
        elif k == "pubsub_kill":
            out.append(Fault(t, k, -1, 0.0))
        elif k == "proxy_latency":
            out.append(Fault(t, k, node, rng.uniform(1.0, 5.0), rng.uniform(0.02, 0.5)))
        elif k == "proxy_drop":
            out.append(Fault(t, k, node, 0.0))
        else:
            out.append(Fault(t, k, node, rng.uniform(0.5, 5.0)))
    t = rng.uniform(0.5, 1.5)
    first = list(CLIENT_FAULTS)
    while t < end:
        k = first.pop(0) if first else rng.choice(CLIENT_FAULTS)
        if k == "client_drop":
            out.append(Fault(t, k, rng.randint(1, 4), 0.0))
        else:
            out.append(Fault(t, k, rng.randint(1, 3), rng.uniform(1.0, 15.0)))
        t += rng.uniform(0.5, 2.0)
    return sorted((f for f in out if f.kind in allowed), key=lambda f: f.at)


ClientFault = Callable[[int, float], Awaitable[int]]


class Injector:
    """Runs a schedule against a cluster. ``clients`` maps each client fault kind to the soak's
    ``async fn(count, hold) -> clients affected``."""

    def __init__(
        self, cluster: Cluster, faults: list[Fault], clients: dict[str, ClientFault]
    ) -> None:
        self.cluster, self.faults, self.clients = cluster, faults, clients
        self.done: Counter[str] = Counter()
        self.log: list[dict[str, object]] = []
        self._t0 = 0.0

    async def run(self, t0: float) -> None:
        self._t0 = t0
        lanes = (NODE_FAULTS, BROKER_FAULTS, CLIENT_FAULTS)
        await asyncio.gather(*(self._lane([f for f in self.faults if f.kind in kinds])
                               for kinds in lanes))  # fmt: skip

    async def _lane(self, faults: list[Fault]) -> None:
        for f in faults:  # one at a time: a fault starts once the previous one is over
            await asyncio.sleep(max(0.0, self._t0 + f.at - time.monotonic()))
            began = time.monotonic() - self._t0
            note = await self._inject(f)
            self.done[f.kind] += 1
            entry: dict[str, object] = {"t": round(began, 2), "kind": f.kind, "target": f.target,
                                        "hold": round(f.hold, 2),
                                        "took": round(time.monotonic() - self._t0 - began, 2)}  # fmt: skip
            if f.arg:
                entry["arg"] = round(f.arg, 3)
            if note is not None:
                entry["note"] = note
            self.log.append(entry)

    async def _inject(self, f: Fault) -> object:
        c = self.cluster
        if f.kind in CLIENT_FAULTS:
            return await self.clients[f.kind](f.target, f.hold)
        if f.kind in NODE_FAULTS:
            await self._node(c.nodes[f.target], f)
            return None
        if f.kind.startswith("proxy_"):
            proxies = c.proxies if f.target < 0 else [c.proxies[f.target]]
            if f.kind == "proxy_drop":
                return sum(px.drop() for px in proxies)
            for px in proxies:
                if f.kind == "proxy_latency":
                    px.latency(f.arg)
                else:
                    px.blackhole()
            await asyncio.sleep(f.hold)
            for px in proxies:
                px.heal()
            return None
        r = c.redis
        if f.kind == "redis_stop":
            r.signal(signal.SIGSTOP)
            await asyncio.sleep(f.hold)
            r.signal(signal.SIGCONT)
        elif f.kind == "pubsub_kill":
            return await r.command("CLIENT", "KILL", "TYPE", "pubsub")
        else:
            r.kill(wipe=f.kind == "redis_restart_empty")
            await asyncio.sleep(f.hold)
            r.spawn()
            await r.wait_ready(30)
        return None

    async def _node(self, nd: Node, f: Fault) -> None:
        if f.kind == "kill":
            nd.signal(signal.SIGKILL)
            await nd.wait_exit(5)
            await asyncio.sleep(f.hold)
            nd.start()
            await nd.wait_ready()
        elif f.kind == "term":
            nd.signal(signal.SIGTERM)
            if not await nd.wait_exit(15):
                raise SoakError(f"node {nd.index} did not exit within 15 s of SIGTERM")
            nd.start()
            await nd.wait_ready()
        else:
            nd.signal(signal.SIGSTOP)
            nd.stopped = True
            await asyncio.sleep(f.hold)
            nd.signal(signal.SIGCONT)
            nd.stopped = False
