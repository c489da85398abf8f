"""``GET /v1/stats`` (PROTOCOL.md §5): one node's connections, rooms and counters as JSON, for
the admin page. Real uvicorn nodes, real WebSocket clients."""

from __future__ import annotations

from typing import Any

import httpx

from hubbub.hub.hub import Hub
from hubbub.transports import openapi
from hubbub.transports.http import node_stats
from tests.conftest import API_KEY, make_settings, token
from tests.transports.test_openapi import validate
from tests.wsclient import WS

KEY = {"Authorization": f"Bearer {API_KEY}"}


def metric(text: str, line_start: str) -> float:
    """The value of the /metrics sample whose line starts with ``line_start``."""
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in /metrics")


async def test_stats_counts_what_the_node_serves(node: Any) -> None:
    alice = await WS.connect(node.ws_url, token("alice"))
    bob = await WS.connect(node.ws_url, token("bob"))
    try:
        await alice.result({"type": "subscribe", "room": "lobby"})
        await alice.result({"type": "subscribe", "room": "news"})
        await bob.result({"type": "subscribe", "room": "lobby"})
        await alice.result({"type": "publish", "room": "lobby", "data": 1})
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            r = await http.post("/v1/rooms/news/messages", json={"data": 2}, headers=KEY)
            assert r.status_code == 201
            r = await http.get("/v1/stats", headers=KEY)
            assert r.status_code == 200, r.text
            assert r.headers["content-type"].startswith("application/json")
            stats = r.json()
            metrics = (await http.get("/metrics")).text
        validate(stats, openapi.SCHEMAS["Stats"], openapi.spec())
        assert stats["node"] == node.hub.node_id
        assert stats["connections"] == {"ws": 2, "sse": 0}
        assert stats["sessions"] == 2
        assert stats["subscriptions"] == 3
        assert stats["rooms"] == 2
        assert stats["publications"] == 2
        assert stats["publications_by_transport"] == {"http": 1, "ws": 1}
        assert stats["deliveries"] == 3  # lobby: alice and bob; news: alice
        assert stats["broker"] == {"kind": "memory", "up": True}
        assert stats["draining"] is False
        # The same numbers as /metrics.
        assert stats["deliveries"] == metric(metrics, "hubbub_deliveries_total")
        assert stats["subscriptions"] == metric(metrics, "hubbub_subscriptions")
        assert stats["connections"]["ws"] == metric(metrics, 'hubbub_connections{transport="ws"}')
    finally:
        await alice.close()
        await bob.close()
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        later = (await http.get("/v1/stats", headers=KEY)).json()
    assert later["time"] >= stats["time"]
    assert later["connections"]["ws"] == 0
    assert later["disconnects"]  # the two closes, by code
    assert all(k.isdigit() for k in later["disconnects"])


async def test_stats_needs_an_api_key(node: Any) -> None:
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        r = await http.get("/v1/stats")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = await http.get("/v1/stats", headers={"Authorization": "Bearer not-the-key"})
        assert r.status_code == 401
        r = await http.get("/v1/stats", headers={"Authorization": f"Bearer {token('alice')}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        r = await http.post("/v1/stats", headers=KEY)
        assert r.status_code == 405
        assert r.json()["error"]["code"] == "bad_request"


async def test_stats_in_dev_mode_answers_like_the_other_admin_endpoints(node_factory: Any) -> None:
    """Dev mode has no API key: a loopback guest gets what it gets from GET /v1/rooms (200),
    and the stats say dev_mode (tests/transports/test_dev_admin.py has the other addresses)."""
    node = await node_factory(jwt_secret=None, api_keys=())
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        rooms = await http.get("/v1/rooms")
        stats = await http.get("/v1/stats")
    assert stats.status_code == rooms.status_code == 200
    assert stats.json()["dev_mode"] is True


def test_stats_never_show_the_broker_url() -> None:
    settings = make_settings(broker_url="redis://:s3cret-pass@127.0.0.1:1/0")
    stats = node_stats(Hub(settings))
    assert stats["broker"] == {"kind": "redis", "up": False}
    assert "s3cret" not in str(stats)
