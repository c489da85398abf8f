"""deploy/nginx.conf in front of two real nodes on one Redis (issue #9, PROTOCOL.md §3, §4).

Debian's nginx runs the very file from deploy/, with only the upstream addresses, the listen
port and the temp paths substituted (see :func:`tests.ops.harness.render_nginx`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RedisProc, token
from tests.ops.harness import (
    Nginx,
    NodeProc,
    auth_headers,
    metric,
    nginx_cluster,
)
from tests.wsclient import WS

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def cluster(
    redis_proc: RedisProc, tmp_path: Path
) -> AsyncIterator[tuple[Nginx, list[NodeProc]]]:
    """Two nodes on one private Redis behind nginx."""
    async with nginx_cluster(tmp_path, redis_proc.url, HUB_SSE_PING_INTERVAL="1") as running:
        yield running


async def test_websocket_through_nginx_reaches_both_nodes(
    cluster: tuple[Nginx, list[NodeProc]],
) -> None:
    nginx, nodes = cluster
    clients = [await WS.connect(nginx.ws_url, token(f"u{i}")) for i in range(4)]
    for c in clients:
        await c.result({"type": "subscribe", "room": "lobby"})
    async with httpx.AsyncClient(timeout=5) as h:
        # least_conn spreads the four sockets over both nodes: the fan-out crosses Redis.
        per_node = [await metric(h, n.url, 'hubbub_connections{transport="ws"}') for n in nodes]
        assert per_node == [2, 2], per_node
        for i in range(3):
            r = await h.post(f"{nginx.url}/v1/rooms/lobby/messages", json={"data": {"i": i}},
                             headers=auth_headers())  # fmt: skip
            assert r.status_code == 201, r.text
    for c in clients:
        msgs = await c.messages(3)
        assert [m["data"]["i"] for m in msgs] == [0, 1, 2]
        assert [m["offset"] for m in msgs] == [1, 2, 3]
        await c.close()
    # /metrics is not published through the balancer (PROTOCOL.md §8): each node is scraped
    # directly, and the two nodes tell themselves apart by hubbub_node_info.
    seen: set[str] = set()
    async with httpx.AsyncClient(timeout=5) as h:
        for path in ("/metrics", "/metrics/", "//metrics", "/%6detrics", "/metrics?x=1"):
            r = await h.get(f"{nginx.url}{path}")
            assert r.status_code == 404 and "hubbub_" not in r.text, path
        for n in nodes:
            text = (await h.get(f"{n.url}/metrics")).text
            seen |= set(re.findall(r'hubbub_node_info\{node="([^"]+)"\}', text))
    assert len(seen) == 2, seen
    # The query string (and so ?token=…) never reaches nginx's access log.
    log = nginx.access_log()
    assert "/v1/ws" in log and "token=" not in log, log[-2000:]


async def _sse_events(resp: httpx.Response, out: asyncio.Queue[dict[str, Any]]) -> None:
    """Parse an event stream into dicts {id?, event?, data?, retry?} as blocks complete."""
    block: dict[str, Any] = {}
    async for line in resp.aiter_lines():
        if line == "":
            if block:
                await out.put(block)
            block = {}
        elif line.startswith(":"):
            await out.put({"comment": line})
        else:
            name, _, value = line.partition(":")
            block[name] = value[1:] if value.startswith(" ") else value


async def _next_event(q: asyncio.Queue[dict[str, Any]], within: float = 5) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        ev = await asyncio.wait_for(q.get(), max(0.01, deadline - time.monotonic()))
        if "data" in ev:
            return ev


async def test_sse_through_nginx_unbuffered_and_resumes(
    cluster: tuple[Nginx, list[NodeProc]],
) -> None:
    nginx, _ = cluster
    url = f"{nginx.url}/v1/rooms/news/events"
    hdr = {"Authorization": f"Bearer {token('reader')}"}
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=10)) as h:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        async with h.stream("GET", url, headers=hdr) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            reader = asyncio.create_task(_sse_events(resp, q))
            try:
                first = await asyncio.wait_for(q.get(), 5)
                assert "retry" in first and "id" in first, first  # §4: retry + head id
                last_id = first["id"]
                for i in range(2):
                    sent = time.monotonic()
                    r = await h.post(f"{nginx.url}/v1/rooms/news/messages",
                                     json={"data": {"i": i}}, headers=auth_headers())  # fmt: skip
                    assert r.status_code == 201
                    # Unbuffered: the event shows up while the stream stays open, at once.
                    ev = await _next_event(q, 3)
                    assert time.monotonic() - sent < 2
                    assert json.loads(ev["data"])["data"] == {"i": i}
                    assert ev.get("event") == "message"
                    last_id = ev["id"]
            finally:
                reader.cancel()
        # Missed while away, then resumed with Last-Event-ID (possibly on the other node).
        for i in range(2, 5):
            r = await h.post(f"{nginx.url}/v1/rooms/news/messages", json={"data": {"i": i}},
                             headers=auth_headers())  # fmt: skip
            assert r.status_code == 201
        q = asyncio.Queue()
        async with h.stream("GET", url, headers={**hdr, "Last-Event-ID": last_id}) as resp:
            assert resp.status_code == 200
            reader = asyncio.create_task(_sse_events(resp, q))
            try:
                got = [json.loads((await _next_event(q))["data"]) for _ in range(3)]
                assert [g["data"]["i"] for g in got] == [2, 3, 4]
                assert [g["offset"] for g in got] == [3, 4, 5]
                r = await h.post(f"{nginx.url}/v1/rooms/news/messages",
                                 json={"data": {"i": 5}}, headers=auth_headers())  # fmt: skip
                live = json.loads((await _next_event(q))["data"])
                assert live["data"] == {"i": 5} and live["offset"] == 6
            finally:
                reader.cancel()


async def _bucket_addresses(redis_url: str) -> set[str]:
    """The client addresses of the HTTP rate buckets (``http:ip:<addr>``) in Redis."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k.decode() async for k in r.scan_iter(match="*http:ip:*")]
    finally:
        await r.aclose()
    return {k.split("http:ip:", 1)[1].rstrip("}") for k in keys}


async def test_client_sent_forwarded_for_does_not_pick_the_address(
    redis_proc: RedisProc, tmp_path: Path
) -> None:
    """Behind the shipped nginx config, a client's own ``X-Forwarded-For`` never becomes the
    address the node rate-limits by; nginx's (the trusted proxy's) header does. The client
    connects from 127.0.0.2 and from 127.0.0.1 (the proxy's own address, the hardest case)."""
    env = {"HUB_API_RATE": "1000/s:2000", "FORWARDED_ALLOW_IPS": "127.0.0.1"}
    async with nginx_cluster(tmp_path, redis_proc.url, n=1, **env) as (nginx, (node,)):
        hdr = {"Authorization": f"Bearer {token('reader')}", "X-Forwarded-For": "6.6.6.6"}
        for source in ("127.0.0.2", "127.0.0.1"):
            transport = httpx.AsyncHTTPTransport(local_address=source)
            async with httpx.AsyncClient(transport=transport, timeout=5) as h:
                r = await h.get(f"{nginx.url}/v1/rooms/lobby/messages", headers=hdr)
                assert r.status_code == 200, r.text
                assert "RateLimit-Remaining" in r.headers
        assert await _bucket_addresses(redis_proc.url) == {"127.0.0.2", "127.0.0.1"}

        # Straight to the node from an address it does not trust: the header is ignored.
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(transport=transport, timeout=5) as h:
            r = await h.get(f"{node.url}/v1/rooms/lobby/messages",
                            headers={**hdr, "X-Forwarded-For": "7.7.7.7"})  # fmt: skip
            assert r.status_code == 200
        assert await _bucket_addresses(redis_proc.url) == {"127.0.0.2", "127.0.0.1"}

        # From the trusted proxy address, `hubbub serve` does read the header (uvicorn's
        # proxy-headers middleware wraps the app on Hubbub's own HTTP protocol too).
        async with httpx.AsyncClient(timeout=5) as h:
            r = await h.get(f"{node.url}/v1/rooms/lobby/messages",
                            headers={**hdr, "X-Forwarded-For": "198.51.100.7"})  # fmt: skip
            assert r.status_code == 200
        assert "198.51.100.7" in await _bucket_addresses(redis_proc.url)
