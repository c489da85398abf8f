"""The soak's load: HTTP publishers with idempotency keys, and WebSocket / SSE followers that
log every client life (one connection) for :mod:`hubbub.bench.soak_check`.

A follower reconnects to a random node whenever its connection ends (or the soak drops it) and
resumes from its position: WebSocket with ``since`` {epoch, offset}, SSE with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import connect

Pos = tuple[str | None, int]
RETRY_STATUSES = {500, 502, 503, 504}


class Publisher:
    """Publishes ``{"key", "n"}`` at ``rate``/s over HTTP across ``rooms`` on random nodes. A
    publish that fails in transit (5xx, connection error, timeout) is retried with the same
    Idempotency-Key on another node until ``give_up`` seconds passed. ``acks`` holds the 201s."""

    def __init__(self, urls: list[str], key: str, rooms: list[str], rate: float, seed: int):
        self.urls, self.api_key, self.rooms, self.rate = urls, key, rooms, rate
        self.rng = random.Random(seed ^ 0x5EED)
        self.acks: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.retries = 0
        self.sent = 0
        self.give_up = 20.0
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, until: asyncio.Event) -> None:
        """Publish until ``until`` is set, then wait for the publishes in flight."""
        async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as c:
            t0, n = time.monotonic(), 0
            while not until.is_set():
                room = self.rng.choice(self.rooms)
                t = asyncio.create_task(self._one(c, room, n))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
                n += 1
                self.sent = n
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        until.wait(), max(0.0, t0 + n / self.rate - time.monotonic())
                    )
            if self._tasks:
                await asyncio.gather(*self._tasks)

    async def _one(self, c: httpx.AsyncClient, room: str, n: int) -> None:
        key = f"soak-{n}"
        headers = {"Authorization": f"Bearer {self.api_key}", "Idempotency-Key": key}
        deadline = time.monotonic() + self.give_up
        last = ""
        while time.monotonic() < deadline:
            url = f"{self.rng.choice(self.urls)}/v1/rooms/{room}/messages"
            try:
                r = await c.post(url, json={"data": {"key": key, "n": n}}, headers=headers)
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            else:
                if r.status_code == 201:
                    b = r.json()
                    self.acks.append({"room": room, "epoch": b["epoch"], "offset": b["offset"],
                                      "key": key})  # fmt: skip
                    return
                last = f"{r.status_code} {r.text[:200]}"
                if r.status_code not in RETRY_STATUSES:
                    break
            self.retries += 1
            await asyncio.sleep(0.05 + 0.1 * self.rng.random())
        self.failed.append({"room": room, "key": key, "last": last})


class Follower:
    """One client following one room through reconnects; ``lives`` is its log."""

    kind = "?"

    def __init__(self, cid: str, room: str, urls: list[str], key: str, rng: random.Random):
        self.cid, self.room, self.urls, self.api_key, self.rng = cid, room, urls, key, rng
        self.lives: list[dict[str, Any]] = []
        self.pos: Pos | None = None
        self.live = False  # subscribed and reading
        self._life: asyncio.Task[None] | None = None
        self._stop = False

    def _new_life(self, node: str) -> dict[str, Any]:
        life = {"client": self.cid, "life": len(self.lives), "kind": self.kind, "room": self.room,
                "node": node, "since": list(self.pos) if self.pos else None, "events": [],
                "final": False, "end": None}  # fmt: skip
        self.lives.append(life)
        return life

    async def run(self) -> None:
        while not self._stop:
            node = self.rng.choice(self.urls)
            self._life = asyncio.create_task(self._connect(node))
            try:
                await self._life
            except asyncio.CancelledError:
                if self._stop:
                    return
            except Exception as exc:  # a life ends for any reason: log it and resume
                if self.lives and self.lives[-1]["end"] is None and self.lives[-1]["node"] == node:
                    self.lives[-1]["end"] = repr(exc)[:200]
            self.live = False
            if self._stop:
                return
            await asyncio.sleep(0.05 + 0.25 * self.rng.random())

    def drop(self) -> None:
        """End the current connection abruptly; the client resumes elsewhere."""
        if self._life is not None and not self._life.done():
            if self.lives:
                self.lives[-1]["end"] = self.lives[-1]["end"] or "dropped by the soak"
            self._life.cancel()

    def finish(self) -> None:
        """End for good; the open life (if live) is marked final for the checker."""
        self._stop = True
        if self.live and self.lives:
            self.lives[-1]["final"] = True
        if self._life is not None:
            self._life.cancel()

    def _msg(self, ev: list[Any], epoch: str | None, offset: int) -> None:
        self.lives[-1]["events"].append(ev)
        self.pos = (epoch, offset)

    async def _connect(self, node: str) -> None:
        raise NotImplementedError


class WsFollower(Follower):
    kind = "ws"

    async def _connect(self, node: str) -> None:
        url = node.replace("http://", "ws://") + "/v1/ws"
        hdrs = {"Authorization": f"Bearer {self.api_key}"}
        async with connect(url, additional_headers=hdrs, open_timeout=3, ping_interval=None,
                           close_timeout=1, max_size=None) as ws:  # fmt: skip
            first = json.loads(await asyncio.wait_for(ws.recv(), 3))
            if first.get("type") != "welcome":
                return  # e.g. a draining node's disconnect: go elsewhere
            life = self._new_life(node)
            sub: dict[str, Any] = {"type": "subscribe", "id": 1, "room": self.room}
            if self.pos is not None:
                sub["since"] = {"epoch": self.pos[0], "offset": self.pos[1]}
            await ws.send(json.dumps(sub))
            try:
                async for raw in ws:
                    f = json.loads(raw)
                    t = f.get("type")
                    if t == "message" and "offset" in f:
                        self._msg(["msg", f["epoch"], f["offset"]], f["epoch"], f["offset"])
                    elif t == "gap":
                        self._msg(["gap", f["epoch"], f["from"], f["to"]], f["epoch"], f["to"])
                    elif t == "reply" and f.get("id") == 1:
                        r = f["result"]
                        life["events"].append(["start", r["epoch"], r["offset"]])
                        self.pos = (r["epoch"], r["offset"])
                        self.live = True
                    elif t == "error":
                        life["end"] = f"error {f.get('code')}: {f.get('message')}"
                        return
                    elif t == "ping":
                        await ws.send('{"type":"pong"}')
                    elif t == "disconnect":
                        life["end"] = f"disconnect {f.get('code')}"
            except websockets.ConnectionClosed:
                pass
            life["end"] = life["end"] or f"closed {ws.close_code}"


class SseFollower(Follower):
    kind = "sse"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.last_id: str | None = None

    async def _connect(self, node: str) -> None:
        hdrs = {"Authorization": f"Bearer {self.api_key}"}
        if self.last_id is not None:
            hdrs["Last-Event-ID"] = self.last_id
        url = f"{node}/v1/rooms/{self.room}/events"
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(3.0, read=20.0)) as h,
            h.stream("GET", url, headers=hdrs) as resp,
        ):
            if resp.status_code != 200:
                return
            life = self._new_life(node)
            block: dict[str, str] = {}
            async for line in resp.aiter_lines():
                if line == "":
                    self._event(life, block)
                    block = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    block[name] = block[name] + "\n" + value if name in block else value
            life["end"] = life["end"] or "stream ended"

    def _event(self, life: dict[str, Any], block: dict[str, str]) -> None:
        event = block.get("event", "message")
        if "data" in block and event == "message":
            f = json.loads(block["data"])
            self._msg(["msg", f["epoch"], f["offset"]], f["epoch"], f["offset"])
        elif "data" in block and event == "hub.gap":
            f = json.loads(block["data"])
            self._msg(["gap", f["epoch"], f["from"], f["to"]], f["epoch"], f["to"])
        elif "data" in block and event == "hub.disconnect":
            life["end"] = f"hub.disconnect {block['data'][:100]}"
        elif "id" in block and not life["events"]:
            # The first block: the position this stream starts from (single-room cursor).
            _, epoch, off = block["id"].rsplit("~", 1)[-1].split(".")
            life["events"].append(["start", None if epoch == "0" else epoch, int(off)])
            self.pos = (None if epoch == "0" else epoch, int(off))
            self.live = True
        if "id" in block:
            self.last_id = block["id"]
