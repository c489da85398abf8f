"""The per-user publish budget, ``HUB_USER_PUBLISH_RATE`` (PROTOCOL.md §8 "Limits and abuse").

One token bucket per ``sub`` bounds the publishes (and WebRTC signals) of that user over all
its sessions, on every transport and, with Redis, on every node. API keys are not metered here
(``HUB_API_RATE`` bounds them). Two levels, the cheap one first:

* a bucket of this node (:meth:`UserBudget.take_local`, no await): the user's publishes through
  this node. With the memory broker it is the whole budget; with Redis it refuses a flood on one
  node without any Redis call.
* with a shared state store (Redis), the cluster's bucket (:meth:`UserBudget.take_shared`):
  one script call on the broker's calls pipe (pipelined with the node's other calls), taken
  only by a publish the node's bucket let through.

Over budget: :class:`~hub.errors.RateLimited` (temporary; HTTP 429 with ``Retry-After``).
"""

from __future__ import annotations

from hubbub.hub.brokers.base import StateStore
from hubbub.hub.errors import BrokerError, RateLimited, Unavailable
from hubbub.hub.ratelimit import BucketStore
from hubbub.hub.values import Rate


class UserBudget:
    """``HUB_USER_PUBLISH_RATE`` of one node. ``shared``: the cluster's state store, or None
    when this node's buckets are the whole truth (memory broker)."""

    def __init__(self, rate: Rate, shared: StateStore | None, *, capacity: int = 100_000) -> None:
        self.rate = rate
        self.enabled = rate.enabled
        self.shared = shared if rate.enabled else None
        self._local = BucketStore(capacity)

    def refusal(self) -> RateLimited:
        r = self.rate
        return RateLimited(
            f"publish rate of this user exceeded: {r.rate:g}/s (burst {r.burst:g}) over all "
            "its sessions (HUB_USER_PUBLISH_RATE)",
            retry_after=max(1.0, 1.0 / r.rate),
        )

    def take_local(self, sub: str) -> bool:
        """Take a token from this node's bucket of ``sub``; raises RateLimited when empty.
        Returns whether :meth:`take_shared` must follow (Redis)."""
        if not self.enabled:
            return False
        if not self._local.take(sub, self.rate.rate, self.rate.burst)[0]:
            raise self.refusal()
        return self.shared is not None

    async def take_shared(self, sub: str) -> None:
        """Take a token from the cluster's bucket of ``sub``. Raises RateLimited, Unavailable."""
        assert self.shared is not None
        try:
            allowed, _, _ = await self.shared.take(f"user-pub:{sub}", self.rate.rate,
                                                   self.rate.burst)  # fmt: skip
        except BrokerError:
            raise Unavailable("broker unavailable", retry_after=1.0) from None
        if not allowed:
            raise self.refusal()

    async def take(self, sub: str) -> None:
        """Both levels: one publish of ``sub``. Raises RateLimited, Unavailable."""
        if self.take_local(sub):
            await self.take_shared(sub)
