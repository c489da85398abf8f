"""Every node of a cluster must apply the same per-room options ([[rooms]] tables).

On Redis, each node writes the digest of its tables (:meth:`RoomRules.digest`) into one hash
(``<prefix>{roomopts}``: node -> ``digest|first seen ms|expiry ms``) every ``interval`` seconds
and reads every live node's entry back, in one script. The cluster's digest is the one most live
nodes hold (a tie goes to the digest of the node seen first). A node holding another digest:

* logs a warning (once per change, naming both digests, never the tables' values),
* sets :attr:`RoomAgreement.mismatch`, exposed as the ``hubbub_room_options_mismatch`` gauge,
* answers ``/health/ready`` with 503 (:meth:`Hub.ready`) until the digests agree again.

An entry lives ``ttl`` seconds after its node's last refresh, so a stopped node stops counting;
a node removes its own entry when it stops. A broker error leaves the last verdict as it was.
memory:// runs one node: nothing to agree on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from hubbub.hub.errors import BrokerError

log = logging.getLogger("hubbub.rooms")

REFRESH = """
local _t = redis.call('TIME')
local now = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)
-- KEYS: hash; ARGV: node, digest, ttl_ms. Returns {node1, digest1, since1, node2, ...}.
local ttl = tonumber(ARGV[3])
local since = now
local mine = redis.call('HGET', KEYS[1], ARGV[1])
if mine then since = tonumber(string.match(mine, '^[^|]*|(%d+)|')) or now end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. string.format('%d', since) .. '|'
  .. string.format('%d', now + ttl))
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local d, s, e = string.match(all[i + 1], '^([^|]*)|(%d+)|(%d+)$')
  if d == nil or tonumber(e) < now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    out[#out + 1] = all[i]
    out[#out + 1] = d
    out[#out + 1] = s
  end
end
redis.call('PEXPIRE', KEYS[1], ttl * 3)
return out
"""


def cluster_digest(entries: Sequence[tuple[str, str, int]]) -> str | None:
    """The digest most nodes hold among ``[(node, digest, first seen)]``; a tie goes to the
    digest of the node seen first. None when there is no entry."""
    count: dict[str, int] = {}
    first: dict[str, int] = {}
    for _, digest, since in entries:
        count[digest] = count.get(digest, 0) + 1
        first[digest] = min(first.get(digest, since), since)
    if not count:
        return None
    return max(count, key=lambda d: (count[d], -first[d], d))


class RoomAgreement:
    """The agreement check of one node on a Redis broker (see the module docstring)."""

    def __init__(self, broker: Any, node: str, digest: str, *, ttl: float, interval: float) -> None:
        self.broker = broker  # a RedisBroker: ``script``, ``run``, ``call`` and ``client``
        self.node = node
        self.digest = digest
        self.ttl = ttl
        self.interval = interval
        self.key = f"{broker.prefix}{{roomopts}}"
        self.mismatch = False
        self.cluster: str | None = None
        self._script: Any = None
        self._stopped = False
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> bool:
        """Refresh this node's entry and compare; returns :attr:`mismatch`. Raises
        BrokerError when Redis cannot be reached."""
        if self._script is None:
            self._script = self.broker.script(REFRESH)
        raw = await self.broker.run(
            self._script, [self.key], [self.node, self.digest, int(self.ttl * 1000)]
        )
        entries = [
            (raw[i].decode(), raw[i + 1].decode(), int(raw[i + 2])) for i in range(0, len(raw), 3)
        ]
        cluster = cluster_digest(entries)
        mismatch = cluster is not None and cluster != self.digest
        if mismatch != self.mismatch or (mismatch and cluster != self.cluster):
            if mismatch:
                agree = sum(1 for _, d, _ in entries if d == cluster)
                log.warning(
                    "room options differ from the cluster's: this node's [[rooms]] tables hash "
                    "to %s, %d of %d live nodes have %s; not ready until they agree "
                    "(compare with `hubbub rooms explain ROOM` on each node)",
                    self.digest, agree, len(entries), cluster,
                )  # fmt: skip
            else:
                log.info("room options agree with the cluster again (%s)", self.digest)
        self.mismatch, self.cluster = mismatch, cluster
        return mismatch

    def start(self) -> None:
        """Run :meth:`run` in a task of its own until :meth:`close`."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name="room-agreement")

    async def run(self) -> None:
        """Check every ``interval`` seconds until :meth:`close`."""
        while not self._stopped:
            with contextlib.suppress(BrokerError):
                await self.check()
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        """Stop the task and stop counting this node (best effort)."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.broker.call(self.broker.client.hdel(self.key, self.node))
