"""Run one fan-out workload against the reference servers and Hubbub, in one run; write a table.

Servers (each started fresh for every measurement, bound to 127.0.0.1, pinned to core 0 with
``--pin``, stopped by pid afterwards):

* ``websockets``: bench/ws_server.py, a bare ``websockets.broadcast()`` server;
* ``socketio``: bench/sio_server.py, python-socketio on uvicorn (needs the ``bench`` extra);
* ``hubbub``: ``hubbub serve`` (memory://), WebSocket subscribers;
* ``hubbub-sse``: the same node, SSE subscribers.
* ``hubbub-redis`` / ``hubbub-redis-sse``: ``hubbub serve`` on a private ``redis-server`` (core 1
  with ``--pin``);
* ``hubbub-asgi`` / ``hubbub-asgi-sse``: the same app on stock uvicorn (its own httptools and
  websockets-sansio protocols): the plain-ASGI path, without Hubbub's direct writes.

The load is ``hubbub bench --url … --publish ws`` (same client code and publisher for every
server, only the dialect differs). Rounds are interleaved (round 1 of every server, then round 2…)
so that noise from other processes spreads over all servers; the table shows the median and the
spread (half of max - min, as % of the median).

    .venv/bin/python bench/compare.py --subscribers 1000,5000 --rounds 3 --pin --latency
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hubbub.bench.run import free_port, stop_process
from hubbub.bench.storm import start_redis, wait_redis

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SERVERS = ("websockets", "socketio", "hubbub", "hubbub-sse")
COMPANIONS: dict[int, subprocess.Popen[bytes]] = {}  # server pid -> its redis-server
BASELINE = [""]  # --baseline: a checkout of an older Hubbub, run as "hubbub-before[-sse]"


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                time.sleep(0.3)
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server on {port} not up after {timeout}s")


def start(server: str, port: int, key: str, pin: bool) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if server == "websockets":
        cmd = [PY, str(ROOT / "bench" / "ws_server.py"), str(port)]
    elif server == "socketio":
        cmd = [PY, str(ROOT / "bench" / "sio_server.py"), str(port)]
    else:
        if server.startswith("hubbub-before"):
            env["PYTHONPATH"] = BASELINE[0]
        broker = "memory://"
        if server.startswith("hubbub-redis"):  # a private redis-server for this measurement
            rport = free_port()
            redis = start_redis(rport, pin)
            wait_redis(rport, redis)
            broker = f"redis://127.0.0.1:{rport}/0"
        env.update(HUB_API_KEYS=key, HUB_API_RATE="0", HUB_LOG_LEVEL="warning",
                   HUB_BROKER_URL=broker)  # fmt: skip
        env.pop("HUB_JWT_SECRET", None)
        module = "hubbub.cli"
        if server.startswith("hubbub-before") and not (Path(BASELINE[0]) / "hubbub").is_dir():
            module = "transports.cli"  # a checkout from before the hubbub package
        cmd = [PY, "-m", module, "serve", "--host", "127.0.0.1", "--port", str(port)]
        if server.startswith("hubbub-asgi"):  # the plain-ASGI path: stock uvicorn protocols
            cmd = [PY, "-m", "uvicorn", "hubbub.app:app_from_env", "--factory",
                   "--host", "127.0.0.1", "--port", str(port), "--http", "httptools",
                   "--ws", "websockets-sansio", "--ws-per-message-deflate", "false",
                   "--log-level", "warning"]  # fmt: skip
    if pin:
        cmd = ["taskset", "-c", "0", *cmd]
    cwd = BASELINE[0] if server.startswith("hubbub-before") else ROOT
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL)  # fmt: skip
    wait_port(port, proc)
    if server.startswith("hubbub-redis"):
        COMPANIONS[proc.pid] = redis
    return proc


def measure(server: str, n: int, args: argparse.Namespace, rate: float = 0.0) -> dict[str, Any]:
    key = "cmp-" + secrets.token_urlsafe(16)
    port = free_port()
    proc = start(server, port, key, args.pin)
    try:
        dialect = {"websockets": "plain", "socketio": "socketio"}.get(server, "hubbub")
        cmd = [PY, "-m", "hubbub.cli", "bench", "--url", f"http://127.0.0.1:{port}",
               "--server-pid", str(proc.pid), "--dialect", dialect, "--publish", "ws",
               "--transport", "sse" if server.endswith("-sse") else "ws",
               "--subscribers", str(n), "--duration", str(args.duration),
               "--size", str(args.size), "--rate", str(rate), "--loadgen", args.loadgen,
               "--json"]  # fmt: skip
        if dialect == "hubbub":
            cmd += ["--api-key", key]
        if args.pin:
            cmd.append("--pin")
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        if not out.stdout.strip():
            raise RuntimeError(f"{server} N={n}: bench failed: {out.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result
    finally:
        stop_process(proc)
        companion = COMPANIONS.pop(proc.pid, None)
        if companion is not None:
            stop_process(companion)


def med(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def spread(values: list[float]) -> str:
    m = med(values)
    if not values or not m:
        return "-"
    return f"±{(max(values) - min(values)) / 2 / m * 100:.0f}%"


def table(runs: dict[tuple[str, int], list[dict[str, Any]]], servers: list[str],
          ns: list[int]) -> list[str]:  # fmt: skip
    lines = [
        "| N | server | deliveries/s (median) | noise | vs websockets | deliveries per server CPU-s "
        "| vs websockets | connects/s | vs websockets | p99 ms | RSS/conn KiB | lost / dup / disc. "
        "| loadgen saturated |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in ns:
        ref = runs.get(("websockets", n), [])
        ref_d = med([r["deliveries_per_s"] for r in ref])
        ref_c = med([r["deliveries_per_cpu_s"] or 0 for r in ref])
        ref_k = med([r.get("connects_per_s") or 0 for r in ref])
        for s in servers:
            rs = runs.get((s, n), [])
            if not rs:
                continue
            d = [r["deliveries_per_s"] for r in rs]
            c = [r["deliveries_per_cpu_s"] or 0.0 for r in rs]
            p99 = med([r["latency_ms"]["p99"] for r in rs])
            k = med([r.get("connects_per_s") or 0 for r in rs])
            rss = med([r["rss_per_connection_kib"] or 0.0 for r in rs])
            lost = sum(r["lost"] for r in rs)
            dup = sum(r["duplicated"] for r in rs)
            disc = sum(r["disconnected"] for r in rs)
            sat = sum(1 for r in rs if r["loadgen"]["saturated"])
            lines.append(
                f"| {n} | {s} | {med(d):,.0f} | {spread(d)} | "
                f"{med(d) / ref_d if ref_d else 0:.2f}x | {med(c):,.0f} | {med(c) / ref_c if ref_c else 0:.2f}x | "
                f"{k:,.0f} | {k / ref_k if ref_k else 0:.2f}x | {p99:.1f} | {rss:.1f} | {lost} / {dup} / {disc} | {sat}/{len(rs)} |"
            )
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--subscribers", default="1000,5000")
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--pin", action="store_true")
    p.add_argument("--loadgen", choices=("python", "node"), default="python",
                   help="hubbub bench's subscriber workers (node: a Node.js child each)")  # fmt: skip
    p.add_argument("--latency", action="store_true",
                   help="also: p99 at half of the websockets server's maximum rate")  # fmt: skip
    p.add_argument("--latency-servers", default="websockets,hubbub,hubbub-sse")
    p.add_argument("--baseline", help="path of an older Hubbub checkout (servers hubbub-before…)")
    p.add_argument("--out", default=str(ROOT / "bench" / "compare-latest.md"))
    args = p.parse_args()
    ns = [int(x) for x in args.subscribers.split(",")]
    if args.baseline:
        BASELINE[0] = str(Path(args.baseline).resolve())
    servers = [s for s in args.servers.split(",") if s]
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    lat: dict[tuple[str, int], list[dict[str, Any]]] = {}
    failures: list[str] = []
    t0 = time.monotonic()
    for rnd in range(args.rounds):
        for n in ns:
            for s in servers:
                try:
                    r = measure(s, n, args)
                except (RuntimeError, SystemExit, subprocess.TimeoutExpired) as exc:
                    failures.append(f"round {rnd + 1} N={n} {s}: {str(exc)[-300:]}")
                    print(failures[-1], file=sys.stderr, flush=True)
                    continue
                runs.setdefault((s, n), []).append(r)
                print(f"round {rnd + 1} N={n} {s}: {r['deliveries_per_s']:,.0f}/s, "
                      f"{r['deliveries_per_cpu_s']}/CPU-s, p99 {r['latency_ms']['p99']} ms, "
                      f"lost {r['lost']} dup {r['duplicated']}, loadgen {r['loadgen']}",
                      file=sys.stderr, flush=True)  # fmt: skip
    if args.latency:
        for rnd in range(args.rounds):
            for n in ns:
                ref = med([r["deliveries_per_s"] for r in runs.get(("websockets", n), [])])
                rate = round(ref / n / 2, 1)
                for s in [x for x in servers if x in args.latency_servers.split(",")]:
                    try:
                        r = measure(s, n, args, rate=rate)
                    except (RuntimeError, SystemExit, subprocess.TimeoutExpired) as exc:
                        failures.append(f"latency N={n} {s}: {str(exc)[-300:]}")
                        continue
                    lat.setdefault((s, n), []).append(r)
                    print(f"latency round {rnd + 1} N={n} {s} at {rate}/s: p99 "
                          f"{r['latency_ms']['p99']} ms", file=sys.stderr, flush=True)  # fmt: skip
    out = [
        f"Fan-out, one room, {args.size}-byte payloads, publish over WebSocket (closed loop), "
        f"{args.duration:g}s per run, median of {args.rounds} interleaved rounds, "
        f"{'server pinned to core 0, load generator to core 1' if args.pin else 'no pinning'}, "
        f"{args.loadgen} subscriber workers; "
        f"took {time.monotonic() - t0:.0f}s.",
        "",
        *table(runs, servers, ns),
    ]
    if lat:
        out += ["", "p99 latency at a fixed rate of half the websockets server's maximum:", "",
                "| N | server | rate/s | p50 ms | p99 ms | p99 vs websockets | lost / dup |",
                "|---|---|---|---|---|---|---|"]  # fmt: skip
        for n in ns:
            ref99 = med([r["latency_ms"]["p99"] for r in lat.get(("websockets", n), [])])
            for s in servers:
                rs = lat.get((s, n), [])
                if not rs:
                    continue
                p50 = med([r["latency_ms"]["p50"] for r in rs])
                p99 = med([r["latency_ms"]["p99"] for r in rs])
                out.append(f"| {n} | {s} | {rs[0]['workload']['rate']:g} | {p50:.1f} | {p99:.1f} "
                           f"| {p99 / ref99 if ref99 else 0:.2f}x | "
                           f"{sum(r['lost'] for r in rs)} / {sum(r['duplicated'] for r in rs)} |")  # fmt: skip
    if failures:
        out += ["", "Failed runs (left out of the medians):", ""] + [f"- {f}" for f in failures]
    text = "\n".join(out) + "\n"
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"runs": {f"{s}/{n}": v for (s, n), v in runs.items()},
         "latency": {f"{s}/{n}": v for (s, n), v in lat.items()}}))  # fmt: skip
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
