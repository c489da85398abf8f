"""Webhooks on one node (memory://): signed, ordered, deduplicable batches to a real HTTP
receiver; retries with backoff; the age limit; occupied/vacated and joined/left; metrics.

Nodes are real uvicorn servers (``node_factory``); sessions are driven through the hub (the
transports are covered elsewhere) or real WebSocket clients where the wire matters.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hubbub.hub.auth import Identity
from hubbub.hub.hub import Hub
from hubbub.hub.webhooks.dispatch import endpoint_label
from tests.conftest import API_KEY, Node, free_port, token
from tests.helpers import until
from tests.hub.webhook_receiver import WEBHOOK_SECRET, Receiver
from tests.ops.harness import hubbub_cmd
from tests.wsclient import WS

SVC = Identity("svc", api_key=True, scope="test")
ALL = ("room.occupied", "room.vacated", "member.joined", "member.left", "message.published",
       "user.connected", "user.disconnected")  # fmt: skip


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


def hooks(receiver: Receiver, **kw: Any) -> dict[str, Any]:
    return {
        "webhook_urls": (receiver.url,),
        "webhook_secret": (WEBHOOK_SECRET,),
        "webhook_vacated_delay": 0.3,
        **kw,
    }


def fast(hub: Hub, **tuning: float) -> None:
    """Short timings for tests: batch window, first backoff, its cap, poll."""
    assert hub.webhooks is not None
    for d in hub.webhooks.dispatchers:
        d.window = tuning.get("window", 0.05)
        d.backoff = tuning.get("backoff", 0.05)
        d.backoff_cap = tuning.get("backoff_cap", 0.2)
        d.poll = 0.05


async def test_batches_are_signed_ordered_and_carry_unique_ids(
    node_factory: Any, receiver: Receiver
) -> None:
    n: Node = await node_factory(**hooks(receiver, webhook_events=("message.published",)))
    fast(n.hub, window=0.3)
    for i in range(150):
        await n.hub.publish(SVC, "news", {"i": i})
    await until(lambda: len(receiver.delivered()) >= 150, what="150 events")
    req = receiver.requests[0]
    assert req.headers["content-type"] == "application/json"
    t, v1 = req.headers["hubbub-signature"].split(",")
    mac = hmac.new(WEBHOOK_SECRET.encode(), t[2:].encode() + b"." + req.body, hashlib.sha256)
    assert v1 == "v1=" + mac.hexdigest()
    assert all(len(r.events) <= 100 for r in receiver.requests)
    assert len(receiver.requests) >= 2  # 150 events: more than one batch
    events = receiver.delivered()
    assert [e["message"]["data"]["i"] for e in events] == list(range(150))
    assert [e["message"]["offset"] for e in events] == list(range(1, 151))
    assert len({e["id"] for e in events}) == 150
    e = events[0]
    assert e["type"] == "message.published" and e["room"] == "news"
    assert isinstance(e["ts"], int) and e["ts"] > 1_600_000_000_000
    assert receiver.refused == []


async def test_failures_are_retried_until_a_2xx_and_the_batch_comes_again(
    node_factory: Any, receiver: Receiver
) -> None:
    n: Node = await node_factory(**hooks(receiver, webhook_events=("message.published",)))
    fast(n.hub)
    receiver.answers = [500, 500, 500]
    for i in range(3):
        await n.hub.publish(SVC, "r", i)
    await until(lambda: receiver.delivered(), what="a 2xx")
    first = [e["id"] for e in receiver.requests[0].events]
    assert [r.status for r in receiver.requests] == [500, 500, 500, 200]
    assert all([e["id"] for e in r.events] == first for r in receiver.requests)  # same batch
    await n.hub.publish(SVC, "r", 3)
    await until(lambda: len(receiver.delivered()) == 4, what="the next event")
    assert [e["message"]["data"] for e in receiver.unique()] == [0, 1, 2, 3]
    hooks_ = n.hub.webhooks
    assert hooks_ is not None
    # The receiver records a request before it answers; the node counts it once it has read
    # the answer.
    await until(lambda: hooks_.stats()[0]["deliveries"]["ok"] == 2, what="the second ok")
    stats = hooks_.stats()[0]
    assert stats["deliveries"] == {"ok": 2, "failed": 3, "dropped": 0}
    async with httpx.AsyncClient() as c:
        text = (await c.get(n.url + "/metrics")).text
        body = (
            await c.get(n.url + "/v1/stats", headers={"Authorization": f"Bearer {API_KEY}"})
        ).json()
    label = endpoint_label(receiver.url)
    assert f'hubbub_webhook_deliveries_total{{endpoint="{label}",result="failed"}} 3' in text
    assert f'hubbub_webhook_queue_depth{{endpoint="{label}"}}' in text
    families = {f.name: f for f in text_string_to_metric_families(text)}  # valid exposition
    ok = [x for x in families["hubbub_webhook_deliveries"].samples if x.labels["result"] == "ok"]
    assert ok[0].value == 2 and ok[0].labels["endpoint"] == label
    assert families["hubbub_webhook_oldest_event_age_seconds"].type == "gauge"
    assert body["webhooks"][0]["deliveries"]["ok"] == 2


async def test_a_batch_older_than_max_age_is_dropped_and_counted(
    node_factory: Any, receiver: Receiver
) -> None:
    n: Node = await node_factory(
        **hooks(receiver, webhook_events=("message.published",), webhook_max_age=0.3)
    )
    fast(n.hub)
    receiver.answers = [503] * 1000
    await n.hub.publish(SVC, "r", "old")
    wh = n.hub.webhooks
    assert wh is not None
    await until(lambda: wh.stats()[0]["deliveries"]["dropped"] == 1, what="a drop")
    assert wh.stats()[0]["dropped_events"] == 1
    receiver.answers = []
    await n.hub.publish(SVC, "r", "new")  # the queue goes on behind the dropped batch
    await until(lambda: receiver.delivered(), what="the next batch")
    assert [e["message"]["data"] for e in receiver.unique()] == ["new"]


async def test_occupied_vacated_joined_left_on_one_node(
    node_factory: Any, receiver: Receiver
) -> None:
    n: Node = await node_factory(**hooks(receiver, webhook_events=ALL))
    fast(n.hub)
    a1 = await WS.connect(n.ws_url, token("alice"))
    a2 = await WS.connect(n.ws_url, token("alice"))
    await a1.result({"type": "subscribe", "room": "lobby", "presence": True})
    await a2.result({"type": "subscribe", "room": "lobby", "presence": True})
    await until(lambda: ("member.joined", "lobby", "alice") in receiver.types())
    await a1.result({"type": "unsubscribe", "room": "lobby"})
    await a2.result({"type": "unsubscribe", "room": "lobby"})
    await until(lambda: ("room.vacated", "lobby") in receiver.types(), what="vacated")
    await a1.close()
    await a2.close()
    await until(lambda: [e["type"] for e in receiver.unique()].count("user.disconnected") == 2)
    kinds = [t for t in receiver.types() if t[0] != "user.connected"]
    assert kinds[:4] == [
        ("room.occupied", "lobby"),
        ("member.joined", "lobby", "alice"),  # once: the second session adds nothing
        ("member.left", "lobby", "alice"),  # once: when the last session leaves
        ("room.vacated", "lobby"),
    ]
    connected = [e for e in receiver.unique() if e["type"] == "user.connected"]
    assert {e["user"] for e in connected} == {"alice"} and len(connected) == 2
    assert connected[0]["transport"] == "ws" and connected[0]["session"]
    member = next(e for e in receiver.unique() if e["type"] == "member.joined")["member"]
    assert member["user"] == "alice" and member["transport"] == "ws"


async def test_a_reconnect_within_the_delay_does_not_flap(
    node_factory: Any, receiver: Receiver
) -> None:
    n: Node = await node_factory(**hooks(receiver, webhook_vacated_delay=1.0))
    fast(n.hub)
    s = await n.hub.open_session(SVC, "ws")
    await n.hub.subscribe(s, "room")
    await n.hub.close_session(s)  # the connection drops …
    s = await n.hub.open_session(SVC, "ws")
    await n.hub.subscribe(s, "room")  # … and comes back within the delay
    await asyncio.sleep(1.5)
    assert receiver.types() == [("room.occupied", "room")]
    await n.hub.close_session(s)
    await until(lambda: len(receiver.types()) == 2, what="vacated after the delay")
    assert receiver.types()[1] == ("room.vacated", "room")


async def test_no_urls_means_no_webhooks_object(node_factory: Any) -> None:
    n: Node = await node_factory()
    assert n.hub.webhooks is None


def test_verify_is_importable_with_runtime_dependencies_only() -> None:
    code = (
        "import sys, hubbub.webhooks as w; "
        "heavy = {'httpx', 'redis', 'starlette', 'uvicorn', 'orjson'} & set(sys.modules); "
        "assert not heavy, heavy; print(w.verify.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "verify"


async def test_hubbub_webhooks_listen_verifies_and_prints_events(node_factory: Any) -> None:
    port = free_port()
    env = {**os.environ, "HUB_WEBHOOK_SECRET": WEBHOOK_SECRET}
    argv = [*hubbub_cmd(), "webhooks", "listen", "--port", str(port)]
    pipe = subprocess.PIPE
    # a long-running child, stopped by pid below
    proc = subprocess.Popen(argv, env=env, stdout=pipe, stderr=pipe)  # noqa: ASYNC220
    try:
        url = f"http://127.0.0.1:{port}/"
        async with httpx.AsyncClient() as c:

            async def up() -> bool:
                try:
                    r = await c.post(url, content=b"{}")
                except httpx.HTTPError:
                    return False
                return r.status_code == 400  # unsigned: refused

            await until(up, what="the listener")
        n: Node = await node_factory(
            webhook_urls=(url,), webhook_secret=(WEBHOOK_SECRET,),
            webhook_events=("message.published",),
        )  # fmt: skip
        fast(n.hub)
        await n.hub.publish(SVC, "dev", {"hello": "world"})
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 10)
        event = json.loads(line)
        assert event["type"] == "message.published"
        assert event["message"]["data"] == {"hello": "world"}
    finally:
        proc.terminate()
        proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


async def test_a_graceful_stop_delivers_what_the_memory_queue_holds(
    node_factory: Any, receiver: Receiver
) -> None:
    n: Node = await node_factory(**hooks(receiver, webhook_events=("message.published",)))
    fast(n.hub, window=0.5)  # the batch is still gathering when the stop begins
    await n.hub.publish(SVC, "last", "words")
    await n.hub.stop()
    assert [e["message"]["data"] for e in receiver.unique()] == ["words"]
