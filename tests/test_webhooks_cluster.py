"""Webhooks across nodes on one Redis: each batch delivered by one node, occupied/vacated and
joined/left decided for the whole cluster, and a batch in flight survives its node's SIGKILL.

In-process nodes (``node_factory``) where a test drives sessions; ``hubbub serve`` subprocesses
(tests/ops/harness.py) where a node is killed. The receiver is a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hubbub.hub.auth import Identity
from hubbub.hub.webhooks.service import endpoint_id
from tests.conftest import API_KEY, Node, RedisProc, token
from tests.helpers import until
from tests.hub.test_webhooks import ALL, fast
from tests.hub.webhook_receiver import WEBHOOK_SECRET, Receiver
from tests.ops.harness import NodeProc
from tests.test_cluster import redis_cli
from tests.wsclient import WS


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


def user(name: str) -> Identity:
    return Identity(name, api_key=True, scope="t")


def settings(redis: RedisProc, receiver: Receiver, **kw: Any) -> dict[str, Any]:
    return {
        "broker_url": redis.url,
        "broker_timeout": 1.0,
        "shutdown_timeout": 1.0,
        "redis_prefix": f"w{secrets.token_hex(3)}:",
        "webhook_urls": (receiver.url,),
        "webhook_secret": (WEBHOOK_SECRET,),
        "webhook_events": ALL,
        "webhook_vacated_delay": 1.0,
        **kw,
    }


async def test_occupied_vacated_joined_left_across_two_nodes(
    node_factory: Any, shared_redis: RedisProc, receiver: Receiver
) -> None:
    conf = settings(shared_redis, receiver)
    a: Node = await node_factory(**conf)
    b: Node = await node_factory(**conf)
    fast(a.hub)
    fast(b.hub)

    def seen() -> list[tuple[str, ...]]:
        return [t for t in receiver.types() if not t[0].startswith("user.")]

    async def expect(*events: tuple[str, ...]) -> None:
        await until(lambda: seen() == list(events), what=f"events {events}")

    alice_a = await a.hub.open_session(user("alice"), "ws")
    await a.hub.subscribe(alice_a, "lobby", presence=True)
    await expect(("room.occupied", "lobby"), ("member.joined", "lobby", "alice"))
    alice_b = await b.hub.open_session(user("alice"), "ws")
    await b.hub.subscribe(alice_b, "lobby", presence=True)  # 2nd node, 2nd session: nothing
    bob_b = await b.hub.open_session(user("bob"), "ws")
    await b.hub.subscribe(bob_b, "lobby", presence=True)
    after = [("room.occupied", "lobby"), ("member.joined", "lobby", "alice")]
    await expect(*after, ("member.joined", "lobby", "bob"))
    after.append(("member.joined", "lobby", "bob"))
    await a.hub.close_session(alice_a)  # alice is still on b: nothing
    await b.hub.close_session(alice_b)
    await expect(*after, ("member.left", "lobby", "alice"))
    after.append(("member.left", "lobby", "alice"))
    await b.hub.close_session(bob_b)  # the room is empty everywhere …
    bob_a = await a.hub.open_session(user("bob"), "ws")
    await a.hub.subscribe(bob_a, "lobby", presence=True)  # … and bob is back, on the other node
    await expect(*after, ("member.left", "lobby", "bob"), ("member.joined", "lobby", "bob"))
    after += [("member.left", "lobby", "bob"), ("member.joined", "lobby", "bob")]
    await asyncio.sleep(1.5)  # past the vacated delay: the reconnect did not flap
    assert seen() == after
    await a.hub.close_session(bob_a)
    await expect(*after, ("member.left", "lobby", "bob"), ("room.vacated", "lobby"))
    # every event once: each batch went out from one node only
    ids = [e["id"] for e in receiver.delivered()]
    assert len(ids) == len(set(ids))
    assert receiver.refused == []


async def test_a_batch_in_flight_on_a_killed_node_is_delivered_by_the_other(
    tmp_path: Path, redis_proc: RedisProc, receiver: Receiver
) -> None:
    prefix = f"k{secrets.token_hex(3)}:"
    env = {
        "HUB_REDIS_PREFIX": prefix,
        "HUB_WEBHOOK_URLS": receiver.url,
        "HUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "HUB_WEBHOOK_EVENTS": "message.published",
        # The stalled request times out after 1.5 s (a retry would come 2 s or more after the
        # first request: long after the kill); the lease lives 2 * 1.5 + 1 = 4 s.
        "HUB_WEBHOOK_TIMEOUT": "1.5",
        "HUB_BROKER_TIMEOUT": "1",
    }
    nodes = [NodeProc(tmp_path, redis_proc.url, env, name=f"n{i}").start() for i in (1, 2)]
    try:
        await asyncio.gather(*(n.wait_live() for n in nodes))
        receiver.stall = 1  # the first request is never answered
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(timeout=5) as c:
            ids = [(await c.get(n.url + "/v1/stats", headers=headers)).json()["node"]
                   for n in nodes]  # fmt: skip
            for i in range(3):
                r = await c.post(f"{nodes[0].url}/v1/rooms/r/messages", json={"data": i},
                                 headers=headers)  # fmt: skip
                assert r.status_code == 201, r.text
            await until(lambda: receiver.stalled, what="a batch in flight")
            lease = f"{prefix}{{wh:{endpoint_id(receiver.url)}}}:lease"
            holder = redis_cli(redis_proc, "GET", lease).strip()
        victim = nodes[ids.index(holder)]
        survivor = nodes[1 - ids.index(holder)]
        victim.signal(signal.SIGKILL)
        assert await victim.wait_exit(5) is not None
        await until(lambda: receiver.delivered(), within=15, what="the batch from the survivor")
        in_flight = [e["id"] for e in receiver.stalled[0].events]
        assert [e["id"] for e in receiver.unique()] == in_flight
        assert [e["message"]["data"] for e in receiver.unique()] == [0, 1, 2]
        assert redis_cli(redis_proc, "GET", lease).strip() == ids[nodes.index(survivor)]
    finally:
        for n in nodes:
            n.stop()


async def test_a_killed_node_s_rooms_are_vacated_and_its_members_left(
    tmp_path: Path, redis_proc: RedisProc, node_factory: Any, receiver: Receiver
) -> None:
    prefix = f"d{secrets.token_hex(3)}:"
    env = {
        "HUB_REDIS_PREFIX": prefix,
        "HUB_WEBHOOK_URLS": receiver.url,
        "HUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "HUB_WEBHOOK_VACATED_DELAY": "0.5",
        "HUB_WEBHOOK_TIMEOUT": "1",
        "HUB_PRESENCE_TTL": "1.5",
        "HUB_BROKER_TIMEOUT": "1",
    }
    victim = NodeProc(tmp_path, redis_proc.url, env, name="victim").start()
    try:
        await victim.wait_live()
        other: Node = await node_factory(
            broker_url=redis_proc.url, redis_prefix=prefix, broker_timeout=1.0,
            webhook_urls=(receiver.url,), webhook_secret=(WEBHOOK_SECRET,),
            webhook_vacated_delay=0.5, webhook_timeout=1.0, presence_ttl=1.5,
        )  # fmt: skip
        fast(other.hub)
        ws = await WS.connect(victim.ws_url, token("alice"))
        await ws.result({"type": "subscribe", "room": "lobby", "presence": True})
        before = [("room.occupied", "lobby"), ("member.joined", "lobby", "alice")]
        await until(lambda: receiver.types() == before, what="occupied and joined")
        victim.signal(signal.SIGKILL)
        assert await victim.wait_exit(5) is not None
        after = [*before, ("member.left", "lobby", "alice"), ("room.vacated", "lobby")]
        await until(lambda: receiver.types() == after, within=20, what="left and vacated")
        left = next(e for e in receiver.unique() if e["type"] == "member.left")
        assert left["member"]["user"] == "alice" and left["member"]["transport"] == "ws"
    finally:
        victim.stop()


async def test_a_vacate_pending_on_a_stopped_node_is_decided_by_another(
    node_factory: Any, shared_redis: RedisProc, receiver: Receiver
) -> None:
    conf = settings(shared_redis, receiver, webhook_vacated_delay=2.0, presence_ttl=0.9,
                    webhook_events=("room.occupied", "room.vacated"))  # fmt: skip
    a: Node = await node_factory(**conf)
    b: Node = await node_factory(**conf)
    fast(a.hub)
    fast(b.hub)
    s = await a.hub.open_session(user("alice"), "ws")
    await a.hub.subscribe(s, "quiet")
    await until(lambda: receiver.types() == [("room.occupied", "quiet")], what="occupied")
    loop = asyncio.get_running_loop()
    emptied = loop.time()
    await a.hub.close_session(s)  # the room empties …
    await a.stop()  # … and its node stops before the delay is over: its own check never runs
    assert a.hub.webhooks is not None and a.hub.webhooks.stopped
    assert loop.time() - emptied < 2.0
    after = [("room.occupied", "quiet"), ("room.vacated", "quiet")]
    await until(lambda: receiver.types() == after, within=10, what="vacated by the other node")
    await asyncio.sleep(0.5)
    assert receiver.types() == after


async def test_reports_wait_out_a_redis_outage(
    node_factory: Any, redis_proc: RedisProc, receiver: Receiver
) -> None:
    n: Node = await node_factory(
        **settings(redis_proc, receiver, broker_timeout=0.5, webhook_vacated_delay=0.3)
    )
    fast(n.hub)
    s = await n.hub.open_session(user("alice"), "ws")
    await n.hub.subscribe(s, "lobby", presence=True)
    before = [("room.occupied", "lobby"), ("member.joined", "lobby", "alice")]
    await until(lambda: [t for t in receiver.types() if t[0].startswith(("room", "member"))]
                == before, what="occupied and joined")  # fmt: skip
    assert redis_proc.proc is not None
    redis_proc.proc.send_signal(signal.SIGSTOP)  # Redis hangs: every call times out
    try:
        await n.hub.close_session(s)  # alice leaves while nothing reaches Redis
        await asyncio.sleep(1.0)
    finally:
        redis_proc.proc.send_signal(signal.SIGCONT)
    after = [*before, ("member.left", "lobby", "alice"), ("room.vacated", "lobby")]
    await until(lambda: [t for t in receiver.types() if t[0].startswith(("room", "member"))]
                == after, within=15, what="left and vacated after the outage")  # fmt: skip
    kinds = [e["type"] for e in receiver.unique()]
    assert kinds.count("user.connected") == kinds.count("user.disconnected") == 1


async def test_events_of_two_nodes_arrive_once_each_in_order_per_node(
    node_factory: Any, shared_redis: RedisProc, receiver: Receiver
) -> None:
    conf = settings(shared_redis, receiver, webhook_events=("message.published",))
    a: Node = await node_factory(**conf)
    b: Node = await node_factory(**conf)
    fast(a.hub, window=0.1)
    fast(b.hub, window=0.1)
    receiver.answers = [500, 500]  # the first batch fails twice: the ones behind it wait
    svc = user("svc")

    async def publish(n: Node, room: str) -> None:
        for i in range(120):
            await n.hub.publish(svc, room, i)
            if i % 40 == 0:
                await asyncio.sleep(0.05)

    await asyncio.gather(publish(a, "from-a"), publish(b, "from-b"))
    await until(lambda: len(receiver.unique()) == 240, what="240 events")
    await asyncio.sleep(0.3)
    events = receiver.delivered()
    assert len(events) == len({e["id"] for e in events}) == 240  # each batch from one node
    for room in ("from-a", "from-b"):
        data = [e["message"]["data"] for e in events if e["room"] == room]
        assert data == list(range(120)), room
    assert [r.status for r in receiver.requests[:3]] == [500, 500, 200]
    assert len(receiver.requests) >= 4  # several batches (at most 100 events each)
