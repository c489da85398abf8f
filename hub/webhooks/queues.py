"""Where webhook events wait for delivery: one queue per endpoint.

* :class:`MemoryQueue` (``memory://``): a deque inside the process. A restart loses what it
  holds; one process delivers everything.
* :class:`RedisQueue` (``redis://``): a Redis Stream per endpoint with one consumer group shared
  by every node. Exactly one node at a time holds the endpoint's *lease* (a key with an expiry,
  the visibility timeout) and delivers; it reads entries into its pending list and acknowledges
  (and deletes) them once the receiver took them. A node that dies stops renewing the lease;
  after the visibility timeout another node takes the lease and claims the dead node's pending
  entries (``XAUTOCLAIM``) before reading new ones, so batches keep their order and nothing
  read is lost. Keys (one hash tag per endpoint, so a cluster keeps them on one slot):
  ``<prefix>{wh:<endpoint id>}:q`` (the stream) and ``<prefix>{wh:<endpoint id>}:lease``.

Both implement the same protocol: ``push`` appends, ``hold`` says whether this node may deliver
now (and renews the lease), ``read(limit, fresh)`` hands out entries in order (``fresh``: start
of a batch, so entries handed out before and never acknowledged come first), ``ack`` forgets
delivered (or dropped) entries, ``gauge`` reads the depth and the oldest entry's time.
Redis failures raise :class:`~hub.errors.BrokerError`.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hubbub.hub.errors import BrokerError

GROUP = "hubbub"

# Take or renew the lease: KEYS[1] lease; ARGV node, ttl ms. 1 when this node holds it.
HOLD = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One queued event: its queue id, the event's ``ts`` (unix ms) and its JSON."""

    id: str
    ts: int
    raw: bytes


class Queue(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def push(self, items: list[tuple[int, bytes]]) -> None:
        """Append (ts, event JSON) pairs in order."""

    async def hold(self) -> bool:
        """True when this node may deliver now (takes or renews the lease)."""

    async def read(self, limit: int, fresh: bool) -> list[Entry]:
        """Up to ``limit`` entries in order, without waiting. ``fresh``: entries handed out
        before and not acknowledged come first (a new batch); else only new ones."""

    async def ack(self, entries: list[Entry]) -> None: ...

    async def gauge(self) -> tuple[int, int | None]:
        """(entries waiting or in flight, ts of the oldest one or None)."""


class MemoryQueue:
    """The in-process queue of one endpoint (``memory://``): lost on restart."""

    def __init__(self) -> None:
        self._waiting: collections.deque[Entry] = collections.deque()
        self._handed: list[Entry] = []
        self._seq = 0

    @property
    def pending(self) -> int:
        """Entries waiting or handed out and not acknowledged."""
        return len(self._waiting) + len(self._handed)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def push(self, items: list[tuple[int, bytes]]) -> None:
        for ts, raw in items:
            self._seq += 1
            self._waiting.append(Entry(str(self._seq), ts, raw))

    async def hold(self) -> bool:
        return True

    async def read(self, limit: int, fresh: bool) -> list[Entry]:
        out = list(self._handed[:limit]) if fresh else []
        while len(out) < limit and self._waiting:
            e = self._waiting.popleft()
            self._handed.append(e)
            out.append(e)
        return out

    async def ack(self, entries: list[Entry]) -> None:
        done = {e.id for e in entries}
        self._handed = [e for e in self._handed if e.id not in done]

    async def gauge(self) -> tuple[int, int | None]:
        first = self._handed[0] if self._handed else (self._waiting[0] if self._waiting else None)
        return len(self._handed) + len(self._waiting), first.ts if first else None


class RedisConn(Protocol):
    """What the queue uses of the node's RedisBroker (shared connection pool)."""

    prefix: str

    @property
    def client(self) -> Any: ...

    async def call(self, aw: Any) -> Any: ...

    def script(self, source: str) -> Any: ...

    def run(self, script: Any, keys: Sequence[Any], args: Sequence[Any] = ()) -> Awaitable[Any]:
        """Run a script of :meth:`script` within the broker timeout (BrokerError on failure)."""


class RedisQueue:
    """The Redis Stream of one endpoint (see the module docstring). ``node``: this node's id
    (its consumer name and lease value); ``visibility``: seconds a lease lives unrenewed."""

    def __init__(self, conn: RedisConn, endpoint_id: str, node: str, visibility: float) -> None:
        self._conn = conn
        tag = f"{conn.prefix}{{wh:{endpoint_id}}}"
        self.stream = tag + ":q"
        self.lease = tag + ":lease"
        self.node = node
        self._lease_ms = max(100, int(visibility * 1000))
        self._hold: Any = None
        self._release: Any = None

    async def start(self) -> None:
        self._hold = self._conn.script(HOLD)
        self._release = self._conn.script(RELEASE)
        with contextlib.suppress(BrokerError):  # Redis is down: created on first use
            await self._ensure_group()

    async def close(self) -> None:
        """Give the lease back (best effort) so another node takes over at once."""
        if self._release is not None:
            with contextlib.suppress(BrokerError):
                await self._conn.run(self._release, [self.lease], [self.node])

    async def _ensure_group(self) -> None:
        try:
            await self._conn.call(
                self._conn.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
            )
        except BrokerError as exc:
            if "BUSYGROUP" not in str(exc.__cause__):
                raise

    async def push(self, items: list[tuple[int, bytes]]) -> None:
        async def run() -> None:
            async with self._conn.client.pipeline(transaction=False) as pipe:
                for ts, raw in items:
                    pipe.xadd(self.stream, {"ts": ts, "e": raw})
                await pipe.execute()

        await self._conn.call(run())

    async def hold(self) -> bool:
        return bool(await self._conn.run(self._hold, [self.lease], [self.node, self._lease_ms]))

    async def read(self, limit: int, fresh: bool) -> list[Entry]:
        try:
            return await self._read(limit, fresh)
        except BrokerError as exc:
            if "NOGROUP" not in str(exc.__cause__):
                raise
            await self._ensure_group()  # Redis lost its data (restart without persistence)
            return await self._read(limit, fresh)

    async def _read(self, limit: int, fresh: bool) -> list[Entry]:
        redis = self._conn.client
        out: list[Entry] = []
        if fresh:
            # Every pending entry, whoever read it: only the lease holder reads, so they belong
            # to this node or to a holder that died (or lost the lease) mid-delivery.
            res = await self._conn.call(
                redis.execute_command(
                    "XAUTOCLAIM", self.stream, GROUP, self.node, 0, "0-0", "COUNT", limit
                )
            )
            out.extend(_entries(res[1]))
        if len(out) < limit:
            res = await self._conn.call(
                redis.execute_command(
                    "XREADGROUP", "GROUP", GROUP, self.node, "COUNT", limit - len(out),
                    "STREAMS", self.stream, ">",
                )
            )  # fmt: skip
            if res:
                out.extend(_entries(res[0][1]))
        return out

    async def ack(self, entries: list[Entry]) -> None:
        if not entries:
            return
        ids = [e.id for e in entries]

        async def run() -> None:
            async with self._conn.client.pipeline(transaction=True) as pipe:
                pipe.xack(self.stream, GROUP, *ids)
                pipe.xdel(self.stream, *ids)
                await pipe.execute()

        await self._conn.call(run())

    async def gauge(self) -> tuple[int, int | None]:
        async def run() -> list[Any]:
            async with self._conn.client.pipeline(transaction=False) as pipe:
                pipe.xlen(self.stream)
                pipe.xrange(self.stream, "-", "+", count=1)
                res: list[Any] = await pipe.execute()
                return res

        depth, first = await self._conn.call(run())
        oldest = None
        if first:
            _id, fields = first[0]
            oldest = int(fields.get(b"ts", 0))
        return int(depth), oldest


def _entries(raw: Any) -> list[Entry]:
    out = []
    for item in raw or ():
        if item is None or item[1] is None:  # deleted while pending
            continue
        ident, flat = item
        fields = dict(zip(flat[::2], flat[1::2], strict=False)) if isinstance(flat, list) else flat
        raw_event = fields.get(b"e")
        if raw_event is None:
            continue
        key = ident.decode() if isinstance(ident, bytes) else ident
        out.append(Entry(key, int(fields[b"ts"]), raw_event))
    return out
