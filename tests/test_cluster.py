"""Several nodes on one Redis behave as one hub (issue #6).

Nodes are real uvicorn servers in this process (``node_factory``) or ``hubbub serve`` in a
subprocess (for SIGKILL). Clients are real WebSocket connections where the wire matters, and
hub sessions driven directly where a test counts every frame under a fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from hubbub.hub.auth import Identity
from hubbub.hub.brokers.redis import RedisBroker
from hubbub.hub.envelope import Publication
from hubbub.hub.errors import Unavailable
from hubbub.hub.session import Session
from hubbub.hub.settings import Rate
from tests.conftest import API_KEY, Node, RedisProc, need_tool, token
from tests.helpers import until
from tests.wsclient import WS

SVC = Identity("svc", api_key=True, scope="test")
Factory = Callable[..., Any]


def cluster(redis: RedisProc, **kw: Any) -> dict[str, Any]:
    """Settings of a node on ``redis`` (one prefix per test: pass the same dict to each node)."""
    return {"broker_url": redis.url, "broker_timeout": 0.5, "shutdown_timeout": 1.0, **kw}


def prefixed(redis: RedisProc, **kw: Any) -> dict[str, Any]:
    return cluster(redis, redis_prefix=f"c{secrets.token_hex(3)}:", **kw)


def frames(session: Session) -> list[dict[str, Any]]:
    """Take every queued frame of a hub session, decoded."""
    return [json.loads(item.frame) for item in session.take()]


def redis_cli(proc: RedisProc, *args: str) -> str:
    exe = need_tool("redis-cli")
    return subprocess.run(
        [exe, "-p", str(proc.port), *args], capture_output=True, text=True, timeout=5, check=True
    ).stdout


# ---- fan-out, offsets, presence, recovery -------------------------------------------------------
async def test_fanout_and_shared_offsets_across_two_nodes(
    node_factory: Factory, shared_redis: RedisProc
) -> None:
    settings = prefixed(shared_redis)
    a: Node = await node_factory(**settings)
    b: Node = await node_factory(**settings)
    wa = await WS.connect(a.ws_url, token("alice"))
    wb = await WS.connect(b.ws_url, token("bob"))
    ra = await wa.result({"type": "subscribe", "room": "lobby"})
    rb = await wb.result({"type": "subscribe", "room": "lobby"})
    assert ra["epoch"] == rb["epoch"] and ra["offset"] == rb["offset"] == 0
    offsets = []
    for i in range(10):
        ws = wa if i % 2 == 0 else wb
        res = await ws.result({"type": "publish", "room": "lobby", "data": {"i": i}})
        offsets.append(res["offset"])
    assert offsets == list(range(1, 11))
    for ws in (wa, wb):
        msgs = await ws.messages(10)
        assert [m["offset"] for m in msgs] == list(range(1, 11))
        assert [m["data"]["i"] for m in msgs] == list(range(10))
        assert {m["epoch"] for m in msgs} == {ra["epoch"]}
    await wa.close()
    await wb.close()


async def test_a_node_without_members_gets_no_room_traffic(
    node_factory: Factory, shared_redis: RedisProc
) -> None:
    settings = prefixed(shared_redis)
    a, b, c = [await node_factory(**settings) for _ in range(3)]
    seen: dict[str, list[str]] = {"a": [], "b": [], "c": []}
    for name, n in (("a", a), ("b", b), ("c", c)):
        original = n.hub.deliver

        def spy(pub: Publication, name: str = name, original: Any = original) -> None:
            seen[name].append(pub.room)
            original(pub)

        n.hub.deliver = spy  # type: ignore[method-assign]
    sa = await a.hub.open_session(SVC, "ws")
    sb = await b.hub.open_session(SVC, "ws")
    await a.hub.subscribe(sa, "quiet")
    await b.hub.subscribe(sb, "quiet")
    channel = settings["redis_prefix"] + "{room:quiet}:ch"
    assert redis_cli(shared_redis, "PUBSUB", "NUMSUB", channel).split()[-1] == "2"
    for i in range(5):
        await c.hub.publish(SVC, "quiet", i)
    await until(lambda: len(seen["a"]) == 5 and len(seen["b"]) == 5)
    await b.hub.unsubscribe(sb, "quiet")  # b's last member leaves: b unsubscribes
    assert redis_cli(shared_redis, "PUBSUB", "NUMSUB", channel).split()[-1] == "1"
    for i in range(5):
        await c.hub.publish(SVC, "quiet", i)
    await until(lambda: len(seen["a"]) == 10)
    await asyncio.sleep(0.2)
    assert (len(seen["b"]), seen["c"]) == (5, [])
    assert [f["offset"] for f in frames(sa) if f["type"] == "message"] == list(range(1, 11))


async def test_presence_across_nodes(node_factory: Factory, shared_redis: RedisProc) -> None:
    settings = prefixed(shared_redis)
    a, b, c = [await node_factory(**settings) for _ in range(3)]
    wa = await WS.connect(a.ws_url, token("alice", name="Alice"))
    wb = await WS.connect(b.ws_url, token("bob"))
    await wa.result({"type": "subscribe", "room": "team", "presence": True})
    rb = await wb.result({"type": "subscribe", "room": "team", "presence": True})
    assert sorted(m["user"] for m in rb["presence"]) == ["alice", "bob"]
    join = await wa.next("join")
    assert (join["user"], join["session"]) == ("bob", wb.welcome["session"])
    body = await c.hub.presence(SVC, "team")
    assert (body["users"], body["sessions"]) == (2, 2)
    await wb.close()
    leave = await wa.next("leave")
    assert leave["user"] == "bob"
    await until(lambda: True)
    for _ in range(50):
        if (await c.hub.presence(SVC, "team"))["sessions"] == 1:
            break
        await asyncio.sleep(0.05)
    assert [m["user"] for m in (await c.hub.presence(SVC, "team"))["members"]] == ["alice"]
    await wa.close()


async def test_recovery_across_nodes(node_factory: Factory, shared_redis: RedisProc) -> None:
    settings = prefixed(shared_redis)
    a: Node = await node_factory(**settings)
    b: Node = await node_factory(**settings)
    wa = await WS.connect(a.ws_url, token("alice"))
    await wa.result({"type": "subscribe", "room": "news"})
    await b.hub.publish(SVC, "news", "one")
    first = (await wa.messages(1))[0]
    cursor = first["offset"], first["epoch"]
    await wa.close()
    for text in ("two", "three", "four"):
        await a.hub.publish(SVC, "news", text)
    wb = await WS.connect(b.ws_url, token("alice"))
    since = {"epoch": cursor[1], "offset": cursor[0]}
    res = await wb.result({"type": "subscribe", "room": "news", "since": since})
    assert res["recovered"] is True and res["offset"] == 4
    msgs = await wb.messages(3)
    assert [m["data"] for m in msgs] == ["two", "three", "four"]
    await a.hub.publish(SVC, "news", "five")
    assert (await wb.messages(1))[0]["offset"] == 5
    await wb.close()


async def test_kick_and_direct_frames_reach_other_nodes(
    node_factory: Factory, shared_redis: RedisProc
) -> None:
    settings = prefixed(shared_redis)
    a: Node = await node_factory(**settings)
    b: Node = await node_factory(**settings)
    alice = Identity("alice", grants={k: ("*",) for k in ("subscribe", "presence", "signal")})
    sa = await a.hub.open_session(alice, "ws")
    sb = await b.hub.open_session(Identity("bob", api_key=True), "ws")
    await a.hub.subscribe(sa, "call:1", presence=True)
    await b.hub.subscribe(sb, "call:1", presence=True)
    await a.hub.direct(sa, "call:1", sb.id, {"type": "signal", "data": "offer"})
    await until(lambda: any(json.loads(f.frame).get("data") == "offer" for f in sb.queue))
    assert await b.hub.disconnect_user("alice") == 1
    await until(lambda: sa.closed is not None, 1.0)
    assert sa.closed is not None and sa.closed.code == 4509


async def test_connection_limit_is_cluster_wide(
    node_factory: Factory, shared_redis: RedisProc
) -> None:
    settings = prefixed(shared_redis, max_connections_per_user=2)
    a: Node = await node_factory(**settings)
    b: Node = await node_factory(**settings)
    w1 = await WS.connect(a.ws_url, token("carol"))
    w2 = await WS.connect(b.ws_url, token("carol"))
    w3 = await WS.connect(b.ws_url, token("carol"), welcome=False)
    code, _ = await w3.closed()
    assert code == 4510
    await w1.close()
    for _ in range(50):
        if await b.hub.state.connection_count("carol") == 1:
            break
        await asyncio.sleep(0.05)
    w4 = await WS.connect(a.ws_url, token("carol"))
    await w4.close()
    await w2.close()


# ---- pipelined publishes ---------------------------------------------------------------------
async def collect_answers(ws: WS, ids: set[int], timeout: float = 10.0) -> dict[int, Any]:
    """Read until every id in ``ids`` got its reply or error; fail on a second answer."""
    answers: dict[int, Any] = {}
    while set(answers) != ids:
        f = await ws.recv(timeout)
        if f["type"] in ("reply", "error") and f.get("id") is not None:
            assert f["id"] not in answers, f
            answers[f["id"]] = f
        else:
            ws.inbox.append(f)
    return answers


async def test_pipelined_publishes_keep_order_across_two_nodes(
    node_factory: Factory, shared_redis: RedisProc
) -> None:
    """One connection sends 400 publishes to two rooms without waiting: every id gets its
    reply, the offsets follow the send order, and subscribers on both nodes get them in it."""
    # The user's budget stays on (its cluster-wide take precedes each publish) but is ample.
    fast = Rate(100_000.0, 100_000.0)
    settings = prefixed(shared_redis, client_publish_rate=fast, user_publish_rate=fast,
                        client_command_rate=fast)  # fmt: skip
    a: Node = await node_factory(**settings)
    b: Node = await node_factory(**settings)
    subs = [await WS.connect(n.ws_url, token("bob")) for n in (a, b)]
    for ws in subs:
        for room in ("p1", "p2"):
            await ws.result({"type": "subscribe", "room": room})
    pub = await WS.connect(a.ws_url, token("alice"))
    n = 400
    sent: dict[str, list[int]] = {"p1": [], "p2": []}
    for i in range(1, n + 1):
        room = "p2" if i % 4 == 0 else "p1"
        sent[room].append(i)
        await pub.send({"type": "publish", "room": room, "data": {"i": i}, "id": i})
    answers = await collect_answers(pub, set(range(1, n + 1)))
    assert all(f["type"] == "reply" for f in answers.values())
    for ids in sent.values():
        assert [answers[i]["result"]["offset"] for i in ids] == list(range(1, len(ids) + 1))
    broker = a.hub.broker
    assert isinstance(broker, RedisBroker)
    assert broker.pipe is not None and broker.pipe.writes < n  # publications shared writes
    for ws in subs:
        got: dict[str, list[int]] = {"p1": [], "p2": []}
        for m in await ws.messages(n, timeout=10):
            got[m["room"]].append(m["data"]["i"])
        assert got == sent


async def test_http_batch_publish_is_pipelined_in_order(
    node_factory: Factory, shared_redis: RedisProc
) -> None:
    """``POST /v1/publish`` sends its messages to Redis together, in list order: results come
    back in list order (errors in their places), offsets follow the list per room, a subscriber
    on the other node gets them in that order, and they shared writes to Redis."""
    settings = prefixed(shared_redis)
    a: Node = await node_factory(**settings)
    b: Node = await node_factory(**settings)
    sub = await WS.connect(b.ws_url, token("bob"))
    for room in ("h1", "h2"):
        await sub.result({"type": "subscribe", "room": room})
    msgs: list[dict[str, Any]] = []
    for i in range(90):
        msgs.append({"room": "h2" if i % 3 == 0 else "h1", "data": {"i": i}})
        if i % 30 == 7:
            msgs.append({"room": "bad room!", "data": i})
            msgs.append({"room": "h1", "data": "keyed", "key": f"k{i}"})
            msgs.append({"room": "h1", "data": "other", "key": f"k{i}"})
    broker = a.hub.broker
    assert isinstance(broker, RedisBroker) and broker.pipe is not None
    writes = broker.pipe.writes
    async with httpx.AsyncClient(base_url=a.url) as http:
        r = await http.post(
            "/v1/publish", json={"messages": msgs}, headers={"Authorization": f"Bearer {API_KEY}"}
        )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(msgs)
    expected: dict[str, list[Any]] = {"h1": [], "h2": []}
    for msg, res in zip(msgs, results, strict=True):
        if msg["room"] == "bad room!":
            assert res["error"]["code"] == "bad_request", res
        elif msg.get("data") == "other":
            assert res["error"]["code"] == "conflict", res
        else:
            expected[msg["room"]].append(msg["data"])
            assert res["offset"] == len(expected[msg["room"]]), (msg, res)
    assert broker.pipe.writes - writes < len(msgs)  # messages shared writes
    got: dict[str, list[Any]] = {"h1": [], "h2": []}
    for m in await sub.messages(sum(map(len, expected.values())), timeout=10):
        got[m["room"]].append(m["data"])
    assert got == expected


async def test_pipelined_publishes_answer_every_id(
    node_factory: Factory, shared_redis: RedisProc
) -> None:
    """Checks that fail before the broker and errors from the broker both answer their id,
    once; a frame other than publish waits for the publications sent before it."""
    settings = prefixed(shared_redis, client_publish_rate=Rate(100_000.0, 100_000.0))
    a: Node = await node_factory(**settings)
    pub = await WS.connect(a.ws_url, token("alice", hub={"subscribe": ["*"], "publish": ["ok"]}))
    frames_: list[dict[str, Any]] = []
    expect: dict[int, str] = {}
    stored: list[Any] = []

    def add(frame: dict[str, Any], outcome: str, new: bool = False) -> None:
        fid = len(frames_) + 1
        frames_.append({**frame, "id": fid})
        expect[fid] = outcome
        if new:
            stored.append(frame["data"])

    for i in range(30):
        add({"type": "publish", "room": "ok", "data": i}, "reply", new=True)
        if i % 10 == 3:
            add({"type": "publish", "room": "nope", "data": i}, "forbidden")
            add({"type": "publish", "room": "ok"}, "bad_request")
            key = f"k{i}"
            add({"type": "publish", "room": "ok", "data": key, "key": key}, "reply", new=True)
            add({"type": "publish", "room": "ok", "data": key, "key": key}, "reply")
            add({"type": "publish", "room": "ok", "data": "other", "key": key}, "conflict")
    frames_.append({"type": "publish", "room": "ok", "data": "no id"})
    stored.append("no id")
    add({"type": "history", "room": "ok", "limit": 1000}, "reply")
    for f in frames_:
        await pub.send(f)
    answers = await collect_answers(pub, set(expect))
    for fid, outcome in expect.items():
        f = answers[fid]
        assert (f["type"] if f["type"] == "reply" else f["code"]) == outcome, (fid, f)
    keyed = [f for f in frames_ if f.get("key") and expect[f["id"]] == "reply"]
    for first, repeat in zip(keyed[::2], keyed[1::2], strict=True):
        assert answers[first["id"]]["result"] == answers[repeat["id"]]["result"]
    history = answers[max(expect)]["result"]["messages"]
    assert [m["data"] for m in history] == stored


async def test_publishes_in_flight_are_bounded_per_connection(
    node_factory: Factory, redis_proc: RedisProc
) -> None:
    """With Redis stopped, a connection's reader stops taking publishes after 64 in flight;
    they all end (errors) within the broker timeout, and the connection goes on. (No user
    budget: publishes held behind one waiting for it have no task each to count here.)"""
    settings = prefixed(redis_proc, client_publish_rate=Rate(100_000.0, 100_000.0),
                        user_publish_rate=Rate(0.0, 0.0))  # fmt: skip
    a: Node = await node_factory(**settings)
    ws = await WS.connect(a.ws_url, token("alice"))
    await ws.result({"type": "publish", "room": "r", "data": 0})
    assert redis_proc.proc is not None
    os.kill(redis_proc.proc.pid, signal.SIGSTOP)
    try:
        for i in range(1, 101):
            await ws.send({"type": "publish", "room": "r", "data": i, "id": i})
        await until(lambda: _in_flight(a) == 64)
        await asyncio.sleep(0.1)
        assert _in_flight(a) == 64  # the reader waits: no more than 64 at a time
    finally:
        os.kill(redis_proc.proc.pid, signal.SIGCONT)
    answers = await collect_answers(ws, set(range(1, 101)))
    assert {f["type"] for f in answers.values()} <= {"reply", "error"}
    assert all(f["code"] == "unavailable" for f in answers.values() if f["type"] == "error")
    res = await ws.result({"type": "publish", "room": "r", "data": "after"})
    assert res["offset"] >= 2


def _in_flight(node: Node) -> int:
    """Publishes in flight on a node: its hub's publish tasks (Hub.spawn) not done yet."""
    return sum(1 for t in node.hub._tasks if not t.done())


# ---- faults ------------------------------------------------------------------------------------
def check_delivery(
    got: list[dict[str, Any]], acked: list[tuple[str, int]], room: str
) -> tuple[int, int]:
    """Every acked publication arrived exactly once, in order, or a gap covers it.
    Returns (messages, gaps)."""
    seen: set[tuple[str, int]] = set()
    gaps: list[dict[str, Any]] = []
    last: dict[str, int] = {}
    epoch_changes: list[str] = []
    for f in got:
        if f["type"] == "gap" and f["room"] == room:
            gaps.append(f)
            if not epoch_changes or epoch_changes[-1] != f["epoch"]:
                epoch_changes.append(f["epoch"])
        elif f["type"] == "message" and f["room"] == room:
            key = (f["epoch"], f["offset"])
            assert key not in seen, f"duplicate {key}"
            seen.add(key)
            assert f["offset"] > last.get(f["epoch"], 0), f"out of order {key}"
            last[f["epoch"]] = f["offset"]
    for epoch, offset in acked:
        if (epoch, offset) in seen:
            continue
        covered = any(g["epoch"] == epoch and g["from"] <= offset <= g["to"] for g in gaps)
        # a gap into another epoch says: the rest of this epoch is lost to you
        moved_on = any(g["epoch"] != epoch for g in gaps)
        assert covered or moved_on, f"silently lost {(epoch, offset)}"
    return len(seen), len(gaps)


async def test_redis_restart_mid_traffic(node_factory: Factory, redis_proc: RedisProc) -> None:
    """Hardening case 34: 2 nodes, 200 subscribers, ~200 msg/s, Redis killed and restarted."""
    settings = prefixed(redis_proc)
    a: Node = await node_factory(**settings)
    b: Node = await node_factory(**settings)
    subs: list[Session] = []
    got: dict[Session, list[dict[str, Any]]] = {}
    for n in (a, b):
        for _ in range(100):
            s = await n.hub.open_session(SVC, "ws")
            await n.hub.subscribe(s, "live")
            subs.append(s)
            got[s] = []
    ws = await WS.connect(a.ws_url, token("walt"))
    acked: list[tuple[str, int]] = []
    failed = 0
    stop = asyncio.Event()

    async def publisher() -> None:
        nonlocal failed
        i = 0
        while not stop.is_set():
            i += 1
            node = a if i % 2 else b
            try:
                res = await node.hub.publish(SVC, "live", i)
                acked.append((res["epoch"], res["offset"]))
            except Unavailable:
                failed += 1
            await asyncio.sleep(0.005)

    async def reader() -> None:
        while not stop.is_set():
            for s in subs:
                got[s].extend(frames(s))
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(publisher()), asyncio.create_task(reader())]
    await asyncio.sleep(0.5)
    redis_proc.stop()
    await asyncio.sleep(0.3)
    assert not await a.hub.ready()
    async with httpx.AsyncClient() as http:
        assert (await http.get(b.url + "/health/ready")).status_code == 503
        assert (await http.get(b.url + "/health/live")).status_code == 200
        r = await http.post(
            a.url + "/v1/rooms/live/messages",
            json={"data": 1},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    err = await ws.call({"type": "publish", "room": "live", "data": "during the outage"})
    assert (err["type"], err["code"], err["temporary"]) == ("error", "unavailable", True)
    await asyncio.sleep(0.3)
    redis_proc.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for n in (a, b):
        for _ in range(100):
            if await n.hub.ready():
                break
            await asyncio.sleep(0.05)
        assert await n.hub.ready()
    assert loop.time() - t0 < 5.0
    await asyncio.sleep(0.5)
    stop.set()
    for t in tasks:
        await t
    assert failed > 0 and len(acked) > 40
    last = acked[-1]

    def caught_up() -> bool:
        for s in subs:
            got[s].extend(frames(s))
        return all(
            any(f.get("epoch") == last[0] and f.get("offset") == last[1] for f in got[s])
            for s in subs
        )

    await until(caught_up, 5.0)
    epochs = {e for e, _ in acked}
    assert len(epochs) == 2  # Redis lost its data: a new epoch
    for s in subs:
        n_msgs, n_gaps = check_delivery(got[s], acked, "live")
        assert n_gaps >= 1  # told about the loss, never silent
        assert n_msgs >= len({k for k in acked if k[0] == last[0]})
        assert s.closed is None
    await ws.close()


async def test_client_kill_pubsub_loses_nothing(
    node_factory: Factory, redis_proc: RedisProc
) -> None:
    settings = prefixed(redis_proc)
    a: Node = await node_factory(**settings)
    b: Node = await node_factory(**settings)
    s = await b.hub.open_session(SVC, "ws")
    await b.hub.subscribe(s, "steady")
    got: list[dict[str, Any]] = []
    acked: list[tuple[str, int]] = []
    for i in range(60):
        res = await a.hub.publish(SVC, "steady", i)
        acked.append((res["epoch"], res["offset"]))
        if i in (20, 40):
            redis_cli(redis_proc, "CLIENT", "KILL", "TYPE", "pubsub")
        got.extend(frames(s))
        await asyncio.sleep(0.005)

    def caught_up() -> bool:
        got.extend(frames(s))
        return any(f.get("offset") == 60 for f in got)

    await until(caught_up, 5.0)
    n_msgs, n_gaps = check_delivery(got, acked, "steady")
    assert (n_msgs, n_gaps) == (60, 0)
    assert b.hub.metrics.resyncs >= 2


async def test_node_started_before_redis_becomes_ready(node_factory: Factory) -> None:
    proc = RedisProc()
    try:
        t0 = asyncio.get_running_loop().time()
        node: Node = await node_factory(**prefixed(proc))
        assert asyncio.get_running_loop().time() - t0 < 3.0
        async with httpx.AsyncClient() as http:
            assert (await http.get(node.url + "/health/ready")).status_code == 503
            assert (await http.get(node.url + "/health/live")).status_code == 200
            proc.start()
            for _ in range(100):
                if (await http.get(node.url + "/health/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert (await http.get(node.url + "/health/ready")).status_code == 200
        res = await node.hub.publish(SVC, "late", 1)
        assert res["offset"] == 1
    finally:
        proc.stop()


async def test_sigkilled_node_leaves_no_member_behind(
    node_factory: Factory, shared_redis: RedisProc, tmp_path: Path
) -> None:
    from tests.ops.harness import NodeProc

    settings = prefixed(shared_redis, presence_ttl=1.5)
    local: Node = await node_factory(**settings)
    env = {"HUB_REDIS_PREFIX": settings["redis_prefix"], "HUB_PRESENCE_TTL": "1.5"}
    victim = NodeProc(tmp=tmp_path, broker=shared_redis.url, env=env, name="victim").start()
    try:
        await victim.wait_live()
        ws = await WS.connect(f"ws://127.0.0.1:{victim.port}/v1/ws", token("dave"))
        await ws.result({"type": "subscribe", "room": "wake", "presence": True})
        body = await local.hub.presence(SVC, "wake")
        assert [m["user"] for m in body["members"]] == ["dave"]
        assert await local.hub.state.connection_count("dave") == 1
        assert (await local.hub.state.list_rooms("wake", None, 10))[0] == [("wake", 1)]
        victim.signal(signal.SIGKILL)
        await victim.wait_exit(5)
        with contextlib.suppress(Exception):
            await ws.close()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while (await local.hub.presence(SVC, "wake"))["sessions"]:
            assert loop.time() - t0 < 4.0, "a dead node's member outlived the presence TTL"
            await asyncio.sleep(0.1)
        assert await local.hub.state.connection_count("dave") == 0
        assert (await local.hub.state.list_rooms("wake", None, 10))[0] == []
    finally:
        victim.stop()


@pytest.mark.parametrize("nodes", [3])
async def test_three_nodes_share_one_room(
    node_factory: Factory, shared_redis: RedisProc, nodes: int
) -> None:
    settings = prefixed(shared_redis)
    ns = [await node_factory(**settings) for _ in range(nodes)]
    sessions = []
    for n in ns:
        s = await n.hub.open_session(SVC, "ws")
        await n.hub.subscribe(s, "trio")
        sessions.append(s)
    results = await asyncio.gather(*(ns[i % nodes].hub.publish(SVC, "trio", i) for i in range(30)))
    assert sorted(r["offset"] for r in results) == list(range(1, 31))
    for s in sessions:
        got: list[dict[str, Any]] = []

        def done(s: Session = s, got: list[dict[str, Any]] = got) -> bool:
            got.extend(frames(s))
            return len([f for f in got if f["type"] == "message"]) >= 30

        await until(done)
        assert [f["offset"] for f in got if f["type"] == "message"] == list(range(1, 31))


async def test_api_rate_limit_is_shared_by_the_nodes(
    node_factory: Factory, shared_redis: RedisProc
) -> None:
    settings = prefixed(shared_redis, api_rate=Rate(0.01, 3.0))
    a: Node = await node_factory(**settings)
    b: Node = await node_factory(**settings)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    codes = []
    async with httpx.AsyncClient() as http:
        for node in (a, b, a, b):
            r = await http.post(node.url + "/v1/rooms/rl/messages", json={"data": 1}, headers=auth)
            codes.append(r.status_code)
    assert codes == [201, 201, 201, 429]


async def test_rooms_listing_sums_the_nodes(node_factory: Factory, shared_redis: RedisProc) -> None:
    settings = prefixed(shared_redis)
    a: Node = await node_factory(**settings)
    b: Node = await node_factory(**settings)
    sessions = []
    for node, room in ((a, "x:1"), (b, "x:1"), (b, "x:1"), (a, "x:2"), (b, "y:1")):
        s = await node.hub.open_session(SVC, "ws")
        await node.hub.subscribe(s, room)
        sessions.append((node, s))
    assert await a.hub.state.list_rooms("x:", None, 10) == ([("x:1", 3), ("x:2", 1)], None)
    assert await b.hub.state.list_rooms("", "x:2", 10) == ([("y:1", 1)], None)
    for node, s in sessions:
        await node.hub.close_session(s)
    assert await a.hub.state.list_rooms("", None, 10) == ([], None)


async def test_redis_paused_then_resumed_loses_nothing(
    node_factory: Factory, redis_proc: RedisProc
) -> None:
    """Hardening case 36: kill -STOP / -CONT as a partition: publishes fail fast (503), ready is
    false meanwhile, and afterwards every acked message arrives once, in order, with no gap."""
    settings = prefixed(redis_proc)
    a: Node = await node_factory(**settings)
    b: Node = await node_factory(**settings)
    s = await b.hub.open_session(SVC, "ws")
    await b.hub.subscribe(s, "paused")
    got: list[dict[str, Any]] = []
    acked: list[tuple[str, int]] = []
    for i in range(10):
        res = await a.hub.publish(SVC, "paused", i)
        acked.append((res["epoch"], res["offset"]))
    assert redis_proc.proc is not None
    pid = redis_proc.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(Unavailable):
            await a.hub.publish(SVC, "paused", "lost")
        assert loop.time() - t0 < 1.5
        assert not await a.hub.ready()
        await asyncio.sleep(1.0)
    finally:
        os.kill(pid, signal.SIGCONT)
    for _ in range(100):
        if await a.hub.ready() and await b.hub.ready():
            break
        await asyncio.sleep(0.05)
    assert await b.hub.ready()
    for i in range(10, 20):
        res = await a.hub.publish(SVC, "paused", i)
        acked.append((res["epoch"], res["offset"]))

    def caught_up() -> bool:
        got.extend(frames(s))
        return any(f.get("offset") == acked[-1][1] for f in got)

    await until(caught_up, 5.0)
    n_msgs, n_gaps = check_delivery(got, acked, "paused")
    # The timed-out publish was still in the socket when Redis resumed, and Redis ran it: a 503
    # after a timeout means "unknown", which is why clients retry with an Idempotency-Key.
    assert n_gaps == 0 and n_msgs in (len(acked), len(acked) + 1)
    assert [f["offset"] for f in got if f["type"] == "message"] == list(range(1, n_msgs + 1))


async def test_deaf_pubsub_on_one_node_is_detected_and_back_filled(
    node_factory: Factory, redis_proc: RedisProc
) -> None:
    """Hardening case 37: node b's pub/sub socket stays open but hears nothing (a proxy blackholes
    it): the probe notices, ready is false meanwhile, and b's subscriber still gets every
    message, from history, with no gap."""
    from tests.hub.brokers.redis_proxy import TcpProxy

    proxy = await TcpProxy(redis_proc.port).start()
    try:
        settings = prefixed(redis_proc)
        a: Node = await node_factory(**settings)
        b: Node = await node_factory(**{**settings, "broker_url": proxy.url})
        s = await b.hub.open_session(SVC, "ws")
        await b.hub.subscribe(s, "muted")
        states: list[tuple[float, bool]] = []
        original = b.hub.broker_state
        loop = asyncio.get_running_loop()

        def spy(up: bool) -> None:
            states.append((loop.time(), up))
            original(up)

        b.hub.broker_state = spy  # type: ignore[method-assign]
        got: list[dict[str, Any]] = []
        acked = []
        proxy.deafen()
        t0 = loop.time()
        for i in range(10):
            res = await a.hub.publish(SVC, "muted", i)
            acked.append((res["epoch"], res["offset"]))
            await asyncio.sleep(0.05)
        await until(lambda: [up for _, up in states] == [False, True], 5.0)
        assert states[0][0] - t0 < 3.0  # noticed within the probe timeout (+ one interval)
        assert await b.hub.ready()

        def caught_up() -> bool:
            got.extend(frames(s))
            return any(f.get("offset") == 10 for f in got)

        await until(caught_up, 5.0)
        assert check_delivery(got, acked, "muted") == (10, 0)
    finally:
        await proxy.close()


async def test_serve_with_workers_runs_nodes_on_one_port(
    shared_redis: RedisProc, tmp_path: Path
) -> None:
    """``hubbub serve --workers 2`` with Redis: two nodes behind one port share rooms."""
    from tests.ops.harness import NodeProc

    prefix = f"w{secrets.token_hex(3)}:"
    env = {"HUB_REDIS_PREFIX": prefix, "HUB_WORKERS": "2"}
    proc = NodeProc(tmp=tmp_path, broker=shared_redis.url, env=env, name="workers").start()
    try:
        await proc.wait_live()
        url = f"ws://127.0.0.1:{proc.port}/v1/ws"
        clients = [await WS.connect(url, token(f"u{i}")) for i in range(8)]
        for c in clients:
            await c.result({"type": "subscribe", "room": "shared"})
        for _ in range(50):
            nodes = redis_cli(shared_redis, "ZRANGE", prefix + "{rooms}:nodes", "0", "-1").split()
            if len(nodes) == 2:
                break
            await asyncio.sleep(0.1)
        assert len(nodes) == 2  # both workers registered in Redis
        await clients[0].result({"type": "publish", "room": "shared", "data": "hello"})
        for c in clients:
            msg = (await c.messages(1))[0]
            assert (msg["offset"], msg["data"]) == (1, "hello")
            await c.close()
    finally:
        proc.stop()


async def test_clients_of_a_sigkilled_node_recover_on_another(
    node_factory: Factory, shared_redis: RedisProc, tmp_path: Path
) -> None:
    """Hardening case 39: node a is killed with SIGKILL mid-stream; its clients reconnect to node b
    with the last position they saw and get every message exactly once, in order."""
    from tests.ops.harness import NodeProc

    settings = prefixed(shared_redis)
    b: Node = await node_factory(**settings)
    env = {"HUB_REDIS_PREFIX": settings["redis_prefix"]}
    victim = NodeProc(tmp=tmp_path, broker=shared_redis.url, env=env, name="victim").start()
    try:
        await victim.wait_live()
        url = f"ws://127.0.0.1:{victim.port}/v1/ws"
        clients = [await WS.connect(url, token(f"c{i}")) for i in range(5)]
        for c in clients:
            await c.result({"type": "subscribe", "room": "stream"})
        stop = asyncio.Event()
        acked: list[int] = []

        async def publisher() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                acked.append((await b.hub.publish(SVC, "stream", i))["offset"])
                await asyncio.sleep(0.01)

        task = asyncio.create_task(publisher())
        await asyncio.sleep(0.4)
        victim.signal(signal.SIGKILL)
        await victim.wait_exit(5)
        seen: list[list[dict[str, Any]]] = []
        for c in clients:
            frames_: list[dict[str, Any]] = []
            with contextlib.suppress(Exception):
                while True:
                    f = await c.recv(1.0)
                    if f["type"] == "message":
                        frames_.append(f)
            seen.append(frames_)
        await asyncio.sleep(0.3)  # the stream goes on without them
        resumed = []
        for i, frames_ in enumerate(seen):
            assert frames_, "the client saw nothing before the kill"
            last = frames_[-1]
            ws = await WS.connect(b.ws_url, token(f"c{i}"))
            since = {"epoch": last["epoch"], "offset": last["offset"]}
            res = await ws.result({"type": "subscribe", "room": "stream", "since": since})
            assert res["recovered"] is True
            resumed.append(ws)
        await asyncio.sleep(0.3)
        stop.set()
        await task
        for frames_, ws in zip(seen, resumed, strict=True):
            n = acked[-1] - frames_[-1]["offset"]
            frames_.extend(await ws.messages(n))
            offsets = [f["offset"] for f in frames_]
            assert offsets == list(range(1, acked[-1] + 1))  # 0 lost, 0 duplicated
            await ws.close()
    finally:
        victim.stop()
