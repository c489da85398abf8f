"""Every client frame metered (hardening case 48): ``subscribe``, ``unsubscribe``, ``history``
and ``presence`` frames draw on the session's ``HUB_CLIENT_COMMAND_RATE`` bucket; over budget a
frame is answered ``error rate_limited`` (temporary) and nothing is served. ``ping`` is free,
API-key sessions are not metered, and a presence join/leave flood reaches other members only
as fast as the budget allows."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from hubbub.hub.settings import Rate
from tests.conftest import API_KEY
from tests.wsclient import WS

RATE = Rate(20.0, 40.0)


async def burst(c: WS, frames: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
    """Send ``frames`` (ids 1..n) in one go, without waiting; return the n answers by id and
    the seconds the node took (tokens refill meanwhile)."""
    t0 = time.monotonic()
    for i, f in enumerate(frames, 1):
        await c.conn.send(json.dumps({**f, "id": i}))
    answers: dict[int, dict[str, Any]] = {}
    while len(answers) < len(frames):
        f = await c.recv()
        if f.get("type") in ("reply", "error") and isinstance(f.get("id"), int):
            answers[f["id"]] = f
    return [answers[i] for i in range(1, len(frames) + 1)], time.monotonic() - t0


def served(answers: list[dict[str, Any]]) -> int:
    refused = [a for a in answers if a["type"] == "error"]
    assert all(a["code"] == "rate_limited" and a["temporary"] is True for a in refused), refused
    return len(answers) - len(refused)


async def test_history_flood_is_served_up_to_the_budget(node_factory: Any) -> None:
    node = await node_factory(client_command_rate=RATE)
    c = await WS.open(node.ws_url, "alice")
    answers, took = await burst(c, [{"type": "history", "room": "news"}] * 55)
    n = served(answers)
    assert 40 <= n <= 40 + int(RATE.rate * took) + 1, (n, took)
    assert answers[-1]["type"] == "error"  # the tail of the burst was refused
    # ping stays free, and the budget comes back with time
    assert (await c.call({"type": "ping"}))["type"] == "reply"
    await asyncio.sleep(0.2)
    assert (await c.call({"type": "history", "room": "news"}))["type"] == "reply"
    assert node.hub.metrics.rate_limited == len(answers) - n


async def test_a_refused_subscribe_subscribes_nothing(node_factory: Any) -> None:
    node = await node_factory(client_command_rate=Rate(1.0, 4.0))
    c = await WS.open(node.ws_url, "alice")
    frames = [{"type": "subscribe", "room": "a"}, {"type": "unsubscribe", "room": "a"},
              {"type": "presence", "room": "a"}, {"type": "history", "room": "a"},
              {"type": "subscribe", "room": "b"}]  # fmt: skip
    answers, _ = await burst(c, frames)
    assert [a["type"] for a in answers] == ["reply"] * 4 + ["error"]
    assert answers[-1]["code"] == "rate_limited"
    async with httpx.AsyncClient(base_url=node.url) as http:
        r = await http.post("/v1/rooms/b/messages", json={"data": "x"},
                            headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
        assert r.status_code == 201, r.text
    await c.nothing("message", 0.3)
    assert not node.hub.sessions[c.session].subs


async def test_api_key_sessions_are_not_metered(node_factory: Any) -> None:
    node = await node_factory(client_command_rate=RATE)
    c = await WS.connect(node.ws_url, additional_headers={"Authorization": f"Bearer {API_KEY}"})
    answers, _ = await burst(c, [{"type": "history", "room": "news"}] * 60)
    assert served(answers) == 60


async def test_presence_flood_reaches_members_at_the_budget(node_factory: Any) -> None:
    node = await node_factory(client_command_rate=RATE, max_queue=200)
    watcher = await WS.open(node.ws_url, "wendy")
    await watcher.join("call:room")
    flooder = await WS.open(node.ws_url, "fred")
    pair = [{"type": "subscribe", "room": "call:room", "presence": True},
            {"type": "unsubscribe", "room": "call:room"}]  # fmt: skip
    answers, took = await burst(flooder, pair * 30)  # 60 frames, 40 of budget
    n = served(answers)
    assert 40 <= n <= 40 + int(RATE.rate * took) + 1, (n, took)
    # the watcher saw at most one join or leave per served frame and is still connected
    seen: list[dict[str, Any]] = []
    try:
        while True:
            seen.append(await watcher.recv(0.5))
    except TimeoutError:
        pass
    assert 0 < sum(f["type"] in ("join", "leave") for f in seen) <= n
    assert (await watcher.call({"type": "ping"}))["type"] == "reply"
