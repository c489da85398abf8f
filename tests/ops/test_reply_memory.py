"""Hardening case 47 (PROTOCOL.md §8 "Replies and replays are bounded in bytes"), measured on a
real node: ``hubbub serve`` in a subprocess, its RSS read from /proc, on a private
redis-server and on memory://.

A room holds 300 messages of 60 KB (about 18 MB). Ten SSE streams resume it with ``since=0``
and ten WebSocket clients ask for ``history {limit: 1000}``, and none of them reads a byte
(plain sockets with a small receive buffer). The node must not grow by more than 150 MiB in
all (before the byte bounds it grew by about 580 MiB on Redis, 210 MiB on memory://): each
history page stops at ``HUB_MAX_REPLY_BYTES`` with ``more: true``, and each replay is read from
the broker and written a page at a time as its socket drains, so a client that does not read
holds about a page. Meanwhile honest clients on the same node get everything: an SSE stream
resuming from 0 receives all 300 messages once, in order (its replay goes on page by page as
it reads), and history pages continued with their cursor join up to the whole room.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import API_KEY, RedisProc, token
from tests.helpers import until
from tests.mute import sse_not_reading, ws_not_reading
from tests.ops.harness import NodeProc
from tests.wsclient import WS

MIB = 1024 * 1024
ROOM = "big"
HISTORY = {"type": "history", "room": ROOM, "limit": 1000, "id": 1}
COUNT = 300
DATA = 60_000  # characters of data per message
CLIENTS = 10  # of each kind
LIMIT_MIB = 150
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# 60 KB messages fit the default HUB_MAX_MESSAGE_BYTES (64 KiB); set anyway, so the case
# does not depend on that default. HUB_MAX_REPLY_BYTES is left at its default (1 MiB).
ENV = {"HUB_MAX_MESSAGE_BYTES": "65536"}


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid``, in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


@pytest.fixture
def redis_node(tmp_path: Path, redis_proc: RedisProc) -> Iterator[NodeProc]:
    node = NodeProc(tmp_path, redis_proc.url, dict(ENV)).start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def memory_node(tmp_path: Path) -> Iterator[NodeProc]:
    node = NodeProc(tmp_path, "memory://", dict(ENV)).start()
    try:
        yield node
    finally:
        node.stop()


async def _fill(c: httpx.AsyncClient) -> None:
    for i in range(COUNT):
        body = {"data": {"i": i + 1, "pad": "x" * DATA}}
        r = await c.post(f"/v1/rooms/{ROOM}/messages", json=body, headers=AUTH)
        assert r.status_code == 201, r.text


async def _metrics(c: httpx.AsyncClient) -> dict[str, float]:
    """The node's counters and gauges by name and labels (``bytes_sent_total{transport="ws"}``)."""
    text = (await c.get("/metrics")).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("hubbub_"):
            name, _, value = line.rpartition(" ")
            out[name.removeprefix("hubbub_")] = float(value)
    return out


async def _honest_sse(node: NodeProc) -> list[int]:
    """The ``i`` of every message an SSE stream resuming from 0 receives, until the 300th."""
    seen: list[int] = []
    url = f"{node.url}/v1/rooms/{ROOM}/events"
    async with (
        httpx.AsyncClient(timeout=30) as c,
        c.stream("GET", url, params={"since": "0", "token": token("honest")}) as r,
    ):
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                frame = json.loads(line[6:])
                if frame.get("type") == "message":
                    seen.append(frame["data"]["i"])
                    if len(seen) == COUNT:
                        break
    return seen


async def _honest_history(node: NodeProc) -> list[int]:
    """Every message through WebSocket ``history`` pages, each continued with its cursor."""
    ws = await WS.connect(node.ws_url, token("pager"))
    seen: list[int] = []
    try:
        page = await ws.result({"type": "history", "room": ROOM, "limit": 1000}, timeout=30)
        while True:
            size = sum(len(json.dumps(m, separators=(",", ":"))) for m in page["messages"])
            # The bound counts stored bodies; a frame adds its offset and epoch.
            assert page["messages"] and size <= MIB + 64 * len(page["messages"])
            seen += [m["data"]["i"] for m in page["messages"]]
            if not page["more"]:
                return seen
            since = page["cursor"]
            page = await ws.result(
                {"type": "history", "room": ROOM, "since": since, "limit": 1000}, timeout=30
            )
    finally:
        await ws.close()


async def _case_47(node: NodeProc) -> dict[str, Any]:
    await node.wait_live()
    assert node.proc is not None
    pid = node.proc.pid
    socks: list[socket.socket] = []
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as c:
        await _fill(c)
        before = _status(pid)["VmRSS"]
        try:
            for i in range(CLIENTS):
                socks.append(
                    await asyncio.to_thread(sse_not_reading, node.port, ROOM, token(f"sse{i}"))
                )
                socks.append(
                    await asyncio.to_thread(ws_not_reading, node.port, token(f"w{i}"), HISTORY)
                )

            async def served() -> dict[str, float] | None:
                # Every non-reader has its session and is being served: each WebSocket got
                # its history page, and the streams' replays are under way (their sockets
                # take a few MB each). Before the byte bound, this waited for every stream to
                # have read its whole replay from the broker, so the growth below shows it.
                m = await _metrics(c)
                sse, ws = m['connections{transport="sse"}'], m['connections{transport="ws"}']
                ws_bytes = m['bytes_sent_total{transport="ws"}']
                sse_bytes = m['bytes_sent_total{transport="sse"}']
                done = sse >= CLIENTS and ws >= CLIENTS and ws_bytes >= CLIENTS * MIB * 0.9
                return m if done and sse_bytes >= CLIENTS * MIB / 2 else None

            await until(served, within=30, what="the non-readers to be served")
            peak = 0
            for _ in range(20):  # the node is waiting on them now; watch it for 2 s
                await asyncio.sleep(0.1)
                peak = max(peak, _status(pid)["VmHWM"])
            m = await _metrics(c)
            # Honest clients on the same node get everything, in order.
            streamed, paged = await asyncio.gather(_honest_sse(node), _honest_history(node))
            assert streamed == list(range(1, COUNT + 1))
            assert paged == list(range(1, COUNT + 1))
        finally:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.close()
    return {
        "rss_before_mib": round(before / 1024),
        "grown_mib": round((peak - before) / 1024, 1),
        # What the node handed to the non-readers' sockets: the streams got a fraction of
        # the 10 × 18 MB of their replays (their sockets hold no more), not all of it.
        "sse_mib_written": round(m['bytes_sent_total{transport="sse"}'] / MIB, 1),
        "ws_mib_written": round(m['bytes_sent_total{transport="ws"}'] / MIB, 1),
    }


async def test_case_47_redis(redis_node: NodeProc) -> None:
    figures = await _case_47(redis_node)
    print("case 47 on redis://", figures)
    assert figures["grown_mib"] < LIMIT_MIB, figures
    assert figures["sse_mib_written"] < CLIENTS * COUNT * DATA / MIB / 2, figures


async def test_case_47_memory(memory_node: NodeProc) -> None:
    figures = await _case_47(memory_node)
    print("case 47 on memory://", figures)
    assert figures["grown_mib"] < LIMIT_MIB, figures
    assert figures["sse_mib_written"] < CLIENTS * COUNT * DATA / MIB / 2, figures
