"""Room churn (PROTOCOL.md §8 "Reading a room keeps nothing", hardening case 46), measured on a
real node process: one token subscribes to (as a presence member), leaves, and reads the
history and presence of 20 000 never-published rooms over one WebSocket.

* ``memory://``: the node's RSS (``/proc/PID/status``) grows less than 12 MiB over the churn
  (it used to keep about 1 KiB per room for good: 20 MiB).
* ``redis://`` (3 000 rooms: the same rule, each room costing Redis round trips): every key the
  churn created expires within 600 s, and the keys that existed before it (the node's own, the
  rooms listing) are no larger afterwards.

``HUB_CLIENT_COMMAND_RATE`` is raised for these tests so that the rooms go through quickly;
frames are pipelined in batches."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.conftest import RedisProc
from tests.helpers import until
from tests.ops.harness import NodeProc
from tests.wsclient import WS

pytestmark = pytest.mark.timeout(120)

ROOMS = 20_000
REDIS_ROOMS = 3_000  # each room costs several Redis round trips: fewer, same rule
WARM_UP = 1_000
BATCH = 250  # rooms per batch: 1 000 frames in flight
FAST = {"HUB_CLIENT_COMMAND_RATE": "1000000/s:1000000"}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def churn(ws: WS, count: int, tag: str) -> None:
    """Subscribe (with presence), unsubscribe, history and presence for rooms ``tag:0`` ..
    ``tag:count-1``; every frame must be answered with a reply (the client reads only the head
    of each answer: the node, not the test, is what is measured)."""
    for start in range(0, count, BATCH):
        frames = []
        for i in range(start, min(start + BATCH, count)):
            room = f"{tag}:{i}"
            frames += [{"type": "subscribe", "room": room, "presence": True},
                       {"type": "unsubscribe", "room": room},
                       {"type": "history", "room": room},
                       {"type": "presence", "room": room}]  # fmt: skip
        for f in frames:
            await ws.conn.send(json.dumps({**f, "id": 1}))
        answered = 0
        while answered < len(frames):
            raw = await asyncio.wait_for(ws.conn.recv(), 30)
            assert isinstance(raw, str)
            if raw.startswith('{"type":"reply"'):
                answered += 1
            else:
                assert not raw.startswith('{"type":"error"'), raw


async def test_room_churn_on_memory_keeps_nothing(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "memory://", dict(FAST)).start()
    try:
        await node.wait_live()
        assert node.proc is not None
        ws = await WS.open(node.ws_url, "churner")
        await churn(ws, WARM_UP, "warm")  # allocator pools and caches at their working size
        before = rss_kib(node.proc.pid)
        await churn(ws, ROOMS, "churn")
        after = rss_kib(node.proc.pid)
        print(f"node RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB over {ROOMS} rooms")
        assert after - before < 12 * 1024, (before, after)
        await ws.close()
    finally:
        node.stop()


async def _sizes(client: aioredis.Redis, prefix: str) -> dict[bytes, tuple[int, int]]:
    """Every key under ``prefix``: (TTL in seconds, size: fields, members, entries or bytes)."""
    out: dict[bytes, tuple[int, int]] = {}
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        kind = (await client.type(key)).decode()
        size = {
            "hash": client.hlen, "zset": client.zcard, "set": client.scard,
            "stream": client.xlen, "string": client.strlen, "list": client.llen,
        }[kind](key)  # fmt: skip
        out[key] = (await client.ttl(key), await size)
    return out


async def test_room_churn_on_redis_keeps_no_key_past_600_s(
    tmp_path: Path, redis_proc: RedisProc
) -> None:
    prefix = "churn:"
    node = NodeProc(tmp_path, redis_proc.url, {**FAST, "HUB_REDIS_PREFIX": prefix}).start()
    client = aioredis.Redis.from_url(redis_proc.url)
    try:
        await node.wait_live()
        ws = await WS.open(node.ws_url, "churner")
        # A room held throughout keeps the rooms listing's keys (index, counts, the node's own
        # set) in place, so the churn can only be seen to grow them, never to create them.
        keeper = await WS.open(node.ws_url, "keeper")
        await keeper.join("kept", presence=False)

        async def listed() -> bool:
            own = [k async for k in client.scan_iter(match=f"{prefix}{{rooms}}:node:*")]
            listing = [f"{prefix}{{rooms}}:index", f"{prefix}{{rooms}}:counts"]
            return bool(own) and await client.exists(*listing) == len(listing)

        await until(listed, 10.0, "the rooms listing")
        await churn(ws, 10, "warm")
        before = await _sizes(client, prefix)
        await churn(ws, REDIS_ROOMS, "churn")
        after = await _sizes(client, prefix)
        created = {k: v for k, v in after.items() if k not in before}
        lasting = {k: ttl for k, (ttl, _) in created.items() if not 0 < ttl <= 600}
        assert not lasting, list(lasting.items())[:5]

        async def grown() -> dict[bytes, tuple[int, int]]:
            # the listing is written in the background: it shrinks back once the counts land
            now = await _sizes(client, prefix)
            return {k: (before[k][1], size) for k, (_, size) in now.items()
                    if k in before and size > before[k][1]}  # fmt: skip

        async def settled() -> bool:
            return not await grown()

        await until(settled, 10.0, "the listing back to its size")
        await keeper.close()
        print(f"{len(created)} keys created by {REDIS_ROOMS} rooms, all expiring within 600 s")
        await ws.close()
    finally:
        await client.aclose()
        node.stop()
