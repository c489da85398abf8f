"""Per-user budgets and token revocation across a cluster (PROTOCOL.md §8 "Limits and abuse").

Two (or three) real nodes on one real redis-server, real WebSocket and HTTP clients.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from hubbub.hub.settings import Rate
from tests.conftest import API_KEY, Node, RedisProc, need_tool, token
from tests.helpers import until
from tests.wsclient import WS

Factory = Callable[..., Any]
KEY = {"Authorization": f"Bearer {API_KEY}"}


def cluster(redis: RedisProc, **kw: Any) -> dict[str, Any]:
    """Settings of the nodes of one test (its own key prefix on the shared Redis)."""
    return {"broker_url": redis.url, "broker_timeout": 0.5, "shutdown_timeout": 1.0,
            "redis_prefix": f"b{secrets.token_hex(3)}:", **kw}  # fmt: skip


def redis_cli(proc: RedisProc, *args: str) -> str:
    exe = need_tool("redis-cli")
    return subprocess.run(
        [exe, "-p", str(proc.port), *args], capture_output=True, text=True, timeout=5, check=True
    ).stdout


async def answers(ws: WS, ids: list[int]) -> dict[int, dict[str, Any]]:
    """The reply or error of each id."""
    out: dict[int, dict[str, Any]] = {}
    while len(out) < len(ids):
        f = await ws.recv()
        if f["type"] in ("reply", "error") and f.get("id") in ids:
            out[f["id"]] = f
    return out


async def test_user_publish_budget_holds_across_nodes(
    node_factory: Factory, shared_redis: RedisProc
) -> None:
    """alice's publishes over WebSocket on node A and node B together: 6 pass (the burst),
    the rest are refused with ``rate_limited``; bob's own budget is untouched, an HTTP publish
    with alice's token is refused with 429, and the API key is not metered."""
    settings = cluster(shared_redis, user_publish_rate=Rate(0.01, 6.0),
                       client_publish_rate=Rate(1000.0, 1000.0))  # fmt: skip
    a: Node = await node_factory(**settings)
    b: Node = await node_factory(**settings)
    wa = await WS.connect(a.ws_url, token("alice"))
    wb = await WS.connect(b.ws_url, token("alice"))
    ids = list(range(1, 11))
    for i in ids:  # alternate the nodes: each node's own bucket alone would let all 10 pass
        ws = wa if i % 2 else wb
        await ws.send({"type": "publish", "room": "r", "data": i, "id": i})
    got = {**await answers(wa, [i for i in ids if i % 2]),
           **await answers(wb, [i for i in ids if not i % 2])}  # fmt: skip
    replies = [i for i in ids if got[i]["type"] == "reply"]
    refused = [got[i] for i in ids if got[i]["type"] == "error"]
    assert len(replies) == 6 and len(refused) == 4
    for err in refused:
        assert err["code"] == "rate_limited" and err["temporary"] is True
        assert "HUB_USER_PUBLISH_RATE" in err["message"]
    bob = await WS.connect(b.ws_url, token("bob"))
    assert "offset" in await bob.result({"type": "publish", "room": "r", "data": "bob"})
    async with httpx.AsyncClient(timeout=5) as http:
        alice_hdr = {"Authorization": f"Bearer {token('alice')}"}
        r = await http.post(f"{a.url}/v1/rooms/r/messages", json={"data": 1}, headers=alice_hdr)
        assert r.status_code == 429 and r.headers["retry-after"]
        assert r.json()["error"]["code"] == "rate_limited"
        assert "HUB_USER_PUBLISH_RATE" in r.json()["error"]["message"]
        for _ in range(10):
            r = await http.post(f"{b.url}/v1/rooms/r/messages", json={"data": 1}, headers=KEY)
            assert r.status_code == 201


async def test_signals_draw_on_the_user_budget(
    node_factory: Factory, shared_redis: RedisProc
) -> None:
    """A signal is a publish for the user's budget: with a burst of 2, a publish on node A
    and a signal on node B use it up, and the next signal is refused."""
    settings = cluster(shared_redis, user_publish_rate=Rate(0.01, 2.0),
                       client_publish_rate=Rate(1000.0, 1000.0))  # fmt: skip
    a: Node = await node_factory(**settings)
    b: Node = await node_factory(**settings)
    wa = await WS.connect(a.ws_url, token("alice"))
    wb = await WS.connect(b.ws_url, token("alice"))
    peer = await WS.connect(b.ws_url, token("bob"))
    await peer.join("call:1")
    await wb.join("call:1")
    offer = {"kind": "offer", "sdp": "v=0"}
    assert "offset" in await wa.result({"type": "publish", "room": "r", "data": 1})
    await wb.result({"type": "signal", "room": "call:1", "to": peer.session, "data": offer})
    err = await wb.call({"type": "signal", "room": "call:1", "to": peer.session, "data": offer})
    assert err["type"] == "error" and err["code"] == "rate_limited"


async def _refused_everywhere(nodes: list[Node], tok: str) -> None:
    """``tok`` is refused like any bad token on every node: 4501, and 401 over HTTP/SSE."""
    async with httpx.AsyncClient(timeout=5) as http:
        for n in nodes:
            ws = await WS.connect(n.ws_url, tok, welcome=False)
            code, _ = await ws.closed()
            assert code == 4501
            hdr = {"Authorization": f"Bearer {tok}"}
            r = await http.get(f"{n.url}/v1/rooms/r/messages", headers=hdr)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            async with http.stream("GET", f"{n.url}/v1/rooms/r/events", headers=hdr) as resp:
                assert resp.status_code == 401


async def test_revocation_closes_and_refuses_on_every_node(
    node_factory: Factory, shared_redis: RedisProc, caplog: pytest.LogCaptureFixture
) -> None:
    """Revoking on node A closes alice's sessions on A and B with 4509; her old tokens (with
    an earlier ``iat``, or none) are refused on A, on B and on a node C started afterwards,
    with the reason ``revoked`` in the log only; a token minted after the revocation works,
    and other users are not affected."""
    settings = cluster(shared_redis)
    a: Node = await node_factory(**settings)
    b: Node = await node_factory(**settings)
    old = token("alice", iat=int(time.time()) - 5)
    no_iat = token("alice")
    wa = await WS.connect(a.ws_url, old)
    wb = await WS.connect(b.ws_url, no_iat)
    bob = await WS.connect(b.ws_url, token("bob", iat=int(time.time()) - 5))
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.post(f"{a.url}/v1/users/alice/disconnect",
                            json={"reason": "banned", "revoke": True}, headers=KEY)  # fmt: skip
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["sessions"] == 2 and set(body) == {"sessions", "revoked_before"}
        cutoff = body["revoked_before"]
        assert isinstance(cutoff, int) and abs(cutoff - time.time()) < 5
        for ws in (wa, wb):
            code, seen = await ws.closed()
            assert code == 4509 and seen[-1]["reason"] == "banned"
        await until(lambda: "alice" in b.hub.auth.revocations.table, 2.0)
        caplog.set_level(logging.INFO, logger="hubbub.edge")
        await _refused_everywhere([a, b], old)
        await _refused_everywhere([a, b], no_iat)
        assert "login refused: revoked" in caplog.text
        c: Node = await node_factory(**settings)  # started after the revocation
        await _refused_everywhere([c], old)
        assert await bob.result({"type": "ping"}) == {}  # bob was not touched
        while time.time() < cutoff + 1:  # a token minted in the cutoff's second is revoked
            await asyncio.sleep(0.05)
        r = await http.post(f"{b.url}/v1/tokens", json={"sub": "alice", "ttl": 600}, headers=KEY)
        fresh = r.json()["token"]
    for n in (a, b, c):
        ws = await WS.connect(n.ws_url, fresh)
        assert "offset" in await ws.result({"type": "publish", "room": "r", "data": "back"})
        await ws.close()


async def test_a_node_reloads_revocations_when_its_redis_link_comes_back(
    node_factory: Factory, redis_proc: RedisProc
) -> None:
    """A revocation a node missed (stored in Redis, its announcement lost) is loaded when the
    node's link to Redis reconnects."""
    settings = cluster(redis_proc)
    a: Node = await node_factory(**settings)
    b: Node = await node_factory(**settings)
    old = token("alice", iat=int(time.time()) - 5)
    await a.hub.state.revoke("alice", int(time.time()), 86400.0)  # stored, never announced
    assert "alice" not in b.hub.auth.revocations.table
    ws = await WS.connect(b.ws_url, old)  # b does not know yet
    await ws.close()
    resyncs = b.hub.metrics.resyncs
    redis_cli(redis_proc, "CLIENT", "KILL", "TYPE", "pubsub")
    await until(lambda: b.hub.metrics.resyncs > resyncs and b.hub.broker_up, 10.0)
    await until(lambda: "alice" in b.hub.auth.revocations.table, 5.0)
    ws = await WS.connect(b.ws_url, old, welcome=False)
    assert (await ws.closed())[0] == 4501


async def test_publishes_waiting_for_the_budget_fail_together_when_redis_stalls(
    node_factory: Factory, redis_proc: RedisProc
) -> None:
    """Redis stops answering while a connection's publishes wait for the user budget: every one
    is answered (``unavailable``) within about one broker timeout, not one timeout after
    another, and the connection goes on once Redis is back."""
    settings = cluster(redis_proc, client_publish_rate=Rate(100_000.0, 100_000.0),
                       user_publish_rate=Rate(1000.0, 1000.0))  # fmt: skip
    a: Node = await node_factory(**settings)
    ws = await WS.connect(a.ws_url, token("alice"))
    await ws.result({"type": "publish", "room": "r", "data": 0})
    assert redis_proc.proc is not None
    os.kill(redis_proc.proc.pid, signal.SIGSTOP)
    try:
        ids = list(range(1, 61))
        for i in ids:
            await ws.send({"type": "publish", "room": "r", "data": i, "id": i})
        got = await answers(ws, ids)  # recv's own deadline: 5 s each, ten broker timeouts
    finally:
        os.kill(redis_proc.proc.pid, signal.SIGCONT)
    assert {f["type"] for f in got.values()} <= {"reply", "error"}
    assert all(f["code"] == "unavailable" for f in got.values() if f["type"] == "error")
    assert "offset" in await ws.result({"type": "publish", "room": "r", "data": "after"}, 10)


async def test_101st_connection_of_a_user_across_two_nodes(
    node_factory: Factory, shared_redis: RedisProc
) -> None:
    """``HUB_MAX_CONNECTIONS_PER_USER`` defaults to 100, counted over the cluster: the 101st
    session of one user gets 4510 on WebSocket and 403 with ``details.code`` 4510 on SSE."""
    settings = cluster(shared_redis)
    a: Node = await node_factory(**settings)
    b: Node = await node_factory(**settings)
    assert a.hub.settings.max_connections_per_user == 100
    tok = token("crowd")
    conns = await asyncio.gather(*(WS.connect((a, b)[i % 2].ws_url, tok) for i in range(100)))
    assert len(conns) == 100
    extra = await WS.connect(a.ws_url, tok, welcome=False)
    code, seen = await extra.closed()
    assert code == 4510 and seen[-1]["type"] == "disconnect"
    async with httpx.AsyncClient(timeout=5) as http:
        hdr = {"Authorization": f"Bearer {tok}"}
        async with http.stream("GET", f"{b.url}/v1/rooms/r/events", headers=hdr) as resp:
            assert resp.status_code == 403
            assert (await resp.aread()) and resp.json()["error"]["details"]["code"] == 4510
    other = await WS.connect(b.ws_url, token("solo"))  # another user is not counted
    await other.close()
