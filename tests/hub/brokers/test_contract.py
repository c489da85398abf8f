"""The broker and state store contracts (hub/brokers/base.py), run against every implementation.

``memory://`` runs with an injected clock; Redis runs against a real redis-server (the session's
``shared_redis``, on a free port) and a real three-shard Redis Cluster, with a unique key prefix
per test, and real time.
"""

from __future__ import annotations

import asyncio
import gc
import re
import secrets
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from hubbub.hub.brokers.base import Broker, Idempotency, Member, StateStore
from hubbub.hub.brokers.memory import MemoryBroker
from hubbub.hub.brokers.memory_state import MemoryStateStore
from hubbub.hub.brokers.redis import RedisBroker
from hubbub.hub.brokers.redis_state import RedisStateStore
from hubbub.hub.envelope import make_body
from hubbub.hub.errors import Conflict, RoomFull
from tests.helpers import until
from tests.hub.brokers.brokertools import Recorder


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    broker: Broker
    listener: Recorder
    node: str
    advance: Callable[[float], Awaitable[None]]
    kind: str

    async def settle(self) -> None:
        """Give in-flight deliveries time to arrive (Redis pub/sub is asynchronous)."""
        await asyncio.sleep(0 if self.kind == "memory" else 0.15)


@dataclass
class StateEnv:
    state: StateStore
    node: str
    advance: Callable[[float], Awaitable[None]]
    kind: str


Factory = Callable[..., Awaitable[Env]]
StateFactory = Callable[..., Awaitable[StateEnv]]
KINDS = ["memory", "redis", "redis-cluster"]


class Started:
    """What a test started, closed afterwards in reverse order (state stores before their
    broker)."""

    def __init__(self) -> None:
        self.items: list[Broker | StateStore] = []

    async def close(self) -> None:
        for item in reversed(self.items):
            await item.close()


def _clock(kind: str) -> tuple[Any, Callable[[float], Awaitable[None]]]:
    """The memory implementations' clock and how a test moves time on; real time for Redis."""
    if kind != "memory":
        return None, asyncio.sleep
    clock = FakeClock()

    async def advance_clock(seconds: float) -> None:
        clock.now += seconds

    return clock, advance_clock


async def _start_broker(
    request: pytest.FixtureRequest, kind: str, started: Started, clock: Any, **kw: Any
) -> Env:
    listener = Recorder()
    node = secrets.token_hex(6)
    if kind == "memory":
        broker: Broker = MemoryBroker(clock=clock, **kw)
    else:
        redis = request.getfixturevalue("shared_redis" if kind == "redis" else "redis_cluster")
        prefix = kw.pop("prefix", f"t{secrets.token_hex(4)}:")
        broker = RedisBroker(redis.url, prefix=prefix, timeout=5.0, **kw)
    await broker.start(listener, node)
    started.items.append(broker)
    return Env(broker, listener, node, asyncio.sleep, kind)


@pytest.fixture(params=KINDS)
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """``await make(**broker options)``: a started broker of the parametrized kind."""
    kind: str = request.param
    started = Started()

    async def factory(**kw: Any) -> Env:
        clock, advance = _clock(kind)
        env = await _start_broker(request, kind, started, clock, **kw)
        env.advance = advance
        return env

    yield factory
    await started.close()


@pytest.fixture(params=KINDS)
async def make_state(request: pytest.FixtureRequest) -> AsyncIterator[StateFactory]:
    """``await make_state(prefix=None)``: a started state store of the parametrized kind (on
    Redis with the broker it shares its connection pool with). Stores made with the same
    ``prefix`` are two nodes of one cluster."""
    kind: str = request.param
    started = Started()

    async def factory(prefix: str | None = None) -> StateEnv:
        clock, advance = _clock(kind)
        if kind == "memory":
            state: StateStore = MemoryStateStore(clock=clock)
            node = secrets.token_hex(6)
        else:
            opts = {"prefix": prefix} if prefix else {}
            env = await _start_broker(request, kind, started, clock, **opts)
            assert isinstance(env.broker, RedisBroker)
            state, node = RedisStateStore(env.broker), env.node
        await state.start(node)
        started.items.append(state)
        return StateEnv(state, node, advance, kind)

    yield factory
    await started.close()


def body(room: str, n: Any) -> bytes:
    return make_body(room, b'{"n":%d}' % n if isinstance(n, int) else n, ts=1)


async def test_start_reports_up(make: Factory) -> None:
    env = await make()
    assert await env.broker.ready()
    assert env.listener.states[-1] is True


async def test_start_raises_no_warning(make_state: StateFactory) -> None:
    """Starting a node's backends (on Redis: the broker, then the state store) warns about
    nothing, e.g. not about a synchronous retry policy handed to an asyncio client. (Garbage
    left by earlier tests is collected first: its warnings are not this start's.)"""
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = await make_state()
        await env.state.connection_count("nobody")
    assert [str(w.message) for w in caught] == []


async def test_offsets_have_no_holes_under_concurrency(make: Factory) -> None:
    env = await make()
    b = env.broker
    results = await asyncio.gather(*(b.publish("r1", body("r1", i)) for i in range(60)))
    offsets = sorted(r.offset for r in results if r.offset is not None)
    assert offsets == list(range(1, 61))
    assert len({r.epoch for r in results}) == 1
    page = await b.history("r1", after=0, limit=100)
    assert [p.offset for p in page.publications] == list(range(1, 61))
    assert (page.head, page.first, page.epoch) == (60, 1, results[0].epoch)
    by_offset = {r.offset: i for i, r in enumerate(results)}
    for p in page.publications:
        assert p.body == body("r1", by_offset[p.offset])
        assert p.epoch == page.epoch and p.room == "r1"


async def test_concurrent_publishes_reach_the_broker_in_call_order(make: Factory) -> None:
    """Publish coroutines started in some order keep that order per room (what lets a
    connection have several publications in flight): offsets and delivery follow it, and an
    idempotent repeat, a conflict or an ephemeral publication in between changes nothing."""
    env = await make()
    b = env.broker
    rooms = ["oa", "ob", "oc"]
    for room in rooms:
        await b.subscribe(room)
    calls = []
    for i in range(150):
        room = rooms[i % 3]
        if i % 10 == 4 and env.kind != "redis-cluster":  # cluster: PUBLISH may take another node
            calls.append(b.publish(room, body(room, i), ephemeral=True))
        else:
            calls.append(b.publish(room, body(room, i)))
    key = Idempotency("s", "k1", "fp")
    calls.append(b.publish("oa", body("oa", 1000), idempotency=key))
    calls.append(b.publish("oa", body("oa", 1000), idempotency=key))
    calls.append(b.publish("oa", body("oa", 1001), idempotency=Idempotency("s", "k1", "other")))
    calls.append(b.publish("oa", body("oa", 1002)))
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[-2], Conflict)
    first, repeat = results[-4], results[-3]
    assert not isinstance(first, BaseException) and not isinstance(repeat, BaseException)
    assert repeat.duplicate and (repeat.offset, repeat.epoch) == (first.offset, first.epoch)
    for room in rooms:
        stored = [r for r in results if not isinstance(r, BaseException) and r.room == room]
        offsets = [r.offset for r in stored if r.offset is not None and not r.duplicate]
        assert offsets == list(range(1, len(offsets) + 1))
    sent: dict[str, list[bytes]] = {room: [] for room in rooms}
    for i in range(150):
        sent[rooms[i % 3]].append(body(rooms[i % 3], i))
    sent["oa"] += [body("oa", 1000), body("oa", 1002)]
    total = sum(len(v) for v in sent.values())
    await until(lambda: len(env.listener.pubs) >= total, 5.0)
    for room in rooms:
        got = [p.body for p in env.listener.of(room)]
        assert got == sent[room]


async def test_epoch_is_random_per_room_and_stable(make: Factory) -> None:
    """The epoch is stable while the room is kept: subscribed to, or retaining publications
    (an unread, unpublished room may be forgotten: see test_reads_keep_nothing)."""
    env = await make()
    b = env.broker
    for room in ("a", "b", "c"):
        await b.subscribe(room)
    e1, h1 = await b.position("a")
    e2, h2 = await b.position("b")
    assert re.fullmatch(r"[A-Za-z0-9]{8}", e1) and re.fullmatch(r"[A-Za-z0-9]{8}", e2)
    assert e1 != e2 and h1 == h2 == 0
    r = await b.publish("a", body("a", 1))
    assert (r.epoch, r.offset) == (e1, 1)
    assert await b.position("a") == (e1, 1)
    page = await b.history("c")  # creates the epoch too
    assert (page.head, page.first, page.publications) == (0, 1, [])
    assert (await b.position("c"))[0] == page.epoch


async def test_history_after_limit_and_newest(make: Factory) -> None:
    env = await make()
    b = env.broker
    for i in range(1, 11):
        await b.publish("h", body("h", i))
    newest = await b.history("h", limit=3)
    assert [p.offset for p in newest.publications] == [8, 9, 10]
    assert (newest.head, newest.first) == (10, 1)
    assert newest.publications[0].body == body("h", 8)
    assert [p.offset for p in (await b.history("h", after=4, limit=3)).publications] == [5, 6, 7]
    assert [p.offset for p in (await b.history("h", after=0, limit=2)).publications] == [1, 2]
    assert (await b.history("h", after=10)).publications == []
    assert (await b.history("h", after=99)).publications == []
    assert (await b.history("h", limit=0)).publications == []
    assert (await b.history("h", after=3, limit=0)).publications == []


async def test_history_is_bounded_by_bytes(make: Factory) -> None:
    """``max_bytes`` ends a page before the body that would take it past the bound, keeps at
    least one publication, and starts where the page would start without it (PROTOCOL.md §8)."""
    env = await make()
    b = env.broker
    sizes = [100, 300, 200, 5000, 100, 100, 100, 100, 100, 100]
    for i, n in enumerate(sizes, 1):
        await b.publish("bytes", make_body("bytes", b'"' + b"x" * n + b'"', event=f"e{i}"))
    length = {p.offset: len(p.body) for p in (await b.history("bytes", after=0)).publications}

    def offsets(page: Any) -> list[int]:
        return [p.offset for p in page.publications]

    three = length[1] + length[2] + length[3]
    page = await b.history("bytes", after=0, limit=100, max_bytes=three)
    assert offsets(page) == [1, 2, 3] and (page.head, page.first) == (10, 1)
    page = await b.history("bytes", after=0, limit=100, max_bytes=three - 1)
    assert offsets(page) == [1, 2]
    page = await b.history("bytes", after=3, limit=100, max_bytes=10)  # larger than the bound
    assert offsets(page) == [4]
    page = await b.history("bytes", after=0, limit=2, max_bytes=10**9)  # the count still holds
    assert offsets(page) == [1, 2]
    page = await b.history("bytes", limit=8, max_bytes=length[3] + length[4])  # newest 8: 3..10
    assert offsets(page) == [3, 4]
    page = await b.history("bytes", limit=3, max_bytes=10**9)
    assert offsets(page) == [8, 9, 10]
    assert offsets(await b.history("bytes", after=10, max_bytes=1)) == []
    assert offsets(await b.history("bytes", limit=0, max_bytes=1)) == []
    # Page by page from the start gives every publication once, in order.
    seen: list[int] = []
    after = 0
    while True:
        page = await b.history("bytes", after=after, limit=100, max_bytes=400)
        if not page.publications:
            break
        seen += offsets(page)
        after = seen[-1]
    assert seen == list(range(1, 11))


async def test_history_is_bounded_by_size(make: Factory) -> None:
    env = await make(history_size=5)
    b = env.broker
    for i in range(1, 9):
        await b.publish("s", body("s", i))
    page = await b.history("s", after=0, limit=100)
    assert [p.offset for p in page.publications] == [4, 5, 6, 7, 8]
    assert (page.head, page.first) == (8, 4)
    assert [p.offset for p in (await b.history("s", after=1, limit=2)).publications] == [4, 5]
    assert len((await b.history("s", limit=100)).publications) == 5


async def test_history_is_bounded_by_age(make: Factory) -> None:
    env = await make(history_ttl=0.4)
    b = env.broker
    await b.subscribe("t")  # a subscribed room is kept after its history expires
    await b.publish("t", body("t", 1))
    await b.publish("t", body("t", 2))
    await env.advance(0.6)
    r = await b.publish("t", body("t", 3))
    page = await b.history("t", after=0)
    assert [p.offset for p in page.publications] == [3]
    assert (page.head, page.first, page.epoch) == (3, 3, r.epoch)
    assert [p.offset for p in (await b.history("t")).publications] == [3]
    await env.advance(0.6)
    page = await b.history("t", after=0)
    assert (page.publications, page.head, page.first, page.epoch) == ([], 3, 4, r.epoch)
    # the offset counter of a kept room outlives the history
    assert (await b.publish("t", body("t", 4))).offset == 4


async def test_ephemeral_gets_no_offset_and_is_not_stored(make: Factory) -> None:
    env = await make()
    b = env.broker
    await b.subscribe("e")
    await b.publish("e", body("e", 1))
    r = await b.publish("e", body("e", 2), ephemeral=True)
    assert (r.offset, r.epoch, r.duplicate) == (None, None, False)
    page = await b.history("e", after=0)
    assert [p.offset for p in page.publications] == [1] and page.head == 1
    await until(lambda: len(env.listener.of("e")) == 2)
    live = env.listener.of("e")[1]
    assert (live.offset, live.epoch, live.body) == (None, None, body("e", 2))


async def test_idempotency_repeat_and_conflict(make: Factory) -> None:
    env = await make()
    b = env.broker
    await b.subscribe("i")
    idem = Idempotency(scope="key:a", key="k1", fingerprint="fp1")
    first = await b.publish("i", body("i", 1), idempotency=idem)
    again = await b.publish("i", body("i", 1), idempotency=idem)
    assert (first.offset, first.duplicate) == (1, False)
    assert (again.offset, again.epoch, again.duplicate) == (1, first.epoch, True)
    with pytest.raises(Conflict):
        await b.publish("i", body("i", 2), idempotency=Idempotency("key:a", "k1", "fp2"))
    other_scope = await b.publish("i", body("i", 1), idempotency=Idempotency("key:b", "k1", "fp1"))
    other_room = await b.publish("j", body("j", 1), idempotency=idem)
    assert (other_scope.offset, other_scope.duplicate) == (2, False)
    assert (other_room.offset, other_room.duplicate) == (1, False)
    eph = Idempotency("key:a", "k2", "fp")
    e1 = await b.publish("i", body("i", 3), ephemeral=True, idempotency=eph)
    e2 = await b.publish("i", body("i", 3), ephemeral=True, idempotency=eph)
    assert (e1.offset, e1.duplicate, e2.offset, e2.duplicate) == (None, False, None, True)
    assert [p.offset for p in (await b.history("i", after=0)).publications] == [1, 2]
    await env.settle()
    assert [p.offset for p in env.listener.of("i")] == [1, 2, None]


async def test_delivery_in_order_only_while_subscribed(make: Factory) -> None:
    env = await make()
    b = env.broker
    await b.publish("d", body("d", 0))  # before subscribe: not delivered
    # (a cluster forwards PUBLISH between shards asynchronously: let it land first)
    await env.settle()
    await b.subscribe("d")
    for i in range(1, 31):
        await b.publish("d", body("d", i))
    await b.publish("other", body("other", 1))  # never subscribed
    await until(lambda: len(env.listener.of("d")) == 30)
    got = env.listener.of("d")
    assert [p.offset for p in got] == list(range(2, 32))
    assert [p.body for p in got] == [body("d", i) for i in range(1, 31)]
    assert all(p.epoch == got[0].epoch for p in got)
    await b.unsubscribe("d")
    await b.publish("d", body("d", 99))
    await b.publish_frame("d", b'{"type":"join","room":"d"}')
    await env.settle()
    assert len(env.listener.of("d")) == 30
    assert env.listener.of("other") == []
    await b.subscribe("d")  # again
    await b.publish("d", body("d", 100))
    await until(lambda: len(env.listener.of("d")) == 31)
    assert env.listener.of("d")[-1].offset == 33


async def test_publish_frame_fans_out_without_storing(make: Factory) -> None:
    env = await make()
    b = env.broker
    await b.subscribe("f")
    frame = b'{"type":"join","room":"f","user":"u","session":"s|x"}'
    await b.publish_frame("f", frame)
    await until(lambda: len(env.listener.of("f")) == 1)
    pub = env.listener.of("f")[0]
    assert (pub.offset, pub.epoch, pub.body, pub.kind) == (None, None, frame, "join")
    assert (await b.history("f", after=0)).publications == []
    assert (await b.position("f"))[1] == 0


async def test_control_to_all_and_to_one_node(make: Factory) -> None:
    env = await make()
    b = env.broker
    await b.send_control({"t": "kick", "user": "u1"})
    await b.send_control({"t": "direct", "to": "s"}, env.node)
    await b.send_control({"t": "lost"}, "another-node")
    await until(lambda: len(env.listener.controls) == 2)
    await env.settle()
    # Two channels (everyone's, this node's): no order between them is promised (on a cluster
    # the two PUBLISHes may enter at different nodes).
    got = sorted(env.listener.controls, key=lambda m: m["t"])
    assert got == [{"t": "direct", "to": "s"}, {"t": "kick", "user": "u1"}]


# ---- the state store contract -------------------------------------------------------------------


async def test_presence_add_list_remove(make_state: StateFactory) -> None:
    env = await make_state()
    b = env.state
    m1 = Member("p", "s1", "alice", "ws", env.node, name="Alice", info={"k": [1, 2]})
    m2 = Member("p", "s2", "bob", "sse", env.node)
    await b.presence_add(m1)
    await b.presence_add(m2)
    await b.presence_add(Member("q", "s3", "carol", "ws", env.node))
    assert sorted(await b.presence_list("p"), key=lambda m: m.session) == [m1, m2]
    await b.presence_remove("p", "s1")
    await b.presence_remove("p", "nope")
    assert await b.presence_list("p") == [m2]
    assert await b.presence_list("empty") == []
    assert [m.user for m in await b.presence_list("q")] == ["carol"]


async def test_connection_counts(make_state: StateFactory) -> None:
    env = await make_state()
    b = env.state
    assert await b.connection_add("u", "s1") == 1
    assert await b.connection_add("u", "s2") == 2
    assert await b.connection_add("u", "s2") == 2
    assert await b.connection_add("v", "s3") == 1
    assert await b.connection_count("u") == 2
    await b.connection_remove("u", "s1")
    await b.connection_remove("u", "missing")
    assert await b.connection_count("u") == 1
    await b.connection_remove("u", "s2")
    assert await b.connection_count("u") == 0
    assert await b.connection_count("nobody") == 0


async def test_list_rooms_with_pagination(make_state: StateFactory) -> None:
    env = await make_state()
    b = env.state
    await b.room_sessions("a:1", 1)
    await b.room_sessions("a:2", 1)
    await b.room_sessions("a:2", 1)
    await b.room_sessions("b:1", 1)
    await b.room_sessions("a:3", 1)
    await b.room_sessions("a:3", -1)
    assert await b.list_rooms("", None, 10) == ([("a:1", 1), ("a:2", 2), ("b:1", 1)], None)
    page, cursor = await b.list_rooms("a:", None, 1)
    assert (page, cursor) == ([("a:1", 1)], "a:1")
    assert await b.list_rooms("a:", cursor, 1) == ([("a:2", 2)], None)
    assert await b.list_rooms("a:", None, 2) == ([("a:1", 1), ("a:2", 2)], None)
    assert await b.list_rooms("", "a:2", 10) == ([("b:1", 1)], None)
    assert await b.list_rooms("zzz", None, 10) == ([], None)


async def test_take_is_a_token_bucket(make_state: StateFactory) -> None:
    env = await make_state()
    b = env.state
    got = [await b.take("k", 10.0, 3.0) for _ in range(4)]
    assert [g[0] for g in got] == [True, True, True, False]
    _, remaining, reset = got[3]
    assert 0.0 <= remaining < 1.0 and 0.1 < reset <= 0.31
    assert (await b.take("other", 10.0, 3.0))[0] is True
    await env.advance(0.25)
    assert (await b.take("k", 10.0, 3.0))[0] is True


async def test_take_many_takes_what_the_bucket_holds(make_state: StateFactory) -> None:
    env = await make_state()
    b = env.state
    assert await b.take_many("m", 4.0, 5.0, 3) == 3
    assert await b.take_many("m", 4.0, 5.0, 3) == 2  # what is left
    assert await b.take_many("m", 4.0, 5.0, 3) == 0
    assert (await b.take("m", 4.0, 5.0))[0] is False  # one bucket with take
    await env.advance(0.6)
    assert 2 <= await b.take_many("m", 4.0, 5.0, 3) <= 3  # refilled (a little time passes)
    assert await b.take_many("free", 0.0, 0.0, 7) == 7


async def test_take_at_rate_zero_is_unlimited(make_state: StateFactory) -> None:
    env = await make_state()
    got = [await env.state.take("free", 0.0, 0.0) for _ in range(20)]
    assert all(allowed for allowed, _, _ in got)
    assert all(reset == 0.0 for _, _, reset in got)


async def test_revocations_keep_the_latest_cutoff_and_forget_old_ones(
    make_state: StateFactory,
) -> None:
    """A revocation per user: a later cutoff replaces an earlier one, an earlier one is
    ignored, and one older than ``keep`` is no longer listed."""
    import time

    env = await make_state()
    b = env.state
    now = int(time.time())
    assert await b.revocations(60.0) == {}
    await b.revoke("alice", now - 5, 60.0)
    await b.revoke("alice", now, 60.0)
    await b.revoke("alice", now - 10, 60.0)  # announcements may come in any order
    await b.revoke("bob", now - 30, 60.0)
    assert await b.revocations(60.0) == {"alice": now, "bob": now - 30}
    assert await b.revocations(20.0) == {"alice": now}  # bob's is older than keep


async def test_presence_limit_is_atomic(make_state: StateFactory) -> None:
    """The primitive of call rooms: of concurrent joins exactly ``limit`` get in; a member
    already present may refresh; the refused leave nothing behind."""
    env = await make_state()
    b = env.state
    joins = [
        b.presence_add(Member("call:x", f"s{i}", f"u{i}", "ws", env.node), limit=2)
        for i in range(8)
    ]
    results = await asyncio.gather(*joins, return_exceptions=True)
    assert sum(r is None for r in results) == 2
    assert all(isinstance(r, RoomFull) for r in results if r is not None)
    present = await b.presence_list("call:x")
    assert len(present) == 2
    await b.presence_add(present[0], limit=2)  # already in: not refused
    await b.presence_remove("call:x", present[1].session)
    await b.presence_add(Member("call:x", "late", "v", "ws", env.node), limit=2)
    assert {m.session for m in await b.presence_list("call:x")} == {present[0].session, "late"}


@pytest.mark.parametrize("make_state", ["redis", "redis-cluster"], indirect=True)
async def test_nodes_share_state_and_close_forgets_its_own(make_state: StateFactory) -> None:
    """Two nodes of one cluster (same prefix) see each other's entries; a node that closes
    removes its own. (One process has one memory store: Redis only.)"""
    first = await make_state()
    assert isinstance(first.state, RedisStateStore)
    prefix = first.state.prefix
    second = await make_state(prefix=prefix)
    a, b = first.state, second.state
    await a.presence_add(Member("p", "s1", "alice", "ws", first.node))
    await b.presence_add(Member("p", "s2", "bob", "ws", second.node))
    assert await a.connection_add("bob", "s3") == 1
    assert await b.connection_add("bob", "s4") == 2
    await a.room_sessions("p", 1)
    await b.room_sessions("p", 2)
    assert {m.session for m in await a.presence_list("p")} == {"s1", "s2"}
    assert await a.list_rooms("", None, 10) == ([("p", 3)], None)
    assert [await b.take("shared", 1.0, 2.0) for _ in range(2)][-1][0] is True
    assert (await a.take("shared", 1.0, 2.0))[0] is False  # one bucket for the cluster
    await b.close()
    assert {m.session for m in await a.presence_list("p")} == {"s1"}
    assert await a.connection_count("bob") == 1
    assert await a.list_rooms("", None, 10) == ([("p", 1)], None)
