"""The soak's processes (one ``redis-server``, K ``hubbub serve`` nodes) and its fault schedule.

Everything binds 127.0.0.1 on free ports and is stopped by pid (:meth:`Cluster.close`). The
schedule is drawn from ``random.Random(seed)``: node faults run one after the other (so with two
nodes one is always up), each fault kind at least once; client drops come in between.
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
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from hubbub.bench.run import free_port, stop_process

NODE_FAULTS = ("kill", "term", "stop")
FAULT_KINDS = (*NODE_FAULTS, "client_drop")


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
        p = self.proc
        if p is None or p.poll() is not None:
            return
        if self.stopped:
            p.send_signal(signal.SIGCONT)
            self.stopped = False
        stop_process(p, 8)


class Cluster:
    """A private Redis (no persistence) and ``n`` nodes on it."""

    def __init__(self, out: Path, n: int, api_key: str, secret: str, history: int) -> None:
        self.out = out
        self.redis_port = free_port()
        self.redis: subprocess.Popen[bytes] | None = None
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        env.update(HUB_BROKER_URL=f"redis://127.0.0.1:{self.redis_port}/0", HUB_API_KEYS=api_key,
                   HUB_JWT_SECRET=secret, HUB_API_RATE="0", HUB_CLIENT_PUBLISH_RATE="0",
                   HUB_HISTORY_SIZE=str(history), HUB_HISTORY_TTL="0", HUB_LOG_LEVEL="warning",
                   HUB_SHUTDOWN_TIMEOUT="3", PYTHONUNBUFFERED="1")  # fmt: skip
        self.nodes = [Node(i, env, out / f"node{i}.log") for i in range(n)]

    @property
    def urls(self) -> list[str]:
        return [nd.url for nd in self.nodes]

    async def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SoakError("redis-server not found on PATH (apt-get install redis-server)")
        self._spawn_redis(exe)
        await self._wait_redis()
        for nd in self.nodes:
            nd.start()
        await asyncio.gather(*(nd.wait_ready() for nd in self.nodes))

    def _spawn_redis(self, exe: str) -> None:
        argv = [exe, "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", "",
                "--appendonly", "no", "--protected-mode", "yes"]  # fmt: skip
        with open(self.out / "redis.log", "ab") as log:
            self.redis = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT)  # fmt: skip

    async def _wait_redis(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.redis is None or self.redis.poll() is not None:
                raise SoakError(f"redis-server exited; see {self.out / 'redis.log'}")
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", self.redis_port)
                w.close()
                return
            await asyncio.sleep(0.05)
        raise SoakError("redis-server did not start")

    def close(self) -> None:
        """Stop every process by pid; safe to call twice and after a failed start."""
        for nd in self.nodes:
            with contextlib.suppress(Exception):
                nd.stop()
        r = self.redis
        if r is not None and r.poll() is None:
            r.terminate()
            try:
                r.wait(5)
            except subprocess.TimeoutExpired:
                r.kill()
                r.wait(5)


@dataclass(frozen=True)
class Fault:
    """``kind`` at ``at`` seconds into the run, on node ``node``; ``hold`` is how long the node
    stays down or stopped (client drops: ``node`` is how many clients to drop)."""

    at: float
    kind: str
    node: int
    hold: float


def schedule(seed: int, duration: float, nodes: int) -> list[Fault]:
    """The run's faults, sorted by time: node faults every few seconds in the first 80 % of the
    run (each of kill, term and stop at least once, in a seeded order), client drops between."""
    rng = random.Random(seed)
    end = duration * 0.8
    kinds = list(NODE_FAULTS)
    rng.shuffle(kinds)
    slots = max(3, int(end // 5))
    while len(kinds) < slots:
        kinds.append(rng.choice(NODE_FAULTS))
    step = (end - 1.0) / len(kinds)
    out = [Fault(1.0 + i * step + rng.uniform(0, step / 3), k, rng.randrange(nodes),
                 rng.uniform(0.3, 1.5)) for i, k in enumerate(kinds)]  # fmt: skip
    t = rng.uniform(0.5, 1.5)
    while t < end:
        out.append(Fault(t, "client_drop", rng.randint(1, 4), 0.0))
        t += rng.uniform(0.5, 2.0)
    return sorted(out, key=lambda f: f.at)


class Injector:
    """Runs a schedule against a cluster; ``drop(n)`` is the clients' side, given by the soak."""

    def __init__(self, cluster: Cluster, faults: list[Fault], drop: object) -> None:
        self.cluster, self.faults, self.drop = cluster, faults, drop
        self.done: Counter[str] = Counter()
        self.log: list[dict[str, object]] = []

    async def run(self, t0: float) -> None:
        node_q = [f for f in self.faults if f.kind in NODE_FAULTS]
        drops = [f for f in self.faults if f.kind == "client_drop"]
        await asyncio.gather(self._nodes(t0, node_q), self._drops(t0, drops))

    async def _drops(self, t0: float, faults: list[Fault]) -> None:
        for f in faults:
            await asyncio.sleep(max(0.0, t0 + f.at - time.monotonic()))
            n = self.drop(f.node)  # type: ignore[operator]
            self.done["client_drop"] += 1
            self.log.append({"t": round(time.monotonic() - t0, 2), "kind": f.kind, "clients": n})

    async def _nodes(self, t0: float, faults: list[Fault]) -> None:
        for f in faults:  # one at a time: a fault starts once the previous one is over
            await asyncio.sleep(max(0.0, t0 + f.at - time.monotonic()))
            nd = self.cluster.nodes[f.node]
            began = time.monotonic() - t0
            if f.kind == "kill":
                nd.signal(signal.SIGKILL)
                await nd.wait_exit(5)
                await asyncio.sleep(f.hold)
                nd.start()
                await nd.wait_ready()
            elif f.kind == "term":
                nd.signal(signal.SIGTERM)
                if not await nd.wait_exit(15):
                    raise SoakError(f"node {f.node} did not exit within 15 s of SIGTERM")
                nd.start()
                await nd.wait_ready()
            else:
                nd.signal(signal.SIGSTOP)
                nd.stopped = True
                await asyncio.sleep(f.hold)
                nd.signal(signal.SIGCONT)
                nd.stopped = False
            self.done[f.kind] += 1
            self.log.append({"t": round(began, 2), "kind": f.kind, "node": f.node,
                             "took": round(time.monotonic() - t0 - began, 2)})  # fmt: skip
