"""Smoke test of ``hubbub bench``: a tiny run with its own node, nothing lost, the JSON shape.

No timing assertions: speed is measured by the tool, not asserted by tests (docs/design.md)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hubbub.app import create_app
from tests.conftest import API_KEY, Node, free_port, make_settings, need_tool, serve, token
from tests.wsclient import WS

ROOT = Path(__file__).resolve().parent.parent


def _bench(*extra: str) -> dict[str, object]:
    cmd = [sys.executable, "-m", "hubbub.cli", "bench", "--subscribers", "20",
           "--duration", "1", "--json", *extra]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


NODE = ("--loadgen", "node")


@pytest.mark.parametrize(
    "extra",
    [
        (),
        ("--transport", "sse", "--publish", "ws", "--rooms", "2"),
        ("--transport", "mixed"),
        (*NODE, "--publish", "ws"),
        (*NODE, "--transport", "sse", "--publish", "ws", "--rooms", "2"),
        (*NODE, "--transport", "mixed"),
    ],
)
def test_bench_smoke(extra: tuple[str, ...]) -> None:
    if "node" in extra:
        need_tool("node")
    r = _bench(*extra)
    assert r["lost"] == 0
    assert r["duplicated"] == 0
    assert r["disconnected"] == 0
    assert isinstance(r["published"], int) and r["published"] > 0
    workload = r["workload"]
    assert isinstance(workload, dict)
    assert workload["subscribers"] == 20 and workload["connected"] == 20
    assert workload["loadgen"] == ("node" if "node" in extra else "python")
    expected = r["published"] * 20 // workload["rooms"]
    assert r["deliveries"] == expected
    latency = r["latency_ms"]
    assert isinstance(latency, dict) and set(latency) == {"p50", "p90", "p99", "max"}
    for key in ("deliveries_per_s", "server_rss_kib", "rss_per_connection_kib", "server_cpu_s",
                "deliveries_per_cpu_s", "publish_per_s"):  # fmt: skip
        assert isinstance(r[key], int | float), key
    loadgen = r["loadgen"]
    assert isinstance(loadgen, dict) and isinstance(loadgen["saturated"], bool)
    assert len(loadgen["cpu_percent"]) == loadgen["processes"]
    server = r["server"]
    assert isinstance(server, dict) and len(server["pids"]) == 1


@pytest.mark.parametrize(
    "script,dialect", [("ws_server.py", "plain"), ("sio_server.py", "socketio")]
)
def test_node_loadgen_reference_servers(script: str, dialect: str) -> None:
    """The Node.js worker speaks the reference servers' dialects (bench/compare.py's runs)."""
    need_tool("node")
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / script), str(port)], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "server not up"
                time.sleep(0.1)
        r = _bench("--url", f"http://127.0.0.1:{port}", "--dialect", dialect, "--publish", "ws",
                   *NODE)  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(15)
    assert (r["lost"], r["duplicated"], r["disconnected"]) == (0, 0, 0)
    assert isinstance(r["published"], int) and r["published"] > 0
    assert r["deliveries"] == r["published"] * 20


# ---- the WebSocket fan-out fast path (transports/direct.py DirectWriter) --------------------


async def _fan_out_in_order(node: Node, n: int = 400, subscribers: int = 3) -> list[Any]:
    subs = [await WS.connect(node.ws_url, token(f"s{i}")) for i in range(subscribers)]
    for s in subs:
        await s.result({"type": "subscribe", "room": "fast"})
    pub = await WS.connect(node.ws_url, API_KEY)  # an API key: no client publish rate
    for i in range(n):  # no ids: no replies, publications back to back
        await pub.send({"type": "publish", "room": "fast", "data": i})
    for s in subs:
        got = [m["data"] for m in await s.messages(n, timeout=20)]
        assert got == list(range(n))
    directs = [s.direct for s in node.hub.sessions.values() if s.identity.sub.startswith("s")]
    for s in [*subs, pub]:
        await s.close()
    return directs


async def test_direct_path_in_order_nothing_lost(node: Node) -> None:
    directs = await _fan_out_in_order(node)
    assert len(directs) == 3 and all(d is not None for d in directs)


async def test_plain_asgi_fallback_with_deflate_keeps_order() -> None:
    """On uvicorn's own protocols (the plain-ASGI fallback), with per-message deflate on, no
    direct path is offered: every frame goes through the queue and the ASGI send, in order."""
    app = create_app(make_settings(), handle_signals=False)
    server, task, port = await serve(
        app, app.settings, fast_path=False, ws_per_message_deflate=True
    )
    node = Node(app.state.hub, server, task, port)
    try:
        directs = await _fan_out_in_order(node, n=100, subscribers=2)
        assert directs == [None, None]
    finally:
        await node.stop()
