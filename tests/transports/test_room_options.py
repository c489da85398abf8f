"""Per-room options ([[rooms]] tables) on every transport, on memory:// and on Redis.

Each test runs twice: on one memory:// node (``a`` and ``b`` are the same node) and on two
nodes sharing one real redis-server (``a`` and ``b`` differ, so every limit is seen across
nodes). Clients are real WebSocket, SSE and HTTP clients.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from hubbub.hub.room_options import parse_tables
from hubbub.hub.settings import Settings
from tests.conftest import API_KEY, Node, RedisProc, make_settings, start_node, token
from tests.helpers import until
from tests.transports.test_sse import sse
from tests.wsclient import WS, close_all

TABLES = [
    {"pattern": "chat:*", "history_size": 3, "publish_rate": "2/s:2", "max_subscribers": 2},
    {"pattern": "feed:*", "client_publish": False, "presence": False, "history_size": 5},
    {"pattern": "meet:*", "signal": True, "max_subscribers": 2},
    {"pattern": "small:*", "max_message_bytes": 100, "recover": False, "join_leave": False},
    {"pattern": "open:*", "anonymous": True},
    {"pattern": "brief:*", "history_ttl": 0.4},
    {"pattern": "none:*", "history_size": 0},
    {"pattern": "chat:*", "history_size": 999},  # never used: the first match wins
]
KEY = {"Authorization": f"Bearer {API_KEY}"}


def room_settings(**kw: Any) -> Settings:
    return make_settings(rooms=parse_tables(TABLES, "test.toml"), history_size=10, **kw)


@pytest.fixture(params=["memory", "redis"])
async def nodes(
    request: pytest.FixtureRequest, shared_redis: RedisProc
) -> AsyncIterator[tuple[Node, Node]]:
    """(a, b): one memory:// node twice, or two nodes on one Redis (a fresh key prefix)."""
    if request.param == "memory":
        a = await start_node(room_settings())
        pair = (a, a)
    else:
        kw = {"broker_url": shared_redis.url, "redis_prefix": f"t{secrets.token_hex(4)}:",
              "broker_timeout": 2.0, "shutdown_timeout": 1.0}  # fmt: skip
        pair = (await start_node(room_settings(**kw)), await start_node(room_settings(**kw)))
    try:
        yield pair
    finally:
        await close_all()
        for n in {id(n): n for n in pair}.values():
            await n.stop()


def ws_open(node: Node, sub: str) -> Any:
    return WS.open(node.ws_url, sub)


async def api_publish(node: Node, room: str, data: Any, tok: str = API_KEY) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as c:
        return await c.post(f"/v1/rooms/{room}/messages", json={"data": data},
                            headers={"Authorization": f"Bearer {tok}"})  # fmt: skip


async def api_get(node: Node, path: str, tok: str = API_KEY) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as c:
        return await c.get(path, headers={"Authorization": f"Bearer {tok}"})


async def test_history_size_per_pattern(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    for room in ("chat:h", "feed:h", "other"):
        for i in range(8):
            assert (await api_publish(a, room, {"n": i})).status_code == 201
    kept = {}
    for room in ("chat:h", "feed:h", "other"):
        r = await api_get(b, f"/v1/rooms/{room}/messages?limit=100")
        kept[room] = [m["data"]["n"] for m in r.json()["messages"]]
    assert kept == {"chat:h": [5, 6, 7], "feed:h": [3, 4, 5, 6, 7], "other": list(range(8))}
    ws = await ws_open(b, "bob")
    reply = await ws.result({"type": "subscribe", "room": "chat:h", "history": 100})
    assert [m["data"]["n"] for m in ws.inbox if m["type"] == "message"] == [5, 6, 7]
    assert reply["offset"] == 8
    b_hub = b.hub
    if b_hub.settings.broker_url.startswith("redis"):  # the stream itself is trimmed per room
        prefix = b_hub.settings.redis_prefix
        r = aioredis.from_url(b_hub.settings.broker_url)
        try:
            assert await r.xlen(f"{prefix}{{room:chat:h}}:stream") == 3
            assert await r.xlen(f"{prefix}{{room:other}}:stream") == 8
        finally:
            await r.aclose()


async def test_history_ttl_per_pattern(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    for room in ("brief:t", "other:t"):
        assert (await api_publish(a, room, 1)).status_code == 201

    async def kept(room: str) -> int:
        return len((await api_get(b, f"/v1/rooms/{room}/messages")).json()["messages"])

    await until(lambda: _zero(kept("brief:t")), 5.0, "brief:t history expired")
    assert await kept("other:t") == 1
    for i in range(3):  # no history at all: published, delivered, never kept
        assert (await api_publish(a, "none:t", i)).status_code == 201
    assert await kept("none:t") == 0


async def _zero(n: Any) -> bool:
    return await n == 0


async def test_client_publish_only_backends(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    ws = await ws_open(a, "alice")
    assert await ws.error({"type": "publish", "room": "feed:x", "data": 1}) == "forbidden"
    r = await api_publish(b, "feed:x", 1, token("alice"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert (await api_publish(b, "feed:x", 1)).status_code == 201  # an API key
    await ws.result({"type": "subscribe", "room": "feed:x", "history": 1})
    assert (await ws.next("message"))["data"] == 1
    await ws.result({"type": "publish", "room": "lobby", "data": 1})  # other rooms: as before


async def test_presence_off(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    ws = await ws_open(a, "alice")
    assert await ws.error({"type": "subscribe", "room": "feed:p", "presence": True}) == "forbidden"
    assert await ws.error({"type": "presence", "room": "feed:p"}) == "forbidden"
    await ws.result({"type": "subscribe", "room": "feed:p"})  # without presence: fine
    r = await api_get(b, "/v1/rooms/feed:p/presence", token("alice"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    async with sse(b, "/v1/rooms/feed:p/events?presence=1") as (resp, _):
        assert resp.status_code == 403
        await resp.aread()
        assert resp.json()["error"]["code"] == "forbidden"
    res = await ws.join("chat:p")  # presence on elsewhere
    assert [m["user"] for m in res["presence"]] == ["alice"]


async def test_max_message_bytes(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    ws = await ws_open(a, "alice")
    big = "x" * 200
    assert await ws.error({"type": "publish", "room": "small:m", "data": big}) == "too_large"
    r = await api_publish(b, "small:m", big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    await ws.result({"type": "publish", "room": "small:m", "data": "x" * 50})
    await ws.result({"type": "publish", "room": "lobby", "data": big})


async def test_publish_rate(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    ws = await ws_open(a, "alice")
    codes = [
        (await ws.call({"type": "publish", "room": "chat:r", "data": i}))["type"] for i in range(3)
    ]
    assert codes == ["reply", "reply", "error"]
    await ws.result({"type": "publish", "room": "chat:other", "data": 1})  # a bucket per room
    tok = token("carol")
    statuses = [(await api_publish(b, "chat:r", i, tok)).status_code for i in range(3)]
    assert statuses == [201, 201, 429]
    assert (await api_publish(b, "chat:r", 9)).status_code == 201  # API keys are not metered


async def test_max_subscribers_across_transports_and_nodes(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    w1, w2, w3 = await ws_open(a, "u1"), await ws_open(b, "u2"), await ws_open(b, "u3")
    await w1.result({"type": "subscribe", "room": "chat:full"})
    await w2.result({"type": "subscribe", "room": "chat:full"})
    assert await w3.error({"type": "subscribe", "room": "chat:full"}) == "room_full"
    async with sse(a, "/v1/rooms/chat:full/events") as (resp, _):
        assert resp.status_code == 403
        await resp.aread()
        assert resp.json()["error"]["code"] == "room_full"
    await w2.result({"type": "unsubscribe", "room": "chat:full"})
    await w3.result({"type": "subscribe", "room": "chat:full"})


async def test_call_rooms_from_tables(nodes: tuple[Node, Node]) -> None:
    """``signal`` tables replace HUB_SIGNAL_ROOMS: meet:* is a call room, call:* no longer;
    a call room holds its table's max_subscribers peers."""
    a, b = nodes
    p1, p2, p3 = await ws_open(a, "p1"), await ws_open(b, "p2"), await ws_open(b, "p3")
    await p1.join("meet:1")
    await p2.join("meet:1")
    reply = await p2.signal("meet:1", p1.session, {"kind": "bye"})
    assert reply["type"] == "reply", reply
    assert (await p1.next("signal"))["from"]["session"] == p2.session
    assert await p3.error({"type": "subscribe", "room": "meet:1", "presence": True}) == "room_full"
    await p1.join("call:1")
    await p2.join("call:1")
    refused = await p2.signal("call:1", p1.session, {"kind": "bye"})
    assert refused["code"] == "forbidden" and "not a call room" in refused["message"]


async def test_no_recovery_and_no_join_leave(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    for i in range(3):
        await api_publish(a, "small:r", i)
    ws = await ws_open(b, "alice")
    since = {"epoch": None, "offset": 1}
    reply = await ws.result({"type": "subscribe", "room": "small:r", "since": since})
    gap = await ws.next("gap")
    assert (gap["from"], gap["to"]) == (2, 3) and not reply["recovered"]
    assert not any(f["type"] == "message" for f in ws.inbox)
    async with sse(a, "/v1/rooms/small:r/events?since=1") as (resp, s):
        assert resp.status_code == 200
        ev = await s.event()
        assert ev is not None and ev.event == "hub.gap", ev
    await ws.result({"type": "subscribe", "room": "small:p", "presence": True})
    other = await ws_open(a, "bob")
    res = await other.result({"type": "subscribe", "room": "small:p", "presence": True})
    assert len(res["presence"]) == 2  # presence still listed, but nobody is announced
    await ws.nothing("join")
    await other.result({"type": "unsubscribe", "room": "small:p"})
    await ws.nothing("leave")


async def test_anonymous_only_where_a_table_allows(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    guest = await WS.connect(a.ws_url)  # no token: a guest, as open:* allows guests
    assert guest.welcome["user"].startswith("guest-")
    await guest.result({"type": "subscribe", "room": "open:x"})
    assert await guest.error({"type": "subscribe", "room": "lobby"}) == "forbidden"
    assert await guest.error({"type": "publish", "room": "chat:g", "data": 1}) == "forbidden"
    r = await api_get(a, "/v1/rooms/lobby/messages")
    assert r.status_code == 200  # the API key is no guest
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as c:
        r = await c.get("/v1/rooms/lobby/messages")
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert (await c.get("/v1/rooms/open:x/messages")).status_code == 200


def test_config_file_reaches_the_node_settings(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text('[[rooms]]\npattern = "chat:*"\npresence = "off"\nhistory_size = 1000\n')
    s = Settings.load({}, config_file=str(path))
    assert s.rooms[0].pattern == "chat:*" and s.rooms[0].get("presence") is False


async def test_nodes_that_disagree_turn_not_ready(shared_redis: RedisProc) -> None:
    """Two nodes with other [[rooms]] tables: the one outvoted (a tie goes to the node seen
    first) logs it, shows it in /metrics and answers /health/ready with 503."""
    kw = {"broker_url": shared_redis.url, "redis_prefix": f"t{secrets.token_hex(4)}:",
          "broker_timeout": 2.0, "shutdown_timeout": 1.0, "presence_ttl": 1.5}  # fmt: skip
    other = parse_tables([{"pattern": "chat:*", "history_size": 7}], "other.toml")
    a = await start_node(room_settings(**kw))
    started = [a]
    try:
        agreement = a.hub.room_agreement
        assert agreement is not None
        await until(lambda: agreement.cluster is not None, 5.0, "a's first check")
        b = await start_node(make_settings(rooms=other, **kw))
        started.append(b)

        async def ready(n: Node) -> int:
            return (await api_get(n, "/health/ready")).status_code

        async def mismatch(n: Node) -> bool:
            text = (await api_get(n, "/metrics")).text
            return "\nhubbub_room_options_mismatch 1\n" in text

        await until(lambda: _is(ready(b), 503), 5.0, "b not ready")
        assert await mismatch(b) and not await mismatch(a)
        assert await ready(a) == 200
        c = await start_node(make_settings(rooms=other, **kw))  # now a is outvoted
        started.append(c)
        await until(lambda: _is(ready(a), 503), 5.0, "a not ready")
        await until(lambda: _is(ready(b), 200), 5.0, "b ready again")
        assert await ready(c) == 200 and await mismatch(a)
    finally:
        for n in started:
            await n.stop()


async def _is(value: Any, expected: Any) -> bool:
    return await value == expected
