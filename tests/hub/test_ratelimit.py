"""Token buckets (hub/ratelimit.py): one bucket, and the bounded store of keyed buckets."""

from __future__ import annotations

import pytest

from hubbub.hub.brokers.memory_state import MemoryStateStore
from hubbub.hub.ratelimit import UNLIMITED, BucketStore, TokenBucket
from hubbub.hub.values import Rate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_starts_full_and_refills_at_the_rate() -> None:
    b = TokenBucket(2.0, 3.0, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.refill_time() == pytest.approx(1.5)
    assert not b.take(0.2)  # 0.4 tokens
    assert b.take(0.5)  # 1.0 token
    assert not b.take(0.5)
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at the burst


def test_bucket_ignores_a_clock_going_back() -> None:
    b = TokenBucket(1.0, 1.0, now=10.0)
    assert b.take(10.0)
    assert not b.take(5.0)
    assert not b.take(5.5)  # no refill credited for the backwards step
    assert b.take(6.5)


def test_rate_zero_means_no_limit() -> None:
    assert all(UNLIMITED.take() for _ in range(1000))
    assert (UNLIMITED.tokens, UNLIMITED.refill_time()) == (0.0, 0.0)
    b = TokenBucket.of(Rate(0, 0))
    assert all(b.take() for _ in range(1000))


def test_bucket_from_a_rate_uses_the_monotonic_clock() -> None:
    b = TokenBucket.of(Rate(0.001, 3))
    assert [b.take() for _ in range(5)] == [True, True, True, False, False]


def test_store_take_reports_remaining_and_refill_time() -> None:
    clock = Clock()
    store = BucketStore(clock=clock)
    got = [store.take("k", 10.0, 3.0) for _ in range(4)]
    assert [g[0] for g in got] == [True, True, True, False]
    assert got[2][1] == pytest.approx(0.0) and got[2][2] == pytest.approx(0.3)
    assert store.take("other", 10.0, 3.0)[0]
    clock.now += 0.25
    allowed, left, reset = store.take("k", 10.0, 3.0)
    assert allowed and left == pytest.approx(1.5) and reset == pytest.approx(0.15)


def test_store_evicts_least_recently_used_beyond_its_capacity() -> None:
    clock = Clock()
    store = BucketStore(capacity=3, clock=clock)
    for key in ("a", "b", "c"):
        assert store.take(key, 1.0, 1.0)[0]
    assert not store.take("a", 1.0, 1.0)[0]  # "a" is now the most recently used
    assert store.take("d", 1.0, 1.0)[0]  # full: "b", the least recently used, goes
    assert len(store) == 3 and "b" not in store and all(k in store for k in "acd")
    assert not store.take("a", 1.0, 1.0)[0]  # kept its state: still empty
    assert store.take("b", 1.0, 1.0)[0]  # forgotten, so it starts full again
    for i in range(1000):
        store.take(f"k{i}", 1.0, 1.0)
    assert len(store) == 3


def test_store_needs_a_capacity() -> None:
    with pytest.raises(ValueError):
        BucketStore(capacity=0)


async def test_memory_state_store_keeps_a_bounded_lru_of_buckets() -> None:
    """Many client addresses never make the memory store drop every bucket at once: only the
    least recently used go, and a busy key keeps its (empty) bucket."""
    clock = Clock()
    state = MemoryStateStore(clock=clock, bucket_capacity=100)
    assert (await state.take("busy", 1.0, 1.0))[0]
    for i in range(1000):
        await state.take(f"ip:{i}", 1.0, 1.0)
        assert not (await state.take("busy", 1.0, 1.0))[0]
    assert len(state.buckets) == 100
