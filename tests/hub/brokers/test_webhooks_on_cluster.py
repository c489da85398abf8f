"""Webhooks on a real three-shard Redis Cluster: every script and stream call stays on one slot
(hash tags per room and per endpoint), two nodes deliver each event once, in order."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hubbub.hub.auth import Identity
from tests.helpers import until
from tests.hub.brokers.conftest import RedisClusterProcs
from tests.hub.test_webhooks import ALL, fast
from tests.hub.webhook_receiver import WEBHOOK_SECRET, Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


async def test_two_nodes_on_a_cluster(
    node_factory: Any, redis_cluster: RedisClusterProcs, receiver: Receiver
) -> None:
    conf = {
        "broker_url": redis_cluster.url,
        "broker_timeout": 2.0,
        "redis_prefix": f"wc{secrets.token_hex(3)}:",
        "webhook_urls": (receiver.url,),
        "webhook_secret": (WEBHOOK_SECRET,),
        "webhook_events": ALL,
        "webhook_vacated_delay": 0.3,
    }
    a = await node_factory(**conf)
    b = await node_factory(**conf)
    fast(a.hub)
    fast(b.hub)
    alice = Identity("alice", api_key=True, scope="t")
    sa = await a.hub.open_session(alice, "ws")
    sb = await b.hub.open_session(alice, "ws")
    for s, n in ((sa, a), (sb, b)):
        await n.hub.subscribe(s, "lobby", presence=True)
    for i in range(30):
        await (a if i % 2 else b).hub.publish(alice, "lobby", i)
    await a.hub.close_session(sa)
    await b.hub.close_session(sb)

    def seen() -> list[tuple[str, ...]]:
        return [t for t in receiver.types() if t[0] != "message.published"]

    await until(lambda: ("room.vacated", "lobby") in seen(), what="vacated")
    kinds = [t for t in seen() if not t[0].startswith("user.")]
    assert kinds == [
        ("room.occupied", "lobby"),
        ("member.joined", "lobby", "alice"),
        ("member.left", "lobby", "alice"),
        ("room.vacated", "lobby"),
    ]
    pubs = [e["message"]["data"] for e in receiver.unique() if e["type"] == "message.published"]
    assert sorted(pubs) == list(range(30))
    ids = [e["id"] for e in receiver.delivered()]
    assert len(ids) == len(set(ids))
