"""Token buckets: Hubbub's one rate-limit algorithm.

A bucket holds at most ``burst`` tokens and gains ``rate`` tokens per second; a request takes one
token or is refused. A new bucket starts full; a rate of 0 means no limit. Used for the publish
rate of each session (:class:`TokenBucket`) and for the keyed buckets of the memory state store
(:class:`BucketStore`: HTTP requests per API key or client IP). The Redis state store runs the
same arithmetic inside Redis (``TAKE`` in :mod:`hub.brokers.redis_lua`) so that a cluster shares
its buckets; the state contract suite checks both behave alike.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from hubbub.hub.values import Rate

Clock = Callable[[], float]


class TokenBucket:
    """One bucket. ``take(now)`` uses ``now`` (seconds, monotonic) or ``time.monotonic()``."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = time.monotonic() if now is None else now

    @classmethod
    def of(cls, rate: Rate, now: float | None = None) -> TokenBucket:
        return cls(rate.rate, rate.burst, now)

    def take(self, now: float | None = None) -> bool:
        """Take one token if there is one. Always True (and no state change) at rate 0."""
        if self.rate <= 0:
            return True
        if now is None:
            now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def refill_time(self) -> float:
        """Seconds until the bucket is full again (0 at rate 0)."""
        return (self.burst - self.tokens) / self.rate if self.rate > 0 else 0.0


UNLIMITED = TokenBucket(0.0, 0.0, 0.0)  # shared: take() never changes a rate-0 bucket


class BucketStore:
    """Buckets by key, at most ``capacity`` of them: taking from a new key when the store is full
    forgets the least recently used bucket (which then starts full again if its key returns)."""

    def __init__(self, capacity: int = 100_000, clock: Clock = time.monotonic) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def take(self, key: str, rate: float, burst: float) -> tuple[bool, float, float]:
        """Take a token from ``key``'s bucket (``rate``/``burst`` apply from now on):
        (allowed, tokens left, seconds until full)."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(rate, burst, now)
            if len(self._buckets) > self.capacity:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.rate, bucket.burst = rate, burst
        allowed = bucket.take(now)
        return allowed, bucket.tokens, bucket.refill_time()
