"""What reads and keyed publishes leave behind: rooms that are only read keep nothing for long
(memory: forgotten at once; Redis: their keys expire within 600 s), idempotency keys expire in
time order without a scan, and rate buckets are evicted least recently used."""

from __future__ import annotations

import secrets
from typing import Any

from hubbub.hub.brokers.base import IDEMPOTENCY_TTL, Idempotency
from hubbub.hub.brokers.memory import MemoryBroker
from hubbub.hub.brokers.memory_state import MemoryStateStore
from hubbub.hub.brokers.redis import META_TTL, READ_TTL
from hubbub.hub.envelope import make_body
from tests.hub.brokers.brokertools import Recorder
from tests.hub.brokers.conftest import Make

ROOMS = 20_000
KEYS = 200_000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def memory_broker(clock: Clock, **kw: Any) -> MemoryBroker:
    broker = MemoryBroker(clock=clock, **kw)
    await broker.start(Recorder(), "n1")
    return broker


async def test_memory_room_churn_leaves_no_room() -> None:
    """20 000 never-published rooms subscribed, read and left: the room table ends empty."""
    b = await memory_broker(Clock())
    for i in range(ROOMS):
        room = f"churn:{i}"
        await b.subscribe(room)
        epoch, head = await b.position(room)
        assert head == 0
        page = await b.history(room, after=0)
        assert page.epoch == epoch and page.publications == []  # stable while subscribed
        await b.unsubscribe(room)
        await b.history(f"peek:{i}")  # a read alone
        await b.position(f"peek:{i}")
    assert b.room_count() == 0


async def test_memory_room_kept_while_subscribed_or_retained() -> None:
    clock = Clock()
    b = await memory_broker(clock, history_ttl=10.0)
    await b.subscribe("s")
    await b.position("s")
    assert b.room_count() == 1
    r = await b.publish("p", make_body("p", b"1", ts=1))  # retained, nobody subscribed
    assert (await b.position("p")) == (r.epoch, 1)
    assert b.room_count() == 2
    await b.unsubscribe("s")
    assert b.room_count() == 1
    # once its publications expired, the room is forgotten; a later reader sees a new epoch at 0
    clock.now += 11
    await b.publish("other", make_body("other", b"1", ts=1))
    assert b.room_count() == 1  # "p" went, "other" is retained
    new_epoch, head = await b.position("p")
    assert head == 0 and new_epoch != r.epoch


async def test_memory_idempotency_keys_expire_in_order_without_a_scan() -> None:
    """200 000 live keys: a keyed publish touches only the expired entries at the front."""
    clock = Clock()
    b = await memory_broker(clock)
    for i in range(KEYS):
        await b.publish("r", b"x", ephemeral=True, idempotency=Idempotency("k", f"{i}", "f"))
        if i % 1000 == 999:
            clock.now += 1.0  # 200 s over the whole run: nothing has expired yet
    assert b.idempotency_count() == KEYS

    touched = 0
    idem = b._idem  # count what the next publish reads of the key table
    real_items = idem.items

    def counting_items() -> Any:
        nonlocal touched
        touched += 1
        return real_items()

    idem.items = counting_items  # type: ignore[method-assign]
    await b.publish("r", b"x", ephemeral=True, idempotency=Idempotency("k", "new", "f"))
    assert touched <= 1 and b.idempotency_count() == KEYS + 1

    # move on so that the first 5 000 keys (inserted in the first 5 s) have expired
    clock.now = 1000.0 + IDEMPOTENCY_TTL + 5.0 - 0.5
    touched = 0
    await b.publish("r", b"x", ephemeral=True, idempotency=Idempotency("k", "new2", "f"))
    assert b.idempotency_count() == KEYS + 2 - 5000
    assert touched == 5001  # the expired ones and the first live one, nothing else
    assert next(iter(real_items()))[0] == ("k", "r", "5000")


def test_memory_rate_buckets_are_evicted_lru() -> None:
    """200 000 client addresses in a store of 100 000: the recent half stays, nothing resets
    everyone's buckets."""
    store = MemoryStateStore(bucket_capacity=100_000, clock=Clock())  # time stands still
    buckets = store.buckets
    assert buckets.take("keep", 1.0, 1.0)[0]  # empties "keep"
    for i in range(KEYS):
        buckets.take(f"ip:{i}", 1.0, 1.0)
        if i % 50_000 == 0:
            buckets.take("keep", 1.0, 1.0)  # recently used: never evicted
    assert len(buckets) == 100_000
    assert "keep" in buckets and f"ip:{KEYS - 1}" in buckets and "ip:0" not in buckets
    assert buckets.take("keep", 1.0, 1.0)[0] is False  # still the same, empty bucket


async def test_redis_read_created_keys_expire_and_publication_makes_durable(
    make: Make,
) -> None:
    b, _ = await make()
    client = b.client
    prefix = b.prefix
    rooms = [f"read:{secrets.token_hex(3)}:{i}" for i in range(50)]
    for i, room in enumerate(rooms):
        if i % 2:
            await b.history(room)
        else:
            await b.position(room)
    metas = [f"{prefix}{{room:{room}}}:meta" for room in rooms]
    for key in metas:
        ttl = await client.ttl(key)
        assert 0 < ttl <= READ_TTL <= 600, (key, ttl)
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    for key in keys:
        ttl = await client.ttl(key)
        assert 0 < ttl <= 600, (key, ttl)

    room = rooms[0]
    epoch, _ = await b.position(room)
    r = await b.publish(room, make_body(room, b"1", ts=1))
    assert r.epoch == epoch  # the read-created epoch carries on
    assert await client.ttl(metas[0]) > 600  # durable as any published room
    assert await client.ttl(metas[0]) <= META_TTL
    await b.history(room)  # a later read does not shorten it
    assert await client.ttl(metas[0]) > 600
