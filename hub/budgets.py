"""The per-user publish budget, ``HUB_USER_PUBLISH_RATE`` (PROTOCOL.md §8 "Limits and abuse").

One token bucket per ``sub`` bounds the publishes (and WebRTC signals) of that user over all
its sessions, on every transport and, with Redis, on every node. API keys are not metered here
(``HUB_API_RATE`` bounds them). Two levels, the cheap one first:

* a bucket of this node (:meth:`UserBudget.take_local`, no await): the user's publishes through
  this node. With the memory broker it is the whole budget; with Redis it refuses a flood on one
  node without any Redis call.
* with a shared state store (Redis), the cluster's bucket. A node takes tokens from it in
  leases (:meth:`UserBudget.take_shared`: one script call on the broker's calls pipe, pipelined
  with the node's other calls) and spends them locally: a lease starts at one token and
  doubles, up to ``burst / 20`` (at most 16), while the user keeps spending its leases within
  :data:`LEASE_TTL`; a lease unspent by then is dropped and the next one starts at one again.
  When the cluster's bucket is empty, the node refuses the user without asking again until
  the bucket gains its next token (``1 / rate`` seconds, at most :data:`LEASE_TTL`).
  Publishes never exceed the cluster's bucket (a token is spent once, on one node); a user
  whose sessions spread over nodes may be refused while another node holds a lease it has not
  spent yet: at most ``burst / 20`` tokens per node, for at most :data:`LEASE_TTL`.

Over budget: :class:`~hub.errors.RateLimited` (temporary; HTTP 429 with ``Retry-After``).
"""

from __future__ import annotations

import time
from collections import OrderedDict

from hubbub.hub.brokers.base import StateStore
from hubbub.hub.errors import BrokerError, RateLimited, Unavailable
from hubbub.hub.ratelimit import BucketStore
from hubbub.hub.values import Rate

LEASE_TTL = 1.0  # seconds a node may spend the tokens of one lease
MAX_LEASE = 16


class _Lease:
    """Tokens of the cluster's bucket this node took for one user and has not spent."""

    __slots__ = ("blocked", "credit", "size", "until")

    def __init__(self) -> None:
        self.credit = 0
        self.size = 1
        self.until = 0.0
        self.blocked = 0.0  # the cluster's bucket was empty: refused here until then


class UserBudget:
    """``HUB_USER_PUBLISH_RATE`` of one node. ``shared``: the cluster's state store, or None
    when this node's buckets are the whole truth (memory broker)."""

    def __init__(self, rate: Rate, shared: StateStore | None, *, capacity: int = 100_000) -> None:
        self.rate = rate
        self.enabled = rate.enabled
        self.shared = shared if rate.enabled else None
        self.capacity = capacity
        self.max_lease = max(1, min(MAX_LEASE, int(rate.burst // 20)))
        self._local = BucketStore(capacity)
        self._leases: OrderedDict[str, _Lease] = OrderedDict()

    def refusal(self) -> RateLimited:
        r = self.rate
        return RateLimited(
            f"publish rate of this user exceeded: {r.rate:g}/s (burst {r.burst:g}) over all "
            "its sessions (HUB_USER_PUBLISH_RATE)",
            limit="HUB_USER_PUBLISH_RATE",
            retry_after=max(1.0, 1.0 / r.rate),
        )

    def take_local(self, sub: str) -> bool:
        """Take a token from this node's bucket of ``sub`` (raises RateLimited when empty) and,
        with a shared store, from the node's lease of the cluster's bucket when it holds one.
        Returns whether :meth:`take_shared` must follow (no token of the cluster yet)."""
        if not self.enabled:
            return False
        if not self._local.take(sub, self.rate.rate, self.rate.burst)[0]:
            raise self.refusal()
        return self.shared is not None and not self._spend(sub, time.monotonic())

    def _spend(self, sub: str, now: float) -> bool:
        """Spend a token of the lease (True); raise RateLimited while the cluster's bucket is
        known to be empty; False: a new lease is needed."""
        lease = self._leases.get(sub)
        if lease is None:
            return False
        if now < lease.blocked:
            raise self.refusal()
        if lease.credit <= 0 or now >= lease.until:
            return False
        lease.credit -= 1
        return True

    async def take_shared(self, sub: str) -> None:
        """A token of the cluster's bucket of ``sub``: from this node's lease, else from a new
        lease. Raises RateLimited, Unavailable."""
        assert self.shared is not None
        now = time.monotonic()
        if self._spend(sub, now):  # a lease taken meanwhile
            return
        lease = self._leases.get(sub)
        if lease is None:
            lease = self._leases[sub] = _Lease()
            if len(self._leases) > self.capacity:
                self._leases.popitem(last=False)
        else:
            self._leases.move_to_end(sub)
            # Spent within its time: the user publishes fast, take more at once; else start
            # small again (what is not spent in time is lost to the user).
            lease.size = min(self.max_lease, lease.size * 2) if now < lease.until else 1
        want = lease.size
        try:
            got = await self.shared.take_many(f"user-pub:{sub}", self.rate.rate,
                                              self.rate.burst, want)  # fmt: skip
        except BrokerError:
            raise Unavailable("broker unavailable", retry_after=1.0) from None
        if got <= 0:
            # Less than one token: the next comes within 1/rate s. Until then the node refuses
            # this user without asking (a flood over budget costs no Redis call per publish).
            lease.size = 1
            lease.blocked = time.monotonic() + min(LEASE_TTL, 1.0 / self.rate.rate)
            raise self.refusal()
        now = time.monotonic()
        if now >= lease.until:
            lease.credit = 0
        lease.credit += got - 1  # one is this publish's
        lease.until = now + LEASE_TTL

    async def take(self, sub: str) -> None:
        """Both levels: one publish of ``sub``. Raises RateLimited, Unavailable."""
        if self.take_local(sub):
            await self.take_shared(sub)
