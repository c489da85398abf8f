"""RedisBroker under broker faults (docs/hardening.md cases 33-38), each against its own redis-server.

The broker runs with tiny timeouts so every fault shows within a second or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import subprocess
import warnings
from typing import Any

import pytest

from hubbub.hub.brokers import redis_state
from hubbub.hub.brokers.base import Idempotency, Member
from hubbub.hub.envelope import make_body
from hubbub.hub.errors import BrokerError
from tests.conftest import RedisProc, need_tool
from tests.helpers import until
from tests.hub.brokers.conftest import TIMEOUT, Make, MakeNode
from tests.hub.brokers.redis_proxy import TcpProxy


def body(n: int) -> bytes:
    return make_body("r", b"%d" % n, ts=1)


def redis_cli(proc: RedisProc, *args: str) -> str:
    exe = need_tool("redis-cli")
    out = subprocess.run(
        [exe, "-p", str(proc.port), *args], capture_output=True, text=True, timeout=5, check=True
    )
    return out.stdout


async def test_down_at_start_then_ready_when_redis_comes_up(make: Make) -> None:
    proc = RedisProc()  # not started yet
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    broker, listener = await make(url=proc.url)
    assert loop.time() - t0 < TIMEOUT + 1.0  # start() gives up waiting, does not raise
    assert listener.states == [False]
    assert not await broker.ready()
    with pytest.raises(BrokerError):
        await broker.publish("r", body(1))
    with pytest.raises(BrokerError):
        await broker.subscribe("r")
    try:
        proc.start()
        t0 = loop.time()
        await until(lambda: broker.link is not None and broker.link.up, 5.0)
        assert await broker.ready()
        assert loop.time() - t0 < 5.0
        assert listener.states[-1] is True and listener.resyncs >= 1
        await broker.subscribe("r")
        assert (await broker.publish("r", body(1))).offset == 1
        await until(lambda: len(listener.of("r")) == 1)
    finally:
        proc.stop()


async def test_restart_mid_traffic_reconnects_resubscribes_and_resyncs(
    make: Make, redis_proc: RedisProc
) -> None:
    pub, _ = await make()
    sub, listener = await make()
    await sub.subscribe("r")
    first = await pub.publish("r", body(1))
    await until(lambda: len(listener.of("r")) == 1)
    resyncs = listener.resyncs

    redis_proc.stop()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(BrokerError):
        await pub.publish("r", body(2))  # never a silent success
    assert loop.time() - t0 < TIMEOUT + 0.5
    await until(lambda: listener.states[-1] is False, 3.0)
    assert not await sub.ready()

    redis_proc.start()
    await until(lambda: sub.link is not None and sub.link.up, 5.0)
    await until(lambda: pub.link is not None and pub.link.up, 5.0)
    assert await sub.ready() and await pub.ready()
    assert listener.resyncs > resyncs
    # Redis lost everything: a new epoch starts at 1, and it still reaches the subscriber.
    again = await pub.publish("r", body(3))
    assert again.offset == 1 and again.epoch != first.epoch
    await until(lambda: len(listener.of("r")) == 2)
    assert listener.of("r")[-1].epoch == again.epoch


async def test_client_kill_pubsub_resubscribes(make: Make, redis_proc: RedisProc) -> None:
    pub, _ = await make()
    sub, listener = await make()
    await sub.subscribe("r")
    assert sub.link is not None
    connects, resyncs = sub.link.connects, listener.resyncs
    redis_cli(redis_proc, "CLIENT", "KILL", "TYPE", "pubsub")
    await until(lambda: sub.link is not None and sub.link.connects > connects, 2.0)
    await until(lambda: listener.resyncs > resyncs, 2.0)
    # the room channel is subscribed again, and history holds what was published meanwhile
    await pub.publish("r", body(1))
    await until(lambda: len(listener.of("r")) == 1)
    assert (await sub.history("r", after=0)).head == 1


async def test_sigstop_makes_calls_fail_within_the_timeout(
    make_node: MakeNode, redis_proc: RedisProc
) -> None:
    broker, state, listener = await make_node()
    await broker.subscribe("r")
    assert redis_proc.proc is not None
    pid = redis_proc.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        loop = asyncio.get_running_loop()
        for call in (
            broker.publish("r", body(1)),
            broker.history("r"),
            state.presence_list("r"),
            state.take("k", 1, 1),
        ):
            t0 = loop.time()
            with pytest.raises(BrokerError):
                await call
            assert loop.time() - t0 < TIMEOUT + 0.5
        t0 = loop.time()
        assert not await broker.ready()
        assert loop.time() - t0 < TIMEOUT + 0.5
        await until(lambda: listener.states[-1] is False, 3.0)  # the probe noticed
    finally:
        os.kill(pid, signal.SIGCONT)
    await until(lambda: broker.link is not None and broker.link.up, 5.0)
    assert await broker.ready()
    # The publish that timed out had been sent: Redis may run it once it resumes (an error is
    # "maybe published", as for any timeout), possibly before the pub/sub link is back (the
    # resync catches up from history). Whatever it did is stored in order.
    res = await broker.publish("r", body(2))
    assert res.offset in (1, 2)
    expect = [body(1), body(2)][2 - res.offset :]
    await until(lambda: len(listener.of("r")) >= 1)
    assert listener.of("r")[-1].body == body(2)
    assert [p.body for p in (await broker.history("r", after=0)).publications] == expect


async def test_deaf_pubsub_connection_is_detected_by_the_probe(
    make: Make, redis_proc: RedisProc
) -> None:
    proxy = await TcpProxy(redis_proc.port).start()
    try:
        pub, _ = await make()
        sub, listener = await make(url=proxy.url)
        await sub.subscribe("r")
        assert sub.link is not None
        connects, resyncs = sub.link.connects, listener.resyncs
        n_states = len(listener.states)
        proxy.deafen()  # the sockets stay open; nothing arrives any more
        await pub.publish("r", body(1))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await until(lambda: False in listener.states[n_states:], 3.0)
        await until(lambda: sub.link is not None and sub.link.connects > connects, 3.0)
        assert loop.time() - t0 < 2.5
        assert listener.resyncs > resyncs  # the hub catches up offset 1 from history
        assert listener.of("r") == []
        await pub.publish("r", body(2))
        await until(lambda: [p.offset for p in listener.of("r")] == [2])
        assert await sub.ready()
    finally:
        await proxy.close()


async def test_pubsub_output_buffer_limit_kill_is_a_reconnect(make: Make) -> None:
    proc = RedisProc(extra=("--client-output-buffer-limit", "pubsub 1mb 512kb 1"))
    proc.start()
    proxy = await TcpProxy(proc.port).start()
    try:
        pub, _ = await make(url=proc.url)
        sub, listener = await make(url=proxy.url, probe_interval=5.0, probe_timeout=30.0)
        await sub.subscribe("r")
        assert sub.link is not None
        connects, resyncs = sub.link.connects, listener.resyncs
        proxy.pause()  # the node stops reading its pub/sub socket
        big = b"x" * 65536
        for _ in range(400):  # ~26 MB: more than the socket buffers and the 1 MB limit
            await pub.publish_frame("r", big)
        stats = redis_cli(proc, "INFO", "stats")
        assert "client_output_buffer_limit_disconnections:0" not in stats
        proxy.resume()
        await until(lambda: sub.link is not None and sub.link.connects > connects, 5.0)
        assert listener.resyncs > resyncs
        await pub.publish("r", body(1))
        await until(lambda: any(p.offset == 1 for p in listener.of("r")), 3.0)
    finally:
        await proxy.close()
        proc.stop()


async def test_members_of_a_dead_node_vanish_after_the_ttl(make_node: MakeNode) -> None:
    _, alive, _ = await make_node(presence_ttl=0.6)
    dead_broker, dead, _ = await make_node(presence_ttl=0.6)
    await alive.presence_add(Member("p", "s1", "alice", "ws", alive.node))
    await dead.presence_add(Member("p", "s2", "bob", "ws", dead.node))
    await dead.connection_add("bob", "s2")
    await alive.connection_add("bob", "s3")
    await dead.room_sessions("p", 1)
    await alive.room_sessions("p", 1)
    assert {m.session for m in await alive.presence_list("p")} == {"s1", "s2"}
    assert await alive.connection_count("bob") == 2
    assert await alive.list_rooms("", None, 10) == ([("p", 2)], None)
    # "SIGKILL": the dead node's tasks stop without any clean-up
    assert dead.task is not None
    dead.task.cancel()
    assert dead_broker.link is not None
    await dead_broker.link.close()
    await asyncio.sleep(1.3)  # > ttl; the live node keeps refreshing its own
    assert {m.session for m in await alive.presence_list("p")} == {"s1"}
    assert await alive.connection_count("bob") == 1
    assert await alive.list_rooms("", None, 10) == ([("p", 1)], None)
    dead._closed = True  # nothing left to forget (its broker still closes its connections)


async def test_refresh_rebuilds_presence_after_redis_lost_its_data(
    make_node: MakeNode, redis_proc: RedisProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Presence, room counts and every session of a user come back; a user's sessions are
    re-asserted a few per call (two here, to see the calls split)."""
    monkeypatch.setattr(redis_state, "_CONNS_PER_CALL", 2)
    broker, state, _ = await make_node(presence_ttl=0.6)
    await state.presence_add(Member("p", "s1", "alice", "ws", broker.node))
    await state.connection_add("alice", "s1")
    for s in ("s2", "s3", "s4", "s5"):
        state.connection_add_nowait("bob", s)
    await state.room_sessions("p", 1)
    redis_proc.restart()
    await until(lambda: broker.link is not None and broker.link.up, 5.0)

    async def rebuilt() -> bool:
        with contextlib.suppress(BrokerError):
            return len(await state.presence_list("p")) == 1
        return False

    for _ in range(50):
        if await rebuilt():
            break
        await asyncio.sleep(0.1)
    assert [m.session for m in await state.presence_list("p")] == ["s1"]
    assert await state.connection_count("alice") == 1
    assert await state.connection_count("bob") == 4
    assert await state.list_rooms("", None, 10) == ([("p", 1)], None)


async def test_refresh_cut_short_while_loading_scripts_leaks_no_connection(
    make_node: MakeNode, redis_proc: RedisProc
) -> None:
    """A refresh whose pipeline is interrupted while it checks its scripts (Redis paused past the
    call timeout) gives its connection back: no pipeline is left holding one."""
    _, state, _ = await make_node()
    await state.connection_add("alice", "s1")
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        redis_cli(redis_proc, "CLIENT", "PAUSE", str(int(TIMEOUT * 3000)), "ALL")
        refused = False
        try:
            await state.refresh_once()
        except BrokerError:  # not kept: its traceback would keep the pipeline alive
            refused = True
        gc.collect()
    assert refused
    assert [str(w.message) for w in caught if "Unclosed" in str(w.message)] == []
    await asyncio.sleep(TIMEOUT * 3)
    await state.refresh_once()  # Redis is back: the pool still has connections to give
    assert await state.connection_count("alice") == 1


async def test_noscript_after_script_flush_reloads(make: Make, redis_proc: RedisProc) -> None:
    broker, _ = await make()
    assert (await broker.publish("r", body(1))).offset == 1
    redis_cli(redis_proc, "SCRIPT", "FLUSH")
    assert (await broker.publish("r", body(2))).offset == 2
    assert [p.offset for p in (await broker.history("r", after=0)).publications] == [1, 2]


async def test_keys_carry_the_prefix_and_room_hash_tags(
    make_node: MakeNode, redis_proc: RedisProc
) -> None:
    broker, state, _ = await make_node(prefix="pfx:")
    await broker.publish("lobby", body(1))
    await state.presence_add(Member("lobby", "s1", "u", "ws", broker.node))
    keys = set(redis_cli(redis_proc, "KEYS", "*").split())
    assert {"pfx:{room:lobby}:meta", "pfx:{room:lobby}:stream"} <= keys
    assert {"pfx:{room:lobby}:presence", "pfx:{room:lobby}:presence:exp"} <= keys
    assert all(k.startswith("pfx:") for k in keys)
    assert "1" in redis_cli(redis_proc, "PUBSUB", "NUMSUB", "pfx:ctl")


async def test_every_script_touches_one_cluster_slot(make_node: MakeNode) -> None:
    """Redis Cluster readiness: the keys of each script call share one hash slot, and rooms
    spread over slots."""
    from redis.crc import key_slot

    broker, state, _ = await make_node()
    assert broker._redis is not None
    calls: list[list[bytes]] = []
    original = broker._redis.evalsha

    def spy(sha: str, numkeys: int, *args: Any) -> Any:
        calls.append([str(k).encode() for k in args[:numkeys]])
        return original(sha, numkeys, *args)

    broker._redis.evalsha = spy  # type: ignore[method-assign]
    for pipe in (broker._pipe, broker._calls):  # one Redis: script calls go through the pipes
        assert pipe is not None
        piped = pipe.call

        def pipe_spy(*args: Any, piped: Any = piped, **kw: Any) -> Any:
            if args[0] == "EVALSHA":
                spy_keys = args[3 : 3 + int(args[2])]
                calls.append([str(k).encode() for k in spy_keys])
            return piped(*args, **kw)

        pipe.call = pipe_spy  # type: ignore[method-assign]
    for room in ("a", "b:c", "lobby.1"):
        await broker.publish(room, body(1))
        await broker.publish(room, body(2), idempotency=Idempotency("s", "k", "f"))
        await broker.history(room, after=0)
        await broker.position(room)
        await state.presence_add(Member(room, "s1", "u", "ws", broker.node))
        await state.presence_list(room)
        await state.room_sessions(room, 1)
    await state.list_rooms("", None, 10)
    await state.connection_add("u", "s1")
    await state.connection_count("u")
    await state.take("k", 1.0, 1.0)
    assert len(calls) >= 25
    for keys in calls:
        assert len({key_slot(k) for k in keys}) == 1, keys
    slots = {key_slot(f"x{{room:{r}}}:meta".encode()) for r in ("a", "b:c", "lobby.1")}
    assert len(slots) == 3


async def test_capped_presence_add_is_atomic_across_nodes(make_node: MakeNode) -> None:
    """The primitive for call rooms: of many concurrent joins on two nodes, exactly ``limit``
    get in; a member already present may refresh."""
    from hubbub.hub.errors import RoomFull

    _, one, _ = await make_node()
    _, two, _ = await make_node()
    joins = [
        (one if i % 2 else two).presence_add(Member("call:x", f"s{i}", f"u{i}", "ws", "n"), limit=2)
        for i in range(8)
    ]
    results = await asyncio.gather(*joins, return_exceptions=True)
    assert sum(r is None for r in results) == 2
    assert all(isinstance(r, RoomFull) for r in results if r is not None)
    present = await one.presence_list("call:x")
    assert len(present) == 2
    again = present[0]
    owner = one if (again.room, again.session) in one._members else two
    await owner.presence_add(again, limit=2)  # already in: not refused
    assert len(await two.presence_list("call:x")) == 2


async def test_position_reads_and_registrations_share_a_call_until_it_is_written(
    make_node: MakeNode, make: Make
) -> None:
    """While the calls pipe has a write in flight (a BLPOP holds its replies for 0.3 s), head
    reads of one room made in later loop iterations share one read, which still runs after
    the last of them was made (so it sees a publication acknowledged in between), and
    registrations of one user's sessions share one call."""
    broker, state, _ = await make_node()
    pub, _ = await make()
    pipe = broker._calls
    assert pipe is not None
    await broker.position("r")  # the room exists; the pipe is idle again
    calls_before = pipe.calls
    hold = asyncio.ensure_future(pipe.call("BLPOP", "nothing-here", "0.3"))
    await asyncio.sleep(0.02)
    first = asyncio.ensure_future(broker.position("r"))
    await asyncio.sleep(0.02)
    assert (await pub.publish("r", body(0))).offset == 1  # acknowledged in between
    later = []
    for _ in range(4):
        await asyncio.sleep(0.01)
        later.append(asyncio.ensure_future(broker.position("r")))
    for i in range(5):
        state.connection_add_nowait("u", f"s{i}")
        await asyncio.sleep(0.005)
    assert len(pipe._queue) == 2  # one head read, one registration
    await hold
    heads = [await first] + [await f for f in later]
    assert [h for _, h in heads] == [1] * 5
    assert pipe.calls - calls_before == 2  # the BLPOP and one shared read
    assert await state.connection_count("u") == 5
