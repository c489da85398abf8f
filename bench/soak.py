"""``hubbub soak``: a randomized fault run and a checker that proves nothing acknowledged was lost.

It starts a private ``redis-server`` and ``--nodes`` nodes on 127.0.0.1 (each reaching Redis
through a TCP proxy of the soak's), publishers at ``--rate`` across ``--rooms`` rooms over HTTP
and WebSocket (idempotency keys and retries), ``--clients`` followers of one or a few rooms
(WebSocket, one in four of them presence members, and one in five SSE; one in ten slow) that
resume after every disconnect, run by ``--workers`` load-generator processes on ``hubbub
bench``'s client wire code (:mod:`hubbub.bench.soak_workers`), and a fault schedule drawn from
``--seed``
(:mod:`hubbub.bench.soak_faults`). After ``--duration`` seconds the publishers stop, the
followers get a settle time to catch up, history is read back, and
:mod:`hubbub.bench.soak_check` checks every client life. Exit status: 0 clean, 1 violations,
2 the run could not be carried out, 130 interrupted (SIGINT or SIGTERM). ``--out`` receives
``summary.json``, ``gaps.json`` and, on a violation (or with ``--keep-logs``), the checker's
inputs and the offending clients' logs. Every process is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from hubbub.bench.run import raise_fd_limit
from hubbub.bench.soak_check import Report, check
from hubbub.bench.soak_faults import FAULT_KINDS, Cluster, Injector, SoakError, schedule
from hubbub.bench.soak_publish import Publisher
from hubbub.bench.soak_workers import Crowd, FollowerSpec


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=60.0, help="seconds of publishing and faults")
    p.add_argument("--seed", type=int, default=1, help="seed of the fault schedule and the load")
    p.add_argument("--nodes", type=int, default=3, help="nodes to start (at least 2)")
    p.add_argument("--rooms", type=int, default=4, help="rooms to publish to")
    p.add_argument("--clients", type=int, default=20, help="following clients (1 in 5 over SSE)")
    p.add_argument("--workers", type=int, default=2,
                   help="load-generator processes the followers are spread over")  # fmt: skip
    p.add_argument("--rate", type=float, default=50.0, help="publications per second in total")
    p.add_argument(
        "--ws-share",
        type=float,
        default=0.3,
        help="share of the publications sent over WebSocket (the rest over HTTP)",
    )
    p.add_argument("--size", type=int, default=256, help="about this many bytes per publication")
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="the nodes' HUB_MAX_QUEUE (queued frames per session)",
    )
    p.add_argument(
        "--faults",
        default="all",
        help="comma-separated fault kinds to inject (default: all; none: no faults)",
    )
    p.add_argument("--settle", type=float, default=10.0,
                   help="at most this many seconds for clients to catch up at the end")  # fmt: skip
    p.add_argument("--keep-logs", action="store_true",
                   help="write every client's log (clients.json), not only offending ones")  # fmt: skip
    p.add_argument(
        "--out", help="folder for the summary and offending logs (default: a new temp dir)"
    )


def _check_args(a: argparse.Namespace) -> str | None:
    if not 1 <= a.duration <= 86_400:
        return "--duration must be between 1 and 86400 seconds"
    if not 2 <= a.nodes <= 16:
        return "--nodes must be between 2 and 16"
    if not 1 <= a.rooms <= 10_000 or not 1 <= a.clients <= 10_000:
        return "--rooms and --clients must be between 1 and 10000"
    if not 1 <= a.workers <= 64:
        return "--workers must be between 1 and 64"
    if not 0 < a.rate <= 10_000:
        return "--rate must be more than 0 and at most 10000"
    if not 0 <= a.settle <= 600:
        return "--settle must be between 0 and 600"
    if not 0 <= a.ws_share <= 1:
        return "--ws-share must be between 0 and 1"
    if not 0 <= a.size <= 60_000:
        return "--size must be between 0 and 60000"  # 0: as small as it gets
    if not 1 <= a.max_queue <= 1_000_000:
        return "--max-queue must be between 1 and 1000000"
    if _kinds(a.faults) is None:
        return f"--faults takes 'all', 'none' or kinds among: {', '.join(FAULT_KINDS)}"
    return None


def _kinds(text: str) -> set[str] | None:
    """The fault kinds named by ``--faults``; None when one is unknown."""
    if text == "all":
        return set(FAULT_KINDS)
    if text == "none":
        return set()
    kinds = {k.strip() for k in text.split(",") if k.strip()}
    return kinds if kinds and kinds <= set(FAULT_KINDS) else None


async def _history(urls: list[str], key: str, room: str) -> dict[str, Any]:
    """``{"epoch", "messages"}``: every stored publication of ``room``, oldest first, read
    through the history API."""
    out: list[dict[str, Any]] = []
    since = "0"
    async with httpx.AsyncClient(timeout=10) as c:
        for _ in range(100_000):
            r = await c.get(f"{urls[0]}/v1/rooms/{room}/messages",
                            params={"since": since, "limit": 1000},
                            headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            r.raise_for_status()
            body = r.json()
            out += [{"epoch": m["epoch"], "offset": m["offset"], "key": m["data"].get("key")}
                    for m in body["messages"]]  # fmt: skip
            if not body["more"] or not body["messages"]:
                return {"epoch": body["epoch"], "messages": out}
            since = body["cursor"]
    raise SoakError(f"history of {room} did not end")


def _heads(acks: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Each room's last acknowledged position: the epoch of its last acknowledgement and the
    highest offset acknowledged in that epoch."""
    epoch = {a["room"]: a["epoch"] for a in acks}
    head: dict[str, list[Any]] = {}
    for a in acks:
        if a["epoch"] == epoch[a["room"]]:
            at = head.setdefault(a["room"], [a["epoch"], 0])
            at[1] = max(at[1], a["offset"])
    return head


def _specs(a: argparse.Namespace, rooms: list[str], rng: random.Random) -> list[FollowerSpec]:
    """The followers: one room each, or (``i % 4 == 2`` or ``i % 10 == 9``) two or three on one
    connection; one in five over SSE; one in four of the WebSocket ones presence members; one in
    ten slow."""
    specs = []
    for i in range(a.clients):
        seed = rng.random()
        mine = [rooms[i % len(rooms)]]
        if i % 4 == 2 or i % 10 == 9:
            mine = list(dict.fromkeys(rooms[(i + k) % len(rooms)] for k in range(2 + i % 2)))
        # A slow client reads at two to four times its rooms' rate (at most 30 ms a frame):
        # slow, yet able to catch up after a resume, as the settle time expects.
        rate = a.rate * len(mine) / len(rooms)
        slow = min(0.03, random.Random(seed).uniform(0.25, 0.5) / rate) if i % 10 == 3 else 0.0
        sse = i % 5 == 4
        specs.append(FollowerSpec(f"c{i}", "sse" if sse else "ws", mine, seed, slow,
                                  presence=not sse and i % 4 == 1))  # fmt: skip
    return specs


async def soak(a: argparse.Namespace, out: Path) -> tuple[Report, dict[str, Any]]:
    """One run; returns the checker's report and the summary."""
    key, secret = secrets.token_urlsafe(24), secrets.token_urlsafe(32)
    cluster = Cluster(out, a.nodes, key, secret, history=max(10_000, int(a.rate * a.duration * 2)),
                      env_extra={"HUB_MAX_QUEUE": str(a.max_queue)})  # fmt: skip
    rng = random.Random(a.seed)
    rooms = [f"soak-{a.seed}-{i}" for i in range(a.rooms)]
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    tasks: list[asyncio.Task[None]] = []
    specs = _specs(a, rooms, rng)
    crowd = Crowd(specs, a.workers, cluster.urls, key)
    try:
        try:
            raise_fd_limit(a.clients + 1024)  # a node may hold every client, a worker its share
        except SystemExit as exc:
            raise SoakError(str(exc)) from None
        await cluster.start()
        await crowd.start()
        await crowd.settle({}, 10.0)  # everyone subscribed before publishing starts

        async def drop(n: int, _hold: float) -> int:
            chosen = rng.sample(specs, min(n, len(specs)))
            return await crowd.drop([s.cid for s in chosen])

        async def stall(n: int, hold: float) -> int:
            chosen = rng.sample(specs, min(n, len(specs)))
            return await crowd.stall([s.cid for s in chosen], hold)

        faults = schedule(a.seed, a.duration, a.nodes, _kinds(a.faults))
        injector = Injector(cluster, faults, {"client_drop": drop, "client_stall": stall})
        pub = Publisher(cluster.urls, key, rooms, a.rate, a.seed, ws_share=a.ws_share,
                        size=a.size)  # fmt: skip
        stop = asyncio.Event()
        t0 = time.monotonic()
        pub_task = asyncio.create_task(pub.run(stop))
        inj_task = asyncio.create_task(injector.run(t0))
        tasks += [pub_task, inj_task]
        await asyncio.sleep(a.duration)
        await inj_task  # a last restart may overrun the duration a little
        stop.set()
        await pub_task
        await crowd.settle(_heads(pub.acks), a.settle)
        logs = await crowd.finish()
        history = {r: await _history(cluster.urls, key, r) for r in rooms}
    finally:
        # Nothing may restart a process once the stopping begins: end every task first.
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        crowd.close()
        cluster.close()
        await cluster.close_proxies()
        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
    lives = [life for s in specs for life in logs[s.cid]]
    rep = check(pub.acks, lives, history)
    summary = {
        "seed": a.seed, "duration": a.duration, "nodes": a.nodes, "rooms": a.rooms,
        "clients": a.clients, "rate": a.rate,
        "faults": {k: injector.done.get(k, 0) for k in FAULT_KINDS},
        "fault_log": injector.log,
        "publishes": {"sent": pub.sent, "acknowledged": len(pub.acks), "retries": pub.retries,
                      "failed": len(pub.failed), "http": pub.by_transport["http"],
                      "ws": pub.by_transport["ws"]},
        "clients_kinds": {"ws": sum(s.kind == "ws" for s in specs),
                          "sse": sum(s.kind == "sse" for s in specs),
                          "presence": sum(s.presence for s in specs),
                          "slow": sum(s.slow > 0 for s in specs),
                          "several_rooms": sum(len(s.rooms) > 1 for s in specs)},
        "workers": crowd.n,
        "presence_checks": rep.presence_checks, "presence_events": rep.presence_events,
        "deliveries_checked": rep.deliveries, "client_lives": rep.lives, "resumes": rep.resumes,
        "final_lives": rep.final_lives, "gaps": dict(rep.gaps),
        "skips_without_acknowledged_loss": rep.unacked_skips,
        "violations": len(rep.violations),
    }  # fmt: skip
    (out / "gaps.json").write_text(json.dumps(rep.gap_log, indent=1))
    if not rep.ok or a.keep_logs:  # enough to run the checker again: check(acks, lives, history)
        (out / "clients.json").write_text(json.dumps([logs[s.cid] for s in specs]))
        (out / "acks.json").write_text(json.dumps(pub.acks))
        (out / "history.json").write_text(json.dumps(history))
        (out / "failed_publishes.json").write_text(json.dumps(pub.failed, indent=1))
    if not rep.ok:
        bad = rep.offending_clients()
        (out / "violations.json").write_text(json.dumps(rep.violations, indent=1))
        for cid in sorted(bad):
            (out / f"client-{cid}.json").write_text(json.dumps(logs[cid], indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return rep, summary


def _print(summary: dict[str, Any], rep: Report, out: Path) -> None:
    p = summary["publishes"]
    print(f"hubbub soak: seed {summary['seed']}, {summary['nodes']} nodes, {summary['rooms']} "
          f"rooms, {summary['clients']} clients ({summary['workers']} worker processes), "
          f"{summary['rate']:g}/s for {summary['duration']:g}s")  # fmt: skip
    print("faults: " + ", ".join(f"{k} {v}" for k, v in summary["faults"].items()))
    print(f"publishes: {p['sent']} sent ({p['http']} HTTP, {p['ws']} WebSocket), "
          f"{p['acknowledged']} acknowledged, {p['retries']} retries, {p['failed']} failed")  # fmt: skip
    print(f"deliveries checked: {summary['deliveries_checked']}; client lives: "
          f"{summary['client_lives']}; resumes: {summary['resumes']}; open at the end: "
          f"{summary['final_lives']}")  # fmt: skip
    print(f"presence: {summary['presence_checks']} subscribe replies checked, "
          f"{summary['presence_events']} join/leave received")  # fmt: skip
    gaps = ", ".join(f"{k} {v}" for k, v in summary["gaps"].items()) or "none"
    print(f"gaps: {gaps}")
    print(f"violations: {summary['violations']}")
    for v in rep.violations[:20]:
        print(f"  {json.dumps(v)[:300]}")
    print(f"output: {out}")


def cmd_soak(a: argparse.Namespace) -> int:
    err = _check_args(a)
    if err:
        print(f"hubbub soak: {err}", file=sys.stderr)
        return 2
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="hubbub-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        rep, summary = asyncio.run(soak(a, out))
    except SoakError as exc:
        print(f"hubbub soak: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):  # SIGINT, or SIGTERM (cancels the run)
        print("hubbub soak: interrupted; every process was stopped", file=sys.stderr)
        return 130
    _print(summary, rep, out)
    return 0 if rep.ok else 1
