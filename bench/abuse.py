"""``hubbub bench --abuse``: mixed abuse against two nodes on one Redis, with legitimate traffic
alongside, for ``--duration`` seconds; prints what the abusers got and what it cost.

Two nodes with the shipped defaults (``HUB_CLIENT_COMMAND_RATE``, ``HUB_USER_PUBLISH_RATE``,
``HUB_MAX_CONNECTIONS_PER_USER``, ``HUB_MAX_REPLY_BYTES``, queue bounds) share a private
``redis-server``. Each abuser holds an ordinary client token of its own user:

* ``churn``: subscribe, unsubscribe, history and presence of never-published rooms, as fast as
  the socket takes them, reconnecting whenever it is closed;
* ``hog``: replays of a room holding 300 publications of 60 KB (SSE ``since=0`` and WebSocket
  ``history {limit: 1000}`` and ``subscribe`` with ``since: 0``) by clients that never read;
* ``flood``: publishes from three connections of one user on both nodes, as fast as it can;
* ``conns``: one user opening 150 connections over both nodes, again and again;
* ``presence``: joining and leaving the room where the legitimate members sit;
* ``revoked``: a user whose tokens are revoked at the start keeps reconnecting with its token;
* ``junk``: malformed, oversized and unknown frames.

The legitimate side: WebSocket and SSE subscribers of ``news`` (every publication once, in
order), presence members of ``lobby``, and an HTTP publisher (API key) at 20 publications/s
whose latency is measured. Sampled every second: each node's RSS, Redis ``used_memory`` and key
count. At the end: Redis keys created by the churn and their TTLs.

The run passes when the legitimate clients lost nothing and were never disconnected, the
flooding user got no more than its budget, the connection cap held, no revoked token was
served, no key made by a read outlives 600 s, and each node's RSS grew less than
``RSS_BUDGET_MIB``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import orjson
import websockets
from websockets.asyncio.client import ClientConnection, connect

from hubbub.bench.run import free_port, percentile, proc_rss_kib, stop_process, wait_ready
from hubbub.bench.storm import _node, start_redis, wait_redis

RSS_BUDGET_MIB = 200
REDIS_GROWTH_MIB = 16  # Redis after the run against before it (the churned rooms' keys remain)
READ_KEY_TTL_S = 600
BIG_MESSAGES, BIG_BYTES = 300, 60_000
PUBLISH_RATE = 20.0
PONG = '{"type":"pong"}'


class Refused(ConnectionError):
    """The hub closed a new connection before its ``welcome``; the text is the close code."""


@dataclass
class Tally:
    """Counters of one kind of client (abusers or the legitimate side)."""

    frames_sent: int = 0
    served: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    opened: int = 0

    def figures(self) -> dict[str, Any]:
        return {"frames_sent": self.frames_sent, "served": self.served, "opened": self.opened,
                "refused": dict(self.refused), "closes": dict(self.closes)}  # fmt: skip


class Abuse:
    """One run: the cluster, the clients, the samples."""

    def __init__(self, duration: float, seed: int) -> None:
        self.duration = duration
        self.rng = random.Random(seed)
        self.key = secrets.token_urlsafe(24)
        self.secret = secrets.token_urlsafe(32)
        self.urls: list[str] = []
        self.pids: list[int] = []
        self.redis_port = 0
        self.stop = asyncio.Event()
        self.tally: dict[str, Tally] = {}
        self.samples: list[dict[str, Any]] = []
        self.acked: list[int] = []  # offsets of news the publisher got answered
        self.pub_latency_us: list[int] = []
        self.pub_failed = 0
        self.legit: list[Follower] = []
        self.members_frames: list[int] = []
        self.conns_peak = 0
        self.t0 = 0.0

    # ---- helpers -------------------------------------------------------------------------------
    def token(self, user: str, iat: int | None = None) -> str:
        now = int(time.time())
        claims = {"sub": user, "iat": now if iat is None else iat, "exp": now + 3600}
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def ws_url(self, i: int) -> str:
        return self.urls[i % len(self.urls)].replace("http://", "ws://") + "/v1/ws"

    def t(self, name: str) -> Tally:
        return self.tally.setdefault(name, Tally())

    async def open_ws(self, i: int, token: str, **kw: Any) -> ClientConnection:
        ws = await connect(self.ws_url(i), additional_headers={"Authorization": f"Bearer {token}"},
                           open_timeout=10, ping_interval=None, close_timeout=1, **kw)  # fmt: skip
        welcome = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if welcome.get("type") != "welcome":  # a ``disconnect`` frame, then the close
            with contextlib.suppress(asyncio.TimeoutError, websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            await ws.close()
            raise Refused(str(ws.close_code))
        return ws

    @staticmethod
    def close_code(exc: BaseException) -> str:
        if isinstance(exc, Refused):
            return str(exc)
        if isinstance(exc, websockets.ConnectionClosed):
            rcvd = exc.rcvd
            return str(rcvd.code) if rcvd is not None else "none"
        return type(exc).__name__

    async def _count_replies(self, ws: ClientConnection, tally: Tally) -> None:
        async for raw in ws:
            f = orjson.loads(raw)
            kind = f.get("type")
            if kind == "reply":
                tally.served += 1
            elif kind == "error":
                tally.refused[str(f.get("code"))] += 1
            elif kind == "ping":
                await ws.send(PONG)

    async def _abuser(self, name: str, i: int, user: str, frames: Any, pace: float) -> None:
        """Connect, send ``frames()`` as fast as allowed (at most one per ``pace`` s), count
        the answers; reconnect after any close until the run ends."""
        tally = self.t(name)
        while not self.stop.is_set():
            try:
                ws = await self.open_ws(i, self.token(user))
            except (OSError, TimeoutError, ConnectionError, websockets.WebSocketException) as exc:
                tally.closes[f"connect:{self.close_code(exc)}"] += 1
                await asyncio.sleep(0.5)
                continue
            tally.opened += 1
            reader = asyncio.create_task(self._count_replies(ws, tally))
            try:
                while not self.stop.is_set() and not reader.done():
                    await ws.send(orjson.dumps(frames()).decode())
                    tally.frames_sent += 1
                    await asyncio.sleep(pace)
                await ws.close()
            except websockets.ConnectionClosed:
                pass
            with contextlib.suppress(BaseException):
                await reader
            code = ws.close_code
            tally.closes[str(code)] += 1
            await asyncio.sleep(0.2)
            i += 1

    # ---- abusers -------------------------------------------------------------------------------
    async def churn(self, i: int) -> None:
        n = 0

        def frame() -> dict[str, Any]:
            nonlocal n
            n += 1
            room = f"void-{i}-{n // 4}"
            kind = ("subscribe", "history", "presence", "unsubscribe")[n % 4]
            return {"type": kind, "id": n, "room": room}

        await self._abuser("churn", i, f"mallory-churn-{i}", frame, 0.002)

    async def presence(self, i: int) -> None:
        n = 0

        def frame() -> dict[str, Any]:
            nonlocal n
            n += 1
            if n % 2:
                return {"type": "subscribe", "id": n, "room": "lobby", "presence": True}
            return {"type": "unsubscribe", "id": n, "room": "lobby"}

        await self._abuser("presence", i, "mallory-presence", frame, 0.005)

    async def junk(self, i: int) -> None:
        n = 0
        big = "x" * 80_000

        def frame() -> Any:
            nonlocal n
            n += 1
            return [{"type": "nope", "id": n}, {"type": "publish", "id": n, "room": "news!!",
                    "data": 1}, {"type": "publish", "id": n, "room": "junk", "data": big},
                    {"id": "x"}][n % 4]  # fmt: skip

        await self._abuser("junk", i, "mallory-junk", frame, 0.02)

    async def flood(self, i: int) -> None:
        n = 0

        def frame() -> dict[str, Any]:
            nonlocal n
            n += 1
            return {"type": "publish", "id": n, "room": "spam", "data": {"n": n}}

        await self._abuser("flood", i, "mallory-flood", frame, 0.002)

    async def conns(self) -> None:
        """150 connections of one user over both nodes, held 20 s, then again."""
        tally = self.t("conns")
        token = self.token("mallory-conns")
        while not self.stop.is_set():
            held: list[ClientConnection] = []

            async def one(i: int, held: list[ClientConnection] = held) -> None:
                try:
                    ws = await self.open_ws(i, token)
                except websockets.ConnectionClosed as exc:
                    tally.closes[self.close_code(exc)] += 1
                    return
                except (OSError, TimeoutError, ConnectionError, websockets.WebSocketException) as e:
                    tally.closes[f"connect:{self.close_code(e)}"] += 1
                    return
                tally.opened += 1
                held.append(ws)

            await asyncio.gather(*(one(i) for i in range(150)))
            await asyncio.sleep(1.0)  # a refused session is closed right after its welcome
            alive = [ws for ws in held if ws.close_code is None]
            for ws in held:
                if ws.close_code is not None:
                    tally.closes[str(ws.close_code)] += 1
            self.conns_peak = max(self.conns_peak, len(alive))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 20)
            await asyncio.gather(*(ws.close() for ws in alive), return_exceptions=True)
            await asyncio.sleep(2.0)  # closed sessions stop counting at once; let them go

    async def hog_ws(self, i: int) -> None:
        """Ask for large replies and never read them; start over every 30 s."""
        tally = self.t("hog")
        while not self.stop.is_set():
            try:
                ws = await self.open_ws(i, self.token(f"mallory-hog-{i}"), max_queue=1)
            except (OSError, TimeoutError, ConnectionError, websockets.WebSocketException) as exc:
                tally.closes[f"connect:{self.close_code(exc)}"] += 1
                await asyncio.sleep(1)
                continue
            tally.opened += 1
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(json.dumps({"type": "subscribe", "id": 1, "room": "big",
                                          "since": {"epoch": None, "offset": 0}}))  # fmt: skip
                for n in range(2, 12):
                    await ws.send(json.dumps({"type": "history", "id": n, "room": "big",
                                              "limit": 1000}))  # fmt: skip
                tally.frames_sent += 11
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 30)
            # the transport stopped reading long ago: close without waiting for an answer
            ws.transport.abort()
            tally.closes[str(ws.close_code)] += 1

    async def hog_sse(self, i: int) -> None:
        """An SSE stream from ``since=0`` whose client never reads (a small receive buffer)."""
        tally = self.t("hog")
        host, port = self.urls[i % 2].removeprefix("http://").split(":")
        token = self.token(f"mallory-hogsse-{i}")
        while not self.stop.is_set():
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            loop = asyncio.get_running_loop()
            try:
                await loop.sock_connect(s, (host, int(port)))
                req = (f"GET /v1/rooms/big/events?since=0 HTTP/1.1\r\nHost: {host}:{port}\r\n"
                       f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n")  # fmt: skip
                await loop.sock_sendall(s, req.encode())
                tally.opened += 1
                tally.frames_sent += 1
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 30)
            except OSError as exc:
                tally.closes[f"connect:{type(exc).__name__}"] += 1
                await asyncio.sleep(1)
            finally:
                s.close()

    async def revoked(self) -> None:
        tally = self.t("revoked")
        user = "mallory-revoked"
        stolen = self.token(user, iat=int(time.time()) - 5)
        ws = await self.open_ws(0, stolen)
        async with httpx.AsyncClient(base_url=self.urls[1], timeout=10) as http:
            r = await http.post(f"/v1/users/{user}/disconnect", json={"revoke": True},
                                headers={"Authorization": f"Bearer {self.key}"})  # fmt: skip
            r.raise_for_status()
        with contextlib.suppress(websockets.ConnectionClosed, asyncio.TimeoutError):
            await asyncio.wait_for(ws.recv(), 5)
            await asyncio.wait_for(ws.recv(), 5)
        tally.closes[str(ws.close_code)] += 1
        i = 0
        while not self.stop.is_set():
            i += 1
            tally.frames_sent += 1
            try:
                ws = await self.open_ws(i, stolen)
            except websockets.ConnectionClosed as exc:
                tally.closes[self.close_code(exc)] += 1
            except (OSError, TimeoutError, ConnectionError, websockets.WebSocketException) as exc:
                tally.closes[f"connect:{self.close_code(exc)}"] += 1
            else:
                tally.opened += 1  # served: must never happen
                await ws.close()
            await asyncio.sleep(0.5)

    # ---- the legitimate side -------------------------------------------------------------------
    async def publisher(self) -> None:
        hdr = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(timeout=10, headers=hdr) as http:
            n = 0
            t0 = time.monotonic()
            while not self.stop.is_set():
                n += 1
                sent = time.monotonic_ns()
                try:
                    r = await http.post(f"{self.urls[n % 2]}/v1/rooms/news/messages",
                                        json={"data": {"n": n}})  # fmt: skip
                    r.raise_for_status()
                    self.acked.append(int(r.json()["offset"]))
                    self.pub_latency_us.append((time.monotonic_ns() - sent) // 1000)
                except httpx.HTTPError:
                    self.pub_failed += 1
                await asyncio.sleep(max(0.0, t0 + n / PUBLISH_RATE - time.monotonic()))

    async def member(self, i: int) -> None:
        ws = await self.open_ws(i, self.token(f"member-{i}"))
        await ws.send(json.dumps({"type": "subscribe", "id": 1, "room": "lobby",
                                  "presence": True}))  # fmt: skip
        frames = 0
        idx = len(self.members_frames)
        self.members_frames.append(0)
        try:
            while not self.stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    f = orjson.loads(await asyncio.wait_for(ws.recv(), 1))
                    if f.get("type") == "ping":
                        await ws.send(PONG)
                        continue
                    frames += 1
                    self.members_frames[idx] = frames
                    await asyncio.sleep(0.01)  # a slowish reader
        except websockets.ConnectionClosed as exc:
            self.t("legit").closes[f"member:{self.close_code(exc)}"] += 1
        await ws.close()

    async def settle(self) -> None:
        """Wait until every follower has the last acknowledged offset (at most 10 s)."""
        last = max(self.acked, default=0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(f.last < last for f in self.legit):
            await asyncio.sleep(0.1)

    # ---- samples -------------------------------------------------------------------------------
    async def sampler(self) -> None:
        while not self.stop.is_set():
            await self.sampler_once()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)

    async def redis_cmd(self, *args: str) -> Any:
        r, w = await asyncio.open_connection("127.0.0.1", self.redis_port)
        try:
            w.write(_resp(*args))
            await w.drain()
            return await _read_reply(r)
        finally:
            w.close()

    async def redis_info(self) -> dict[str, Any]:
        info = (await self.redis_cmd("INFO", "memory")).decode()
        used = next(
            int(x.split(":")[1]) for x in info.split("\r\n") if x.startswith("used_memory:")
        )
        keys = await self.redis_cmd("DBSIZE")
        return {"redis_mib": round(used / 2**20, 1), "redis_keys": keys}

    async def read_keys(self) -> dict[str, Any]:
        """Keys of the churned rooms: how many, and the longest TTL (-1: none)."""
        cursor, longest, count, persistent = b"0", 0, 0, 0
        while True:
            cursor, keys = await self.redis_cmd(
                "SCAN", cursor.decode(), "MATCH", "*void-*", "COUNT", "1000"
            )
            for k in keys:
                ttl = await self.redis_cmd("TTL", k.decode())
                if ttl == -2:  # expired between SCAN and TTL (the run is as long as READ_TTL)
                    continue
                count += 1
                if ttl == -1:  # no expiry
                    persistent += 1
                longest = max(longest, ttl)
            if cursor == b"0":
                return {"keys": count, "persistent": persistent, "longest_ttl_s": longest}

    # ---- the run -------------------------------------------------------------------------------
    async def main(self) -> dict[str, Any]:
        hdr = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(timeout=30, headers=hdr) as http:
            blob = "y" * BIG_BYTES
            for n in range(BIG_MESSAGES):
                r = await http.post(f"{self.urls[0]}/v1/rooms/big/messages",
                                    json={"data": {"n": n, "blob": blob}})  # fmt: skip
                r.raise_for_status()
        self.t0 = time.monotonic()
        self.legit = [Follower(self, i, "ws") for i in range(12)] + [
            Follower(self, i, "sse") for i in range(4)
        ]
        legit = [asyncio.create_task(f.run()) for f in self.legit]
        legit += [asyncio.create_task(self.member(i)) for i in range(4)]
        await asyncio.sleep(1.0)
        await self.sampler_once()
        rss0 = self.samples[-1]["rss_mib"]
        redis0 = self.samples[-1]["redis_mib"]
        tasks = [asyncio.create_task(c) for c in (
            self.publisher(), self.sampler(), self.conns(), self.revoked(),
            *(self.churn(i) for i in range(4)), *(self.presence(i) for i in range(2)),
            *(self.flood(i) for i in range(3)), self.junk(0),
            *(self.hog_ws(i) for i in range(6)), *(self.hog_sse(i) for i in range(6)),
        )]  # fmt: skip
        try:
            await asyncio.sleep(self.duration)
        finally:
            self.stop.set()
        await asyncio.wait(tasks, timeout=15)
        await self.settle()
        for f in self.legit:
            f.done = True
        await asyncio.wait(legit, timeout=10)
        for t in [*tasks, *legit]:
            t.cancel()
        await self.sampler_once()
        ready: list[Any] = []
        async with httpx.AsyncClient(timeout=10) as http:
            for url in self.urls:
                try:
                    ready.append((await http.get(f"{url}/health/ready")).status_code)
                except httpx.HTTPError as exc:
                    ready.append(type(exc).__name__)
        return self.report(rss0, redis0, ready, await self.read_keys())

    async def sampler_once(self) -> None:
        self.samples.append({"t": round(time.monotonic() - self.t0, 1),
                             "rss_mib": [round(proc_rss_kib(p) / 1024, 1) for p in self.pids],
                             **await self.redis_info()})  # fmt: skip

    def report(
        self, rss0: list[float], redis0: float, ready: list[Any], read_keys: dict[str, Any]
    ) -> dict[str, Any]:
        peak = [max(s["rss_mib"][i] for s in self.samples) for i in range(len(self.pids))]
        lat = sorted(self.pub_latency_us)
        budget = 100 * self.duration + 200 + 3 * 16  # HUB_USER_PUBLISH_RATE 100/s:200, leases
        acked = set(self.acked)
        legit = {
            "followers": len(self.legit),
            "lost": sum(len(acked - f.seen - set(range(0, f.start + 1))) for f in self.legit),
            "duplicated": sum(f.dups for f in self.legit),
            "out_of_order": sum(f.disorder for f in self.legit),
            "gaps": sum(f.gaps for f in self.legit),
            "closes": dict(self.t("legit").closes),
            "publishes": len(self.acked),
            "publish_failed": self.pub_failed,
            "publish_p50_ms": round(percentile(lat, 0.5) / 1000, 1) if lat else None,
            "publish_p99_ms": round(percentile(lat, 0.99) / 1000, 1) if lat else None,
            "member_frames_max": max(self.members_frames, default=0),
        }
        r = {
            "duration_s": self.duration,
            "rss_start_mib": rss0,
            "rss_peak_mib": peak,
            "rss_end_mib": self.samples[-1]["rss_mib"],
            "redis_start_mib": redis0,
            "redis_peak_mib": max(s["redis_mib"] for s in self.samples),
            "ready_at_end": ready,
            "redis_end_mib": self.samples[-1]["redis_mib"],
            "redis_keys_end": self.samples[-1]["redis_keys"],
            "read_keys": read_keys,
            "legit": legit,
            "abusers": {k: v.figures() for k, v in self.tally.items() if k != "legit"},
            "flood_accepted": self.t("flood").served,
            "flood_budget": int(budget),
            "conns_peak": self.conns_peak,
        }
        r["violations"] = violations(r)
        return r


def violations(r: dict[str, Any]) -> list[str]:
    """What broke a promise (empty: the run passed)."""
    out = []
    lg = r["legit"]
    if lg["lost"] or lg["duplicated"] or lg["out_of_order"]:
        out.append(f"legitimate followers: lost {lg['lost']}, duplicated {lg['duplicated']}, "
                   f"out of order {lg['out_of_order']}")  # fmt: skip
    if lg["closes"]:
        out.append(f"legitimate clients were closed: {lg['closes']}")
    if r["flood_accepted"] > r["flood_budget"]:
        out.append(f"flooding user published {r['flood_accepted']} > {r['flood_budget']}")
    if r["conns_peak"] > 100:
        out.append(f"one user held {r['conns_peak']} connections > 100")
    if r["abusers"].get("revoked", {}).get("opened", 0):
        out.append("a revoked token was served")
    if any(code != 200 for code in r["ready_at_end"]):
        out.append(f"a node was not ready after the run: {r['ready_at_end']}")
    if r["redis_end_mib"] - r["redis_start_mib"] > REDIS_GROWTH_MIB:
        out.append(f"Redis memory grew {r['redis_end_mib'] - r['redis_start_mib']:.1f} MiB "
                   f"> {REDIS_GROWTH_MIB} over the run")  # fmt: skip
    rk = r["read_keys"]
    if rk["persistent"] or rk["longest_ttl_s"] > READ_KEY_TTL_S:
        out.append(f"keys made by reads outlive {READ_KEY_TTL_S} s: {rk}")
    for start, peak in zip(r["rss_start_mib"], r["rss_peak_mib"], strict=True):
        if peak - start > RSS_BUDGET_MIB:
            out.append(f"node RSS grew {peak - start:.0f} MiB > {RSS_BUDGET_MIB}")
    return out


class Follower:
    """A legitimate subscriber of ``news`` (WebSocket or SSE) that checks order and loss."""

    def __init__(self, run: Abuse, i: int, transport: str) -> None:
        self.abuse, self.i, self.transport = run, i, transport
        self.seen: set[int] = set()
        self.start = 0
        self.last = 0
        self.dups = self.disorder = self.gaps = 0
        self.done = False

    def take(self, offset: int) -> None:
        if offset in self.seen:
            self.dups += 1
        elif offset < self.last:
            self.disorder += 1
        self.seen.add(offset)
        self.last = max(self.last, offset)

    async def run_ws(self) -> None:
        ws = await self.abuse.open_ws(self.i, self.abuse.token(f"reader-{self.i}"))
        await ws.send(json.dumps({"type": "subscribe", "id": 1, "room": "news"}))
        try:
            while not self.done:
                with contextlib.suppress(asyncio.TimeoutError):
                    f = orjson.loads(await asyncio.wait_for(ws.recv(), 0.5))
                    if f.get("type") == "reply":
                        self.start = self.last = int(f["result"]["offset"])
                    elif f.get("type") == "message" and f.get("room") == "news":
                        self.take(int(f["offset"]))
                    elif f.get("type") == "gap":
                        self.gaps += 1
                    elif f.get("type") == "ping":
                        await ws.send(PONG)
        except websockets.ConnectionClosed as exc:
            self.abuse.t("legit").closes[f"ws:{self.abuse.close_code(exc)}"] += 1
        await ws.close()

    async def run_sse(self) -> None:
        base = self.abuse.urls[self.i % 2]
        hdr = {"Authorization": f"Bearer {self.abuse.token(f'sse-reader-{self.i}')}"}
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as http,
            http.stream("GET", f"{base}/v1/rooms/news/events", headers=hdr) as resp,
        ):
            first = True
            async for line in resp.aiter_lines():
                if self.done:
                    return
                if line.startswith("data: "):
                    f = orjson.loads(line[6:])
                    if f.get("room") == "news" and "offset" in f and f.get("type") == "message":
                        if first:  # a live stream: its first message follows the head
                            first = False
                            self.start = self.last = int(f["offset"]) - 1
                        self.take(int(f["offset"]))
                elif line.startswith("event: hub.gap"):
                    self.gaps += 1
                elif line.startswith("event: hub.disconnect"):
                    self.abuse.t("legit").closes["sse:disconnect"] += 1

    async def run(self) -> None:
        await (self.run_ws() if self.transport == "ws" else self.run_sse())


# ---- a little RESP for the samples ------------------------------------------------------------
def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


async def _read_reply(r: asyncio.StreamReader) -> Any:
    """One RESP2 reply: bytes (simple or bulk string), int, or a list of replies."""
    line = (await r.readline())[:-2]
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest
    if kind == b":":
        return int(rest)
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b"$":
        n = int(rest)
        return b"" if n < 0 else (await r.readexactly(n + 2))[:-2]
    if kind == b"*":
        return [await _read_reply(r) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected reply {line!r}")


# ---- entry -------------------------------------------------------------------------------------
def run_abuse(duration: float, seed: int = 1) -> dict[str, Any]:
    """Start Redis and two nodes, run the abuse for ``duration`` s, stop everything."""
    run = Abuse(duration, seed)
    run.redis_port = free_port()
    redis = start_redis(run.redis_port, False)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        wait_redis(run.redis_port, redis)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        env.update(HUB_API_KEYS=run.key, HUB_JWT_SECRET=run.secret, HUB_API_RATE="0",
                   HUB_LOG_LEVEL="warning", HUB_BROKER_URL=f"redis://127.0.0.1:{run.redis_port}/0")  # fmt: skip
        ports = [free_port(), free_port()]
        procs = [_node(p, env, False) for p in ports]
        run.urls = [f"http://127.0.0.1:{p}" for p in ports]
        for url, proc in zip(run.urls, procs, strict=True):
            wait_ready(url, proc)
        run.pids = [p.pid for p in procs]
        return asyncio.run(run.main())
    finally:
        for proc in procs:
            stop_process(proc)
        redis.send_signal(signal.SIGKILL)
        redis.wait()


def render_abuse(r: dict[str, Any]) -> str:
    lg = r["legit"]
    lines = [
        f"abuse: {r['duration_s']:.0f} s, two nodes on one Redis, shipped limits",
        f"  node RSS MiB: start {r['rss_start_mib']}, peak {r['rss_peak_mib']}, "
        f"end {r['rss_end_mib']}",
        f"  nodes ready at the end: {r['ready_at_end']}",
        f"  Redis: start {r['redis_start_mib']} MiB, peak {r['redis_peak_mib']} MiB, "
        f"end {r['redis_end_mib']} MiB, "
        f"{r['redis_keys_end']} keys; keys of churned rooms {r['read_keys']}",
        f"  legitimate: {lg['followers']} followers, lost {lg['lost']}, duplicated "
        f"{lg['duplicated']}, gaps {lg['gaps']}, closes {lg['closes'] or 'none'}; "
        f"{lg['publishes']} publishes, p50 {lg['publish_p50_ms']} ms, p99 "
        f"{lg['publish_p99_ms']} ms; presence member frames at most {lg['member_frames_max']}",
        f"  flooding user: {r['flood_accepted']} publishes accepted (budget {r['flood_budget']}); "
        f"one user's connections at most {r['conns_peak']}",
    ]
    for name, t in sorted(r["abusers"].items()):
        lines.append(f"  {name}: {t}")
    lines.append("  violations: " + ("; ".join(r["violations"]) or "none"))
    return "\n".join(lines)
