"""``hubbub bench``: fan-out throughput, latency, loss and server cost of one workload.

The orchestrator (this process) starts the node(s) as subprocesses (``hubbub serve`` on free
ports) unless ``--url`` points at a running one, spreads N subscribers over load-generator
processes (:mod:`hubbub.bench.load`), lets one publisher process publish for ``--duration``
seconds, waits until every expected delivery arrived (or stops arriving), and reports:

* deliveries/s, publish→deliver latency p50/p90/p99/max (the send time is stamped in the payload,
  CLOCK_MONOTONIC, which every process on the machine shares);
* lost and duplicated publications, per subscriber from room positions (offsets);
* server RSS (``/proc/<pid>/status`` VmRSS) and RSS per connection beyond the idle process,
  server CPU seconds (``/proc/<pid>/stat`` utime+stime) over the run;
* the load generator's own CPU, and a warning when it saturates (it then measures itself).

``--pin`` pins the server(s) to core 0 and the load generator to core 1.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from array import array
from typing import Any
from urllib.parse import urlsplit

from hubbub.bench.load import PublishJob, WorkerJob, publisher, subscriber_worker
from hubbub.bench.node import node_path, node_subscriber_worker
from hubbub.bench.wire import DIALECTS

CLK_TCK = os.sysconf("SC_CLK_TCK")
SATURATED = 0.9


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="use a running node, e.g. http://127.0.0.1:8000 (with --api-key)")
    p.add_argument("--api-key", default=os.environ.get("HUBBUB_API_KEY", ""),
                   help="API key for --url (subscribers and publisher use it)")  # fmt: skip
    p.add_argument("--server-pid", type=int, action="append", default=[],
                   help="with --url: process(es) to read RSS and CPU from")  # fmt: skip
    p.add_argument(
        "--nodes", type=int, default=1, help="nodes to start (more than 1 needs --broker)"
    )
    p.add_argument("--broker", default="memory://", help="broker URL for started nodes")
    p.add_argument("--transport", choices=("ws", "sse", "mixed"), default="ws",
                   help="subscribers' transport; mixed: half WebSocket, half SSE, at once")  # fmt: skip
    p.add_argument("--publish", choices=("http", "ws"), default="http", help="how to publish")
    p.add_argument("--subscribers", type=int, default=1000,
                   help="subscriber connections in all (default 1000)")  # fmt: skip
    p.add_argument("--rooms", type=int, default=1,
                   help="rooms the subscribers spread over (default 1)")  # fmt: skip
    p.add_argument("--rate", type=float, default=0.0,
                   help="publications per second in total (0: as fast as the closed loop allows)")  # fmt: skip
    p.add_argument("--window", type=int, default=32,
                   help="closed loop: publications in flight per subscriber, on average")  # fmt: skip
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds of measured publishing (default 10)")  # fmt: skip
    p.add_argument("--size", type=int, default=100, help="payload (data) bytes (default 100)")
    p.add_argument("--workers", type=int, default=2, help="subscriber processes")
    p.add_argument("--pin", action="store_true", help="server on core 0, load generator on core 1")
    p.add_argument("--loadgen", choices=("python", "node"), default="python",
                   help="subscriber workers: asyncio (python) or a Node.js child each (node)")  # fmt: skip
    p.add_argument("--dialect", choices=DIALECTS, default="hubbub", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--storm", action="store_true",
                   help="measure a reconnect storm instead: --subscribers clients drained from "
                        "one node to another on a private Redis (--rate: publications/s, "
                        "default 200)")  # fmt: skip
    p.add_argument("--abuse", action="store_true",
                   help="run mixed abuse instead (--duration seconds; --seed): abusers with "
                        "ordinary tokens next to legitimate clients, two nodes on a private "
                        "Redis with the shipped limits; prints what each got and what it cost")  # fmt: skip
    p.add_argument("--seed", type=int, default=1, help="--abuse: seed of the abusers' choices")
    p.add_argument("--storm-timeout", type=float, default=60.0,
                   help="--storm: seconds the clients have to resume (default 60)")  # fmt: skip


# ---- server processes --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def wait_ready(base: str, proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"hubbub bench: the node exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"hubbub bench: {base} not ready after {timeout:.0f}s")


def raise_fd_limit(needed: int) -> None:
    """Let this process and the nodes and load generators it starts (they inherit it) hold
    ``needed`` sockets: the soft limit goes up to the hard one, and the hard one too when
    allowed (root). Exits with a clear message when that is not enough."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(needed, soft), max(needed, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if hard < needed:
            raise SystemExit(
                f"hubbub bench: {needed} open files needed, the limit is {hard}; "
                "raise it (ulimit -n) or use fewer --subscribers"
            ) from None


def start_nodes(
    n: int, broker: str, key: str, pin: bool
) -> list[tuple[str, subprocess.Popen[bytes]]]:
    env = dict(os.environ, HUB_API_KEYS=key, HUB_API_RATE="0", HUB_LOG_LEVEL="warning",
               HUB_BROKER_URL=broker, HUB_HOST="127.0.0.1")  # fmt: skip
    for name in ("HUB_JWT_SECRET", "HUB_CONFIG", "HUB_WORKERS", "HUB_PORT"):
        env.pop(name, None)
    nodes = []
    for _ in range(n):
        port = free_port()
        cmd = [sys.executable, "-m", "hubbub.cli", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--broker", broker]  # fmt: skip
        if pin:
            cmd = ["taskset", "-c", "0", *cmd]
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        nodes.append((f"http://127.0.0.1:{port}", proc))
    for base, proc in nodes:
        wait_ready(base, proc)
    return nodes


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM (a node drains), SIGKILL after ``timeout`` seconds; returns once it exited."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_nodes(nodes: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    for _, proc in nodes:  # every node drains at once
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for _, proc in nodes:
        stop_process(proc)


# ---- statistics --------------------------------------------------------------------------------
def percentile(sorted_values: array[int] | list[int], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[i])


def _wait_all(conns: list[Any], kind: str, timeout: float) -> list[Any]:
    out = []
    for c in conns:
        if not c.poll(timeout):
            raise SystemExit(f"hubbub bench: a load generator did not report {kind!r} in time")
        msg = c.recv()
        if msg[0] != kind:
            raise SystemExit(f"hubbub bench: unexpected load generator message {msg[0]!r}")
        out.append(msg)
    return out


# ---- the run ---------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.nodes > 1 and not args.url and args.broker.startswith("memory"):
        raise SystemExit("hubbub bench: --nodes > 1 needs --broker redis://…")
    key = args.api_key or ("bench-" + secrets.token_urlsafe(12))
    nodes: list[tuple[str, subprocess.Popen[bytes]]] = []
    if args.url:
        bases = [u.rstrip("/") for u in args.url.split(",")]
        pids = list(args.server_pid)
    else:
        nodes = start_nodes(args.nodes, args.broker, key, args.pin)
        bases = [b for b, _ in nodes]
        pids = [p.pid for _, p in nodes]
    try:
        return _measure(args, key, bases, pids)
    finally:
        stop_nodes(nodes)


def _measure(
    args: argparse.Namespace, key: str, bases: list[str], pids: list[int]
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    targets = [(urlsplit(b).hostname or "127.0.0.1", urlsplit(b).port or 80) for b in bases]
    rooms = [f"bench-{secrets.token_hex(3)}-{i}" for i in range(max(1, args.rooms))]
    n = args.subscribers
    assign = [(*targets[i % len(targets)], rooms[i % len(rooms)]) for i in range(n)]
    room_sizes = {r: sum(1 for a in assign if a[2] == r) for r in rooms}
    nworkers = max(1, min(args.workers, n))
    pin_lg = 1 if args.pin else None
    progress = ctx.RawArray("q", nworkers)
    rss_base = {pid: proc_rss_kib(pid) for pid in pids}

    procs, conns = [], []
    worker = node_subscriber_worker if args.loadgen == "node" else subscriber_worker
    for w in range(nworkers):
        kind = ("ws", "sse")[w % 2] if args.transport == "mixed" else args.transport
        job = WorkerJob(w, assign[w::nworkers], kind, args.dialect, key, pin_lg)
        parent, child = ctx.Pipe()
        pr = ctx.Process(target=worker, args=(job, progress, child), daemon=True)
        pr.start()
        procs.append(pr)
        conns.append(parent)
    pjob = PublishJob(targets, rooms, room_sizes, args.publish, args.dialect, key, args.rate,
                      args.duration, args.size, args.window, pin=pin_lg)  # fmt: skip
    pparent, pchild = ctx.Pipe()
    pproc = ctx.Process(target=publisher, args=(pjob, progress, pchild), daemon=True)
    pproc.start()
    try:
        ready = _wait_all(conns, "ready", 120 + n / 50)
        connected = sum(r[1] for r in ready)
        connect_errors = [e for r in ready for e in r[2]]
        # The workers open theirs in parallel: the slowest one's span is the whole opening.
        connect_s = max((r[3] for r in ready if len(r) > 3), default=None)
        _wait_all([pparent], "ready", 30)
        time.sleep(0.5)
        rss_connected = {pid: proc_rss_kib(pid) for pid in pids}
        cpu0 = {pid: proc_cpu_s(pid) for pid in pids}
        wall0 = time.monotonic()
        for c in [*conns, pparent]:
            c.send("go")
        (_, published, finals, first_at, pub_cpu, pub_wall, pub_errors, behind), = _wait_all(
            [pparent], "done", args.duration + 60)  # fmt: skip
        # Wait for the stragglers: until the count stops moving for 2 s (at most 30 s).
        target = _expected_deliveries(published, rooms, room_sizes)
        last, still = -1, time.monotonic()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = sum(progress)
            if got >= target:
                break
            if got != last:
                last, still = got, time.monotonic()
            elif time.monotonic() - still > 2.0:
                break
            time.sleep(0.02)
        cpu1 = {pid: proc_cpu_s(pid) for pid in pids}
        rss_peak = {pid: proc_rss_kib(pid) for pid in pids}
        wall = time.monotonic() - wall0
        for c in conns:
            c.send("stop")
        done = _wait_all(conns, "done", 60)
        pparent.send("stop")
    finally:
        for pr in [*procs, pproc]:
            pr.join(5)
            if pr.is_alive():
                pr.kill()
    report = _report(args, bases, pids, connected, connect_errors, published, finals, first_at,
                   pub_cpu, pub_wall, pub_errors, behind, done, rss_base, rss_connected,
                   rss_peak, cpu0, cpu1, wall, room_sizes)  # fmt: skip
    report["connect_s"] = round(connect_s, 3) if connect_s else None
    report["connects_per_s"] = round(connected / connect_s, 1) if connect_s else None
    return report


def _expected_deliveries(published: int, rooms: list[str], room_sizes: dict[str, int]) -> int:
    # The publisher goes round-robin over the rooms.
    k = len(rooms)
    return sum(room_sizes[r] * (published // k + (1 if i < published % k else 0))
               for i, r in enumerate(rooms))  # fmt: skip


def _report(args: argparse.Namespace, bases: list[str], pids: list[int], connected: int,
            connect_errors: list[str], published: int, finals: dict[str, int], first_at: int,
            pub_cpu: float, pub_wall: float, pub_errors: list[str], behind: int,
            done: list[Any], rss_base: dict[int, int], rss_connected: dict[int, int],
            rss_peak: dict[int, int], cpu0: dict[int, float], cpu1: dict[int, float],
            wall: float, room_sizes: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    lat = array("q")
    deliveries = lost = dup = disconnected = 0
    last_at = first_at
    lg_cpu = [pub_cpu / pub_wall if pub_wall else 0.0]
    for _, subs, lat_bytes, count, w_last, cpu, w_wall in done:
        part = array("q")
        part.frombytes(lat_bytes)
        lat.extend(part)
        deliveries += count
        last_at = max(last_at, w_last)
        lg_cpu.append(cpu / w_wall if w_wall else 0.0)
        for room, start, uniq, d, code in subs:
            lost += max(0, finals.get(room, start) - start - uniq)
            dup += d
            if code is not None:
                disconnected += 1
    lat_sorted = sorted(lat)
    span = max(1e-9, (last_at - first_at) / 1e9)
    server_cpu = sum(cpu1[p] - cpu0[p] for p in pids)
    rss = sum(rss_peak.values())
    base = sum(rss_base.values())
    conn_rss = sum(rss_connected.values())
    lg_cores = 1 if args.pin else max(1, (os.cpu_count() or 2) - len(pids))
    lg_total = sum(lg_cpu)
    saturated = max(lg_cpu) >= SATURATED or lg_total >= SATURATED * lg_cores
    return {
        "server": {
            "urls": bases,
            "pids": pids,
            "nodes": len(bases),
            "broker": args.broker if not args.url else None,
            "dialect": args.dialect,
        },
        "workload": {
            "subscribers": args.subscribers,
            "connected": connected,
            "rooms": len(room_sizes),
            "transport": args.transport,
            "publish": args.publish,
            "rate": args.rate,
            "window": args.window,
            "duration": args.duration,
            "size": args.size,
            "pinned": args.pin,
            "loadgen": args.loadgen,
        },
        "published": published,
        "publish_per_s": round(published / pub_wall, 1) if pub_wall else 0.0,
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries / span, 1),
        "latency_ms": {
            k: round(percentile(lat_sorted, q) / 1000, 3)
            for k, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
        },
        "lost": lost,
        "duplicated": dup,
        "disconnected": disconnected,
        "server_rss_kib": rss,
        "server_rss_idle_kib": base,
        "rss_per_connection_kib": round((conn_rss - base) / connected, 2) if connected else None,
        "server_cpu_s": round(server_cpu, 3),
        "deliveries_per_cpu_s": round(deliveries / server_cpu, 1) if server_cpu else None,
        "wall_s": round(wall, 3),
        "loadgen": {
            "processes": len(lg_cpu),
            "cpu_percent": [round(c * 100, 1) for c in lg_cpu],
            "cores": lg_cores,
            "saturated": saturated,
        },
        "errors": (connect_errors + pub_errors)[:5],
        "publisher_behind": behind,
    }


def render(r: dict[str, Any]) -> str:
    w, lat, lg = r["workload"], r["latency_ms"], r["loadgen"]
    lines = [
        f"hubbub bench: {w['subscribers']} {w['transport']} subscribers ({w['connected']} connected)"
        f" in {w['rooms']} room(s), {w['size']} B payloads, publish over {w['publish']} at "
        + (f"{w['rate']:g}/s" if w["rate"] else f"max (window {w['window']})")
        + f" for {w['duration']:g}s; {r['server']['nodes']} node(s) {r['server']['urls']}",
        f"  published        {r['published']} ({r['publish_per_s']:,.0f}/s)",
        f"  deliveries       {r['deliveries']} ({r['deliveries_per_s']:,.0f}/s)",
        f"  latency ms       p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}",
        f"  connected        in {r.get('connect_s')} s ({r.get('connects_per_s')}/s: handshake "
        f"plus subscribe)",
        f"  lost             {r['lost']}   duplicated {r['duplicated']}   disconnected "
        f"{r['disconnected']}",
        f"  server RSS       {r['server_rss_kib'] / 1024:.1f} MiB (idle {r['server_rss_idle_kib'] / 1024:.1f} MiB),"
        f" {r['rss_per_connection_kib']} KiB per connection",
        f"  server CPU       {r['server_cpu_s']} s ({r['deliveries_per_cpu_s']} deliveries per CPU-second)",
        f"  load generator   {lg['processes']} processes ({w.get('loadgen', 'python')} subscribers),"
        f" CPU % {lg['cpu_percent']}"
        f" on {lg['cores']} core(s)" + ("  ** SATURATED: figures are a floor **" if lg["saturated"] else ""),
    ]  # fmt: skip
    if r["errors"]:
        lines.append(f"  errors           {r['errors']}")
    if r["publisher_behind"]:
        lines.append(f"  publisher fell behind its schedule {r['publisher_behind']} times")
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    if not args.url and args.dialect != "hubbub":
        raise SystemExit("hubbub bench: --dialect needs --url")
    if args.transport != "ws" and args.dialect != "hubbub":
        raise SystemExit("hubbub bench: SSE is Hubbub's")
    if args.transport == "mixed" and args.workers < 2:
        raise SystemExit("hubbub bench: --transport mixed needs --workers 2 or more")
    if args.loadgen == "node" and node_path() is None:
        raise SystemExit("hubbub bench: --loadgen node needs node (Node.js 18 or later) on PATH")
    if args.abuse:
        from hubbub.bench.abuse import render_abuse, run_abuse

        raise_fd_limit(4096)
        report = run_abuse(args.duration, args.seed)
        print(json.dumps(report) if args.json else render_abuse(report))
        return 1 if report["violations"] else 0
    if args.storm:
        from hubbub.bench.storm import render_storm, run_storm, storm_ok

        figures = run_storm(args)
        print(json.dumps(figures) if args.json else render_storm(figures))
        return 0 if storm_ok(figures) else 1
    raise_fd_limit(args.subscribers + 256)
    result = run(args)
    print(json.dumps(result) if args.json else render(result))
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1
