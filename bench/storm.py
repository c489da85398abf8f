"""``hubbub bench --storm``: a reconnect storm, measured.

It starts a private ``redis-server`` (no persistence) and two nodes, A and B, on 127.0.0.1 (with
``--pin``: the nodes on core 0, everything else on core 1). ``--subscribers`` WebSocket clients
(JWT-authenticated, one user each, spread over ``--rooms`` rooms) subscribe on A; a publisher
sends ``--rate`` publications per second over HTTP to B. Then A gets SIGTERM: it drains, and every
client follows it to B as ``hubbub.js`` would (:mod:`hubbub.bench.storm_client`), resuming with
``since``. The report: how long after the SIGTERM the clients resumed (p50, p99, last), how many
resumed with ``recovered: true``, publications lost and duplicated (every client must have every
acknowledged offset after its start exactly once), ``error`` answers and close codes the clients
met (an ``unavailable`` or a 4003 is a false outage: Redis was up throughout), and the latency of
the publishes sent during the storm.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

import httpx
import jwt

from hubbub.bench.run import (
    free_port,
    percentile,
    proc_cpu_s,
    raise_fd_limit,
    stop_process,
    wait_ready,
)
from hubbub.bench.storm_client import StormJob, storm_worker

FALSE_OUTAGE_CLOSE = "4003"


def start_redis(port: int, pin: bool) -> subprocess.Popen[bytes]:
    """A private redis-server on 127.0.0.1:``port``, no persistence (``pin``: on core 1)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit(
            "hubbub bench --storm: redis-server not found (apt-get install redis-server)"
        )
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", tempfile.gettempdir(), "--maxclients", "20000"]  # fmt: skip
    if pin:
        cmd = ["taskset", "-c", "1", *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def wait_redis(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("hubbub bench --storm: redis-server exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("hubbub bench --storm: redis-server did not start")


def _node(port: int, env: dict[str, str], pin: bool) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "hubbub.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if pin:
        cmd = ["taskset", "-c", "0", *cmd]
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)


class Publisher:
    """HTTP publications to one node at a fixed rate, rooms in turn; latency per publication."""

    def __init__(self, base: str, key: str, rooms: list[str], rate: float) -> None:
        self.base, self.key, self.rooms, self.rate = base, key, rooms, rate
        self.acked: dict[str, int] = {}
        self.failed = 0
        self.samples: list[tuple[int, int]] = []  # (sent at ns, latency µs)
        self.stopping = False

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        async with httpx.AsyncClient(base_url=self.base, headers=headers, limits=limits,
                                     timeout=10.0) as client:  # fmt: skip
            tasks: set[asyncio.Task[None]] = set()
            n = 0
            t0 = time.monotonic()
            while not self.stopping:
                room = self.rooms[n % len(self.rooms)]
                task = asyncio.create_task(self._one(client, room, n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
                await asyncio.sleep(max(0.0, t0 + n / self.rate - time.monotonic()))
            if tasks:
                await asyncio.wait(tasks)

    async def _one(self, client: httpx.AsyncClient, room: str, n: int) -> None:
        sent = time.monotonic_ns()
        try:
            r = await client.post(f"/v1/rooms/{room}/messages",
                                  json={"data": {"t": sent, "s": n}})  # fmt: skip
        except httpx.HTTPError:
            self.failed += 1
            return
        self.samples.append((sent, (time.monotonic_ns() - sent) // 1000))
        if r.status_code not in (200, 201):
            self.failed += 1
            return
        offset = int(r.json()["offset"])
        self.acked[room] = max(self.acked.get(room, 0), offset)


def run_storm(args: Any) -> dict[str, Any]:
    """Run one storm (see the module docstring); returns the figures."""
    n = args.subscribers
    raise_fd_limit(n + 1024)  # per process: a node holds every client, so does a worker its share
    key = secrets.token_urlsafe(24)
    secret = secrets.token_urlsafe(32)
    rooms = [f"storm-{i:03d}" for i in range(max(1, args.rooms))]
    redis_port = free_port()
    redis = start_redis(redis_port, args.pin)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        wait_redis(redis_port, redis)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        env.update(HUB_API_KEYS=key, HUB_JWT_SECRET=secret, HUB_API_RATE="0",
                   HUB_LOG_LEVEL="warning",
                   HUB_BROKER_URL=f"redis://127.0.0.1:{redis_port}/0")  # fmt: skip
        ports = [free_port(), free_port()]
        procs = [_node(p, env, args.pin) for p in ports]
        for p, proc in zip(ports, procs, strict=True):
            wait_ready(f"http://127.0.0.1:{p}", proc)
        return _storm(args, n, key, secret, rooms, ports, procs, redis.pid)
    finally:
        for proc in procs:
            stop_process(proc)
        redis.send_signal(signal.SIGKILL)
        redis.wait()


def _tokens(secret: str, n: int, rooms: list[str]) -> list[tuple[str, str]]:
    exp = int(time.time()) + 3600
    return [
        (rooms[i % len(rooms)],
         jwt.encode({"sub": f"storm-{i}", "exp": exp, "hub": {"subscribe": ["storm-*"]}},
                    secret, algorithm="HS256"))
        for i in range(n)
    ]  # fmt: skip


def _storm(args: Any, n: int, key: str, secret: str, rooms: list[str], ports: list[int],
           procs: list[subprocess.Popen[bytes]], redis_pid: int) -> dict[str, Any]:  # fmt: skip
    clients = _tokens(secret, n, rooms)
    ctx = mp.get_context("spawn")
    workers = max(1, args.workers)
    pipes, kids = [], []
    for w in range(workers):
        job = StormJob(w, clients[w::workers], ("127.0.0.1", ports[0]), ("127.0.0.1", ports[1]),
                       pin=1 if args.pin else None)  # fmt: skip
        ours, theirs = ctx.Pipe()
        kid = ctx.Process(target=storm_worker, args=(job, theirs), daemon=True)
        kid.start()
        pipes.append(ours)
        kids.append(kid)
    try:
        watch = {"redis": [redis_pid], "clients": [k.pid for k in kids if k.pid is not None]}
        return asyncio.run(_drive(args, n, key, rooms, ports, procs, pipes, watch))
    finally:
        for kid in kids:
            kid.join(10)
            if kid.is_alive():
                kid.kill()


def _profiler(pid: int) -> subprocess.Popen[bytes] | None:
    """With ``HUBBUB_STORM_PROFILE=FILE``: py-spy records node B through the storm (raw
    collapsed stacks, 14 s), to see where a storm's time goes."""
    out = os.environ.get("HUBBUB_STORM_PROFILE")
    if not out:
        return None
    cmd = ["py-spy", "record", "-p", str(pid), "-f", "raw", "-o", out, "-d", "14"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _get(pipe: Any, within: float) -> Any:
    loop = asyncio.get_running_loop()
    ok = await loop.run_in_executor(None, pipe.poll, within)
    if not ok:
        raise SystemExit(f"hubbub bench --storm: a client worker said nothing for {within:.0f} s")
    return pipe.recv()


async def _drive(args: Any, n: int, key: str, rooms: list[str], ports: list[int],
                 procs: list[subprocess.Popen[bytes]], pipes: list[Any],
                 watch: dict[str, list[int]]) -> dict[str, Any]:  # fmt: skip
    t_open = time.monotonic()
    for p in pipes:
        msg = await _get(p, 120)
        if msg[0] != "ready":
            raise SystemExit(f"hubbub bench --storm: a worker failed: {msg}")
    opened_s = time.monotonic() - t_open
    pub = Publisher(f"http://127.0.0.1:{ports[1]}", key, rooms, args.rate or 200.0)
    pub_task = asyncio.create_task(pub.run())
    await asyncio.sleep(1.0)
    profiler = _profiler(procs[1].pid)
    if profiler is not None:
        await asyncio.sleep(0.5)
    cpu0 = proc_cpu_s(procs[1].pid)
    others0 = {k: sum(proc_cpu_s(p) for p in pids) for k, pids in watch.items()}
    t0 = time.monotonic_ns()
    procs[0].send_signal(signal.SIGTERM)
    deadline = time.monotonic() + args.storm_timeout
    resumed_all = True
    for p in pipes:
        left = deadline - time.monotonic()
        ok = left > 0 and await asyncio.get_running_loop().run_in_executor(None, p.poll, left)
        if not ok:
            resumed_all = False
            break
        msg = p.recv()
        assert msg[0] == "resumed", msg
    t_end = time.monotonic_ns()
    cpu_b = proc_cpu_s(procs[1].pid) - cpu0
    others = {
        k: round(sum(proc_cpu_s(p) for p in pids) - others0[k], 2) for k, pids in watch.items()
    }
    if profiler is not None:
        await asyncio.get_running_loop().run_in_executor(None, profiler.wait)
    await asyncio.sleep(1.0)
    pub.stopping = True
    await pub_task
    await asyncio.sleep(1.5)  # the last publications reach every client
    reports = []
    for p in pipes:
        p.send("stop")
        while True:
            msg = await _get(p, 30)
            if msg[0] == "done":
                reports.append(msg[1])
                break
    return {
        **_figures(n, t0, t_end, opened_s, resumed_all, pub, reports),
        "node_b_cpu_s": round(cpu_b, 2),
        "redis_cpu_s": others["redis"],
        "clients_cpu_s": others["clients"],
    }


def _figures(n: int, t0: int, t_end: int, opened_s: float, resumed_all: bool, pub: Publisher,
             reports: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    resume_ms: list[int] = []
    recovered = lost = dup = gaps = 0
    errors: Counter[str] = Counter()
    closes: Counter[str] = Counter()
    for rep in reports:
        errors.update(rep["errors"])
        closes.update(rep["closes"])
        for room, start, uniq, d, g, rec, at in rep["clients"]:
            if at:
                resume_ms.append((at - t0) // 1_000_000)
            recovered += rec is True
            expected = max(0, pub.acked.get(room, 0) - start)
            lost += max(0, expected - uniq)
            dup += d
            gaps += g
    resume_ms.sort()
    storm = sorted(lat for sent, lat in pub.samples if t0 <= sent <= t_end)
    return {
        "clients": n,
        "open_s": round(opened_s, 2),
        "resumed": len(resume_ms),
        "all_resumed": resumed_all,
        "recovered": recovered,
        "resume_p50_ms": round(percentile(resume_ms, 0.5)),
        "resume_p99_ms": round(percentile(resume_ms, 0.99)),
        "resume_last_ms": round(resume_ms[-1]) if resume_ms else None,
        "lost": lost,
        "duplicated": dup,
        "gaps": gaps,
        "errors": dict(errors),
        "closes": dict(closes),
        "false_outages": errors.get("unavailable", 0) + closes.get(FALSE_OUTAGE_CLOSE, 0),
        "published": sum(pub.acked.values()),
        "publish_failed": pub.failed,
        "storm_publishes": len(storm),
        "storm_publish_p50_ms": round(percentile(storm, 0.5) / 1000, 1),
        "storm_publish_p99_ms": round(percentile(storm, 0.99) / 1000, 1),
        "storm_publish_max_ms": round(storm[-1] / 1000, 1) if storm else None,
    }


def render_storm(r: dict[str, Any]) -> str:
    lines = [
        f"storm: {r['clients']} WebSocket clients drained from node A to node B (Redis)",
        f"  opened on A in {r['open_s']} s",
        f"  resumed {r['resumed']}/{r['clients']} ({r['recovered']} recovered: true), after the "
        f"SIGTERM: p50 {r['resume_p50_ms']} ms, p99 {r['resume_p99_ms']} ms, "
        f"last {r['resume_last_ms']} ms",
        f"  CPU-s used meanwhile: node B {r['node_b_cpu_s']}, redis {r['redis_cpu_s']}, "
        f"client workers {r['clients_cpu_s']}",
        f"  lost {r['lost']}, duplicated {r['duplicated']}, gaps {r['gaps']}",
        f"  false outages (unavailable / 4003): {r['false_outages']}; errors {r['errors']}; "
        f"closes {r['closes']}",
        f"  publishes during the storm: {r['storm_publishes']}, p50 {r['storm_publish_p50_ms']} "
        f"ms, p99 {r['storm_publish_p99_ms']} ms, max {r['storm_publish_max_ms']} ms "
        f"({r['publish_failed']} failed of {r['published'] + r['publish_failed']})",
    ]
    return "\n".join(lines)


def storm_ok(r: dict[str, Any]) -> bool:
    """Nothing lost or duplicated, everyone resumed with ``recovered: true``, no false outage."""
    return bool(
        r["all_resumed"]
        and r["recovered"] == r["clients"]
        and r["lost"] == 0
        and r["duplicated"] == 0
        and r["false_outages"] == 0
    )
