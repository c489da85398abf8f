"""The soak's load on a real node (memory broker, real uvicorn on a socket): followers built on
the bench's wire code (WebSocket and SSE, one room and several, a presence member) resume after
a drop with nothing lost, a stalled follower reads nothing until the stall ends and then catches
up, and the publisher's WebSocket link (bench wire code) and HTTP posts are acknowledged."""

from __future__ import annotations

import asyncio
from typing import Any

from hubbub.bench.soak_check import check
from hubbub.bench.soak_clients import Follower, SseFollower, WsFollower
from hubbub.bench.soak_publish import Publisher
from hubbub.bench.soak_workers import settle
from hubbub.bench.wire import Tally
from tests.conftest import API_KEY
from tests.helpers import until

ROOMS = ["soak-a", "soak-b"]


def _followers(url: str) -> list[Follower]:
    tally = Tally()
    return [
        WsFollower("ws2", ROOMS, [url], API_KEY, 1.0, tally, presence=True),
        WsFollower("ws1", ROOMS[:1], [url], API_KEY, 2.0, tally, slow=0.002),
        SseFollower("sse2", ROOMS, [url], API_KEY, 3.0, tally),
        SseFollower("sse1", ROOMS[1:], [url], API_KEY, 4.0, tally),
    ]


def _heads(acks: list[dict[str, Any]]) -> dict[str, list[Any]]:
    head: dict[str, list[Any]] = {}
    for a in acks:
        at = head.setdefault(a["room"], [a["epoch"], 0])
        at[1] = max(at[1], a["offset"])
    return head


async def _publish(url: str, n: int, seed: int, midway: Any = None) -> Publisher:
    """``n`` publications (half over WebSocket), ``midway()`` called after the first half."""
    pub = Publisher([url], API_KEY, ROOMS, rate=200, seed=seed, ws_share=0.5, size=64)
    stop = asyncio.Event()
    task = asyncio.create_task(pub.run(stop))
    if midway is not None:
        await until(lambda: pub.sent >= n // 2, 20, "publishes sent")
        midway()
    await until(lambda: pub.sent >= n, 20, "publishes sent")
    stop.set()
    await task
    assert not pub.failed, pub.failed
    return pub


async def test_followers_resume_after_a_drop_with_nothing_lost(node: Any) -> None:
    followers = _followers(node.url)
    runs = [asyncio.create_task(f.run()) for f in followers]
    try:
        assert await settle(followers, {}, 15)

        def drop() -> None:
            for f in followers:
                f.drop()

        acks = (await _publish(node.url, 80, 1, drop)).acks
        assert {a["via"] for a in acks} == {"http", "ws"}
        assert await settle(followers, _heads(acks), 15)
    finally:
        for f in followers:
            f.finish()
        await asyncio.gather(*runs, return_exceptions=True)
    lives = [life for f in followers for life in f.lives]
    rep = check(acks, lives)
    assert rep.ok, rep.violations
    assert rep.resumes == 6 and rep.final_lives == 6 and rep.presence_checks == 4
    # every room of a follower resumed from where it was: the lives chain
    for f in followers:
        k = len(f.rooms)
        assert [life["since"] is not None for life in f.lives] == [False] * k + [True] * k
        assert all(life["end"] == "dropped by the soak" for life in f.lives[: len(f.rooms)])


async def test_a_stalled_follower_reads_nothing_until_the_stall_ends(node: Any) -> None:
    followers = _followers(node.url)
    runs = [asyncio.create_task(f.run()) for f in followers]
    try:
        assert await settle(followers, {}, 15)
        before = {f.cid: dict(f.pos) for f in followers}
        for f in followers:
            assert f.stall(3600)
            assert not f.stall(1)  # already stalled
        pub = await _publish(node.url, 20, 3)
        head = _heads(pub.acks)
        await asyncio.sleep(0.3)
        assert {f.cid: dict(f.pos) for f in followers} == before  # nothing read
        assert not await settle(followers, head, 0.2)
        for f in followers:  # the stall ends: each reads on and catches up
            f.stall_until = 0.0
            assert f.conn is not None
            f.conn.hold()
        assert await settle(followers, head, 15)
    finally:
        for f in followers:
            f.finish()
        await asyncio.gather(*runs, return_exceptions=True)
    rep = check(pub.acks, [life for f in followers for life in f.lives])
    assert rep.ok, rep.violations
    assert rep.deliveries >= 20
