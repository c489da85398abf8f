"""Resource exhaustion at the edge (hardening cases 17, 24): slowloris connections, half-sent
headers, compression refused. Bounded in count and time; traffic to 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from tests.conftest import token
from tests.wsclient import WS


def _rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def _closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bool:
    try:
        while True:
            data = await asyncio.wait_for(reader.read(4096), timeout)
            if not data:
                return True
    except (TimeoutError, ConnectionError):
        return False


async def test_slowloris_and_half_sent_headers_are_cut(node_factory: Any) -> None:
    n = await node_factory(handshake_timeout=1.0)
    before = _rss_kib()
    idle = [await asyncio.open_connection("127.0.0.1", n.port) for _ in range(300)]
    half = []
    for _ in range(200):
        r, w = await asyncio.open_connection("127.0.0.1", n.port)
        w.write(b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websock")
        half.append((r, w))
    # A legitimate client still connects while the junk is open.
    ws = await WS.connect(n.ws_url, token())
    assert await ws.result({"type": "ping"}) == {}
    results = await asyncio.gather(
        *(_closed_by_server(r, 30) for r, _ in idle),
        *(_closed_by_server(r, 30) for r, _ in half),
    )
    assert all(results), f"{results.count(False)} connections were not closed by the server"
    for _, w in idle + half:
        w.close()
    # The established WebSocket is untouched by the header timeout.
    assert await ws.result({"type": "ping"}) == {}
    await ws.close()
    # In-process server and clients: RSS stays in the same ballpark (no per-connection leak).
    assert _rss_kib() - before < 200 * 1024


async def test_keepalive_request_with_slow_headers_is_cut(node_factory: Any) -> None:
    n = await node_factory(handshake_timeout=1.0)
    r, w = await asyncio.open_connection("127.0.0.1", n.port)
    w.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    w.write(b"GET /health/live HTTP/1.1\r\nHo")  # second request, never finished
    assert await _closed_by_server(r, 10)
    w.close()


async def test_permessage_deflate_is_not_negotiated(node: Any) -> None:
    ws = await WS.connect(node.ws_url, token())  # websockets offers deflate by default
    response = ws.conn.response
    ext = response.headers.get("Sec-WebSocket-Extensions") if response else None
    assert not ext
    await ws.close()


async def test_many_sessions_come_and_go(node: Any) -> None:
    clients = await asyncio.gather(*(WS.connect(node.ws_url, token(f"u{i}")) for i in range(200)))
    await asyncio.gather(*(c.result({"type": "subscribe", "room": "crowd"}) for c in clients))
    await asyncio.gather(*(c.close() for c in clients))
    for _ in range(200):
        if not node.hub.sessions:
            break
        await asyncio.sleep(0.02)
    assert not node.hub.sessions and not node.hub.rooms.rooms
    with contextlib.suppress(Exception):
        await node.hub.ready()
