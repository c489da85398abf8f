"""Publishing many at once: the publish lane of Redis Cluster (hub/brokers/redis_batch.py) and
the publish pipe of one Redis (hub/brokers/redis_pipe.py), in order and under faults.

The lane's own rules are checked with a scripted runner; everything else runs against a real
redis-server started for the test.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from hubbub.hub.brokers.redis_batch import PublishLane
from hubbub.hub.envelope import make_body
from hubbub.hub.errors import BrokerError
from tests.conftest import RedisProc, need_tool
from tests.helpers import until
from tests.hub.brokers.conftest import TIMEOUT, Make
from tests.hub.brokers.redis_proxy import TcpProxy


# ---- the lane alone ------------------------------------------------------------------------------
class Runner:
    """A batch runner that records batches and answers when told (``release``)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: BaseException | None = None

    async def __call__(self, calls: Sequence[int]) -> list[Any]:
        self.batches.append(list(calls))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [ValueError(c) if c < 0 else c * 10 for c in calls]


def start(lane: PublishLane[int, int], *calls: int) -> list[asyncio.Task[int]]:
    return [asyncio.ensure_future(lane.call(c)) for c in calls]


async def test_lane_sends_a_lone_call_at_once_and_batches_the_rest_in_order() -> None:
    run = Runner()
    lane: PublishLane[int, int] = PublishLane(run, max_batch=4)
    run.gate.clear()
    first = start(lane, 0, 1, 2)  # 0 finds the lane idle and leaves alone; 1, 2 queue
    await asyncio.sleep(0)
    assert run.batches == [[0]]
    later = start(lane, *range(3, 10))  # queued while 0 is in flight
    await asyncio.sleep(0)
    run.gate.set()
    assert await asyncio.gather(*first, *later) == [i * 10 for i in range(10)]
    assert run.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert (lane.batches, lane.calls) == (4, 10)
    assert await lane.call(10) == 100  # idle again: at once
    assert run.batches[-1] == [10]


async def test_lane_errors_are_per_call_or_per_batch() -> None:
    run = Runner()
    lane: PublishLane[int, int] = PublishLane(run)
    run.gate.clear()
    lead, ok, bad = start(lane, 7, 1, -1)
    await asyncio.sleep(0)
    run.gate.set()
    assert (await lead, await ok) == (70, 10)
    with pytest.raises(ValueError):
        await bad
    run.fail = BrokerError("down")
    for t in start(lane, 0, 1, 2):  # a lone call and a batch
        with pytest.raises(BrokerError):
            await t
    run.fail = RuntimeError("a bug")  # anything else: BrokerError too, and the lane goes on
    with pytest.raises(BrokerError):
        await lane.call(5)
    run.fail = None
    assert await lane.call(6) == 60


async def test_lane_drops_a_call_cancelled_before_its_batch_left() -> None:
    run = Runner()
    lane: PublishLane[int, int] = PublishLane(run)
    run.gate.clear()
    (inflight,) = start(lane, 1)
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(lane.call(2), 0.01)  # its caller gives up: cancelled
    (kept,) = start(lane, 3)
    await asyncio.sleep(0)
    run.gate.set()
    assert (await inflight, await kept) == (10, 30)
    assert run.batches == [[1], [3]]  # 2 was never sent


async def test_lane_close_fails_queued_and_in_flight_calls() -> None:
    run = Runner()
    lane: PublishLane[int, int] = PublishLane(run)
    run.gate.clear()
    (lead,) = start(lane, 1)
    await asyncio.sleep(0)
    queued = start(lane, 2, 3)
    await asyncio.sleep(0)
    lane._start_drain()  # what the lead does when it ends: now the queue has a drain task
    await asyncio.sleep(0)
    await lane.close()
    lead.cancel()  # the lead runs in its caller's task: the caller's timeout ends it
    for t in queued:
        with pytest.raises(BrokerError):
            await t
    with pytest.raises(BrokerError):
        await lane.call(4)


# ---- RedisBroker -----------------------------------------------------------------------------------
def body(room: str, producer: int, seq: int) -> bytes:
    return make_body(room, orjson.dumps({"p": producer, "s": seq}), ts=1)


def seq_of(raw: bytes) -> tuple[int, int]:
    data = orjson.loads(raw)["data"]
    return data["p"], data["s"]


async def redis_cli(proc: RedisProc, *args: str) -> None:
    child = await asyncio.create_subprocess_exec(
        need_tool("redis-cli"), "-p", str(proc.port), *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await child.wait()


async def test_concurrent_publishes_share_round_trips(make: Make) -> None:
    pub, _ = await make()
    sub, listener = await make()
    await sub.subscribe("r")
    results = await asyncio.gather(*(pub.publish("r", body("r", 0, i)) for i in range(300)))
    assert [r.offset for r in results] == list(range(1, 301))
    assert pub.pipe is not None
    assert pub.pipe.calls == 300 and pub.pipe.writes <= 2  # at most 256 calls per write
    await until(lambda: len(listener.of("r")) == 300)
    assert [seq_of(p.body)[1] for p in listener.of("r")] == list(range(300))


async def test_script_flush_between_batches_keeps_the_order(
    make: Make, redis_proc: RedisProc
) -> None:
    pub, _ = await make()
    sub, listener = await make()
    await sub.subscribe("r")
    await pub.publish("r", body("r", 0, 0))
    await redis_cli(redis_proc, "SCRIPT", "FLUSH")  # as after a restart, but the data stays
    calls = [pub.publish("r", body("r", 0, i), ephemeral=i % 3 == 0) for i in range(1, 100)]
    results = await asyncio.gather(*calls)
    stored = [r.offset for r in results if r.offset is not None]
    assert stored == list(range(2, len(stored) + 2))
    await until(lambda: len(listener.of("r")) == 100)
    assert [seq_of(p.body)[1] for p in listener.of("r")] == list(range(100))


async def test_calls_in_flight_when_redis_restarts_fail_every_caller(
    make: Make, redis_proc: RedisProc
) -> None:
    pub, _ = await make(timeout=2.0)
    await pub.publish("r", body("r", 0, 0))
    assert redis_proc.proc is not None and pub.pipe is not None
    os.kill(redis_proc.proc.pid, signal.SIGSTOP)  # what is written is never answered
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    calls = asyncio.gather(
        *(pub.publish("r", body("r", 0, i)) for i in range(1, 200)), return_exceptions=True
    )
    await until(lambda: pub.pipe is not None and pub.pipe.calls == 200)  # all written
    redis_proc.restart()  # SIGKILL and start again: the data is gone
    results = await asyncio.wait_for(calls, 5)
    assert loop.time() - t0 < 1.5  # the lost connection fails them at once, not at the timeout
    assert all(isinstance(r, BrokerError) for r in results), results
    await until(lambda: pub.link is not None and pub.link.up, 5.0)
    again = await pub.publish("r", body("r", 0, 999))  # a new connection, the script loaded
    assert again.offset == 1  # a new epoch: nothing of the failed calls was stored
    assert [p.offset for p in (await pub.history("r", after=0)).publications] == [1]


async def test_an_idle_connection_closed_by_redis_is_replaced(
    make: Make, redis_proc: RedisProc
) -> None:
    pub, _ = await make()
    await pub.publish("r", body("r", 0, 0))
    await redis_cli(redis_proc, "CLIENT", "KILL", "TYPE", "normal")
    await asyncio.sleep(0.1)
    results = await asyncio.gather(*(pub.publish("r", body("r", 0, i)) for i in range(1, 4)))
    assert [r.offset for r in results] == [2, 3, 4]


async def test_connections_killed_under_traffic_lose_nothing_silently(
    make: Make, redis_proc: RedisProc
) -> None:
    """Several producers, each with many publications in flight, while Redis kills the
    command connections again and again: every call ends (no hang); every success is stored
    at the offset it was told; each producer's stored publications are in its order."""
    pub, _ = await make(history_size=10_000)
    calls: dict[tuple[int, int], asyncio.Task[Any]] = {}

    async def producer(p: int) -> None:
        for seq in range(150):
            calls[p, seq] = asyncio.ensure_future(pub.publish("r", body("r", p, seq)))
            if seq % 5 == 4:
                await asyncio.sleep(0.004)

    admin = aioredis.Redis(port=redis_proc.port)

    async def killer() -> None:
        # A paused batch is surely in flight when the connections are killed.
        for _ in range(6):
            await asyncio.sleep(0.05)
            await admin.execute_command("CLIENT", "PAUSE", 40, "WRITE")
            await asyncio.sleep(0.015)
            await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")

    try:
        await asyncio.gather(producer(0), producer(1), producer(2), killer())
    finally:
        await admin.aclose()
    _, pending = await asyncio.wait(calls.values(), timeout=5)
    assert not pending
    ok = {k: t.result() for k, t in calls.items() if t.exception() is None}
    for t in calls.values():
        assert t.exception() is None or isinstance(t.exception(), BrokerError)
    page = await pub.history("r", after=0, limit=10_000)
    stored = {p.offset: seq_of(p.body) for p in page.publications}
    for key, res in ok.items():
        assert stored[res.offset] == key
    for p in range(3):
        seqs = [seq for (q, seq) in stored.values() if q == p]
        assert seqs == sorted(seqs)
    assert 0 < len(ok) < len(calls)  # some calls failed, the others went on


async def test_messages_arriving_together_are_delivered_in_one_loop_iteration(
    make: Make,
) -> None:
    """The pub/sub reader hands every message already read to the node without yielding to
    the loop, so a batch's messages fan out in one iteration and the WebSocket flusher writes
    them to each subscriber at once."""
    pub, _ = await make()
    sub, listener = await make()
    await sub.subscribe("r")
    loop = asyncio.get_running_loop()
    ticks = 0
    running = True

    def tick() -> None:  # runs once per loop iteration
        nonlocal ticks
        ticks += 1
        if running:
            loop.call_soon(tick)

    seen: list[int] = []
    deliver = listener.deliver

    def counting(p: Any) -> None:
        seen.append(ticks)
        deliver(p)

    listener.deliver = counting  # type: ignore[method-assign]
    loop.call_soon(tick)
    try:
        results = await asyncio.gather(*(pub.publish("r", body("r", 0, i)) for i in range(101)))
        await until(lambda: len(seen) == 101)
    finally:
        running = False
    assert [r.offset for r in results] == list(range(1, 102))
    assert pub.pipe is not None and pub.pipe.writes == 1  # the 101 calls left in one write
    assert len(set(seen[1:])) <= 2, seen  # the 100 arrive in one read (or two), not 100


async def test_a_connection_that_stops_answering_is_replaced(
    make: Make, redis_proc: RedisProc
) -> None:
    """Redis runs the calls but the replies never come back (a deaf proxy): the callers fail
    within the timeout, and the next call goes over a new connection instead of waiting behind
    the silent one forever."""
    proxy = await TcpProxy(redis_proc.port).start()
    try:
        pub, _ = await make(url=proxy.url)
        assert (await pub.publish("r", body("r", 0, 0))).offset == 1
        proxy.deafen()  # the connections open now hear nothing more
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(BrokerError):
            await pub.publish("r", body("r", 0, 1))
        assert loop.time() - t0 < TIMEOUT + 0.5
        await asyncio.sleep(0.05)
        res = await pub.publish("r", body("r", 0, 2))
        assert res.offset == 3  # the deaf call did run; nothing is lost or reordered
        page = await pub.history("r", after=0)
        assert [seq_of(p.body)[1] for p in page.publications] == [0, 1, 2]
    finally:
        await proxy.close()


async def test_one_write_in_flight_gathers_the_calls_of_many_loop_iterations(
    redis_proc: RedisProc,
) -> None:
    """With ``one_write_in_flight`` (the calls pipe), calls made in many loop iterations while a
    write is unanswered leave together once it is answered, in their order; without it, each
    iteration's calls leave in a write of their own."""
    from redis.asyncio.connection import Connection

    from hubbub.hub.brokers.redis_pipe import PublishPipe

    async def run(gather: bool) -> tuple[int, list[Any]]:
        pipe = PublishPipe(
            lambda: Connection(host="127.0.0.1", port=redis_proc.port),
            timeout=5,
            one_write_in_flight=gather,
        )
        try:
            key = f"k-{gather}"
            # BLPOP on an empty list holds the connection's replies for 0.3 s (Redis answers
            # in order), so the calls below are made while the first write is unanswered.
            calls = [asyncio.ensure_future(pipe.call("BLPOP", f"none-{gather}", "0.3"))]
            for i in range(10):
                await asyncio.sleep(0.01)  # one call per loop iteration, or more
                calls.append(asyncio.ensure_future(pipe.call("RPUSH", key, str(i))))
            replies = await asyncio.gather(*calls)
            return pipe.writes, replies
        finally:
            await pipe.close()

    writes, replies = await run(gather=True)
    assert writes == 2 and replies == [None, *range(1, 11)]
    writes, replies = await run(gather=False)
    assert writes == 11 and replies == [None, *range(1, 11)]
