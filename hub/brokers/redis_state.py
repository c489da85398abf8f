"""RedisStateStore: what one node asserts in Redis, refreshed by the node itself (presence
members, live connections per user, session counts per room), plus the cluster-wide token
buckets. It shares the connection pool of the node's :class:`~hub.brokers.redis.RedisBroker`.

Each entry carries an expiry (a zset score, server time) that the owning node pushes forward
every ``presence_ttl / 3`` seconds, so a node that dies without cleaning up (SIGKILL) leaves
nothing behind after ``presence_ttl``. Refreshing re-writes every entry in full, so the state is
rebuilt after Redis lost its data. Key layout: see :mod:`hub.brokers.redis`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import orjson
from redis.commands.core import AsyncScript as Script

from hubbub.hub.brokers import redis_lua as lua
from hubbub.hub.brokers.base import Member
from hubbub.hub.brokers.redis_pubsub import stop_tasks, supervise
from hubbub.hub.errors import BrokerError, RoomFull

log = logging.getLogger("hubbub.redis")
T = TypeVar("T")
# A refresh re-asserts a user's sessions on this node in calls of at most this many sessions.
_CONNS_PER_CALL = 1000


class RedisConnection(Protocol):
    """What the state store uses of the broker it shares a connection pool with."""

    prefix: str
    timeout: float
    cluster: bool

    @property
    def client(self) -> Any:
        """The Redis client (redis.asyncio.Redis or RedisCluster); BrokerError when the
        broker is not running."""

    async def call(self, aw: Awaitable[T]) -> T:
        """Await a Redis call within the broker timeout; every failure becomes BrokerError."""

    def script(self, source: str) -> Script:
        """Register a Lua script for :meth:`run`."""

    def run(self, script: Script, keys: Sequence[Any], args: Sequence[Any] = ()) -> Awaitable[Any]:
        """Run a registered script within the broker timeout (BrokerError on failure)."""

    def cast(
        self,
        script: Script,
        keys: Sequence[Any],
        args: Sequence[Any] = (),
        on_write: Callable[[], None] | None = None,
    ) -> list[Any] | None:
        """Run a registered script without waiting; failures are dropped. Returns the queued
        command when its ARGV may still be extended (until ``on_write``), else None."""


class RedisStateStore:
    """The StateStore of :mod:`hub.brokers.base` over Redis. Start it after its broker and
    close it before: ``start`` registers its scripts on the broker's client and begins the
    refresh loop (never raises when Redis is down); ``close`` stops the loop and removes what
    this node asserted (best effort, at most one second)."""

    def __init__(self, connection: RedisConnection, *, presence_ttl: float = 30.0) -> None:
        self._conn = connection
        self.prefix = connection.prefix
        self.presence_ttl = presence_ttl
        self._presence_ms = max(1, int(presence_ttl * 1000))
        self.node = ""
        self.stopped = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._members: dict[tuple[str, str], Member] = {}
        self._conns: dict[str, set[str]] = {}
        self._room_counts: dict[str, int] = {}
        self._rooms_zeroed: set[str] = set()
        self._dirty_rooms: set[str] = set()  # counts changed in this loop iteration
        # Per user, the queued registration (CONN_ADD) not written yet: later sessions of the
        # user join its ARGV instead of making a call each.
        self._conn_adds: dict[str, list[Any]] = {}
        pre = self.prefix + "{rooms}:"
        self._rooms_keys = [pre + "index", pre + "counts", pre + "nodes"]
        self._node_set_prefix = pre + "node:"

    async def start(self, node_id: str) -> None:
        self.node = node_id
        self._s_presence_add = self._conn.script(lua.PRESENCE_ADD)
        self._s_presence_list = self._conn.script(lua.PRESENCE_LIST)
        self._s_presence_remove = self._conn.script(lua.PRESENCE_REMOVE)
        self._s_conn_remove = self._conn.script(lua.CONN_REMOVE)
        self._s_conn_add = self._conn.script(lua.CONN_ADD)
        self._s_conn_count = self._conn.script(lua.CONN_COUNT)
        self._s_room_set = self._conn.script(lua.ROOM_SET)
        self._s_node_alive = self._conn.script(lua.NODE_ALIVE)
        self._s_list_rooms = self._conn.script(lua.LIST_ROOMS)
        self._s_take = self._conn.script(lua.TAKE)
        self._s_take_many = self._conn.script(lua.TAKE_MANY)
        self._s_revoke = self._conn.script(lua.REVOKE)
        self._s_revocations = self._conn.script(lua.REVOCATIONS)
        self._task = asyncio.get_running_loop().create_task(
            supervise("redis presence refresher", self.refresh_loop, lambda: not self.stopped),
            name="redis-refresh",
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = self.stopped = True
        if self._task is not None:
            await stop_tasks([self._task])
        with contextlib.suppress(BrokerError, TimeoutError):
            async with asyncio.timeout(min(self._conn.timeout, 1.0)):
                await self.forget()

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The refresh loop (tests stop it to play a node that died)."""
        return self._task

    def _do(self, aw: Awaitable[T]) -> Awaitable[T]:
        return self._conn.call(aw)

    def _rk(self, room: str, suffix: str) -> str:
        return lua.room_key(self.prefix, room, suffix)

    # ---- presence --------------------------------------------------------------------------------
    @staticmethod
    def _member_json(m: Member) -> bytes:
        return orjson.dumps(
            {
                "room": m.room,
                "session": m.session,
                "user": m.user,
                "transport": m.transport,
                "node": m.node,
                "name": m.name,
                "info": m.info,
            }
        )

    def _presence_add_args(self, m: Member) -> tuple[list[Any], list[Any]]:
        keys = [self._rk(m.room, "presence"), self._rk(m.room, "presence:exp")]
        return keys, [m.session, self._member_json(m), self._presence_ms]

    async def presence_add(self, member: Member, *, limit: int | None = None) -> None:
        """Add (or refresh) a member. With ``limit``, atomically refuse a new member when the
        room already has ``limit`` live ones: raises RoomFull."""
        key = (member.room, member.session)
        self._members[key] = member
        keys, args = self._presence_add_args(member)
        if limit:
            args.append(int(limit))
        try:
            added = await self._conn.run(self._s_presence_add, keys, args)
        except BrokerError:
            self._members.pop(key, None)
            raise
        if not added:
            self._members.pop(key, None)
            raise RoomFull(
                f"room {member.room} is full ({limit} members)",
                details={"room": member.room, "limit": limit},
            )

    async def presence_remove(self, room: str, session: str) -> None:
        self._members.pop((room, session), None)
        await self._conn.run(self._s_presence_remove, *self._presence_remove_call(room, session))

    def _presence_remove_call(self, room: str, session: str) -> tuple[list[str], list[str]]:
        return [self._rk(room, "presence"), self._rk(room, "presence:exp")], [session]

    async def presence_list(self, room: str) -> list[Member]:
        raw = await self._conn.run(
            self._s_presence_list, [self._rk(room, "presence"), self._rk(room, "presence:exp")]
        )
        out = []
        for item in raw:
            d = orjson.loads(item)
            out.append(
                Member(
                    room=room,
                    session=d["session"],
                    user=d["user"],
                    transport=d["transport"],
                    node=d["node"],
                    name=d.get("name"),
                    info=d.get("info"),
                )
            )
        return out

    # ---- connections, rooms listing, rate limits -------------------------------------------------
    def _conn_key(self, user: str) -> str:
        return f"{self.prefix}{{user:{user}}}:conns"

    async def connection_add(self, user: str, session: str) -> int:
        # Kept locally even when the write fails: the refresh loop writes it again. A caller
        # that gives up on the session calls connection_remove.
        self._conns.setdefault(user, set()).add(session)
        n = await self._conn.run(
            self._s_conn_add, [self._conn_key(user)], [self._presence_ms, session]
        )
        return int(n)

    def connection_add_nowait(self, user: str, session: str) -> None:
        self._conns.setdefault(user, set()).add(session)
        queued = self._conn_adds.get(user)
        if queued is not None:  # a registration of this user not written yet takes it along
            queued.append(session)
            return

        def written() -> None:
            if self._conn_adds.get(user) is queued:
                del self._conn_adds[user]

        queued = self._conn.cast(
            self._s_conn_add, [self._conn_key(user)], [self._presence_ms, session], written
        )
        if queued is not None:
            self._conn_adds[user] = queued

    async def connection_remove(self, user: str, session: str) -> None:
        own = self._conns.get(user)
        if own is not None:
            own.discard(session)
            if not own:
                del self._conns[user]
        await self._conn.run(self._s_conn_remove, [self._conn_key(user)], [session])

    async def connection_count(self, user: str) -> int:
        return int(await self._conn.run(self._s_conn_count, [self._conn_key(user)]))

    def _room_set_args(self, room: str, n: int) -> tuple[list[Any], list[Any]]:
        keys = [*self._rooms_keys, self._node_set_prefix + self.node]
        return keys, [self.node, room, n, self._presence_ms]

    def room_sessions_nowait(self, room: str, delta: int) -> None:
        # The write sets the node's count (not a delta): the changes of one loop iteration
        # leave as one write per room, at the end of the iteration, in call order with the
        # calls made before it.
        self._count(room, delta)
        if not self._dirty_rooms:
            asyncio.get_running_loop().call_soon(self._write_dirty_rooms)
        self._dirty_rooms.add(room)

    def _write_dirty_rooms(self) -> None:
        rooms, self._dirty_rooms = self._dirty_rooms, set()
        if self.stopped:
            return
        for room in rooms:
            n = self._room_counts.get(room, 0)
            self._conn.cast(self._s_room_set, *self._room_set_args(room, n))

    def _count(self, room: str, delta: int) -> int:
        n = self._room_counts.get(room, 0) + delta
        if n > 0:
            self._room_counts[room] = n
            self._rooms_zeroed.discard(room)
        else:
            self._room_counts.pop(room, None)
            self._rooms_zeroed.add(room)
        return n

    async def room_sessions(self, room: str, delta: int) -> None:
        n = self._count(room, delta)
        # This node's count is the truth: a failed write is written again by the refresh loop
        # (a caller that gives up on a session adjusts the count back itself).
        await self._conn.run(self._s_room_set, *self._room_set_args(room, max(n, 0)))
        if n <= 0:
            self._rooms_zeroed.discard(room)

    async def list_rooms(
        self, prefix: str, cursor: str | None, limit: int
    ) -> tuple[list[tuple[str, int]], str | None]:
        if limit <= 0:
            return [], None
        start = prefix
        if cursor:
            start = max(start, cursor + "\x01")
        raw = await self._conn.run(self._s_list_rooms, self._rooms_keys, [prefix, start, limit])
        rooms = [(raw[i].decode(), int(raw[i + 1])) for i in range(0, len(raw), 2)]
        page = rooms[:limit]
        return page, (page[-1][0] if len(rooms) > limit else None)

    async def take(self, key: str, rate: float, burst: float) -> tuple[bool, float, float]:
        res = await self._conn.run(
            self._s_take, [f"{self.prefix}{{rl:{key}}}"], [repr(rate), repr(burst)]
        )
        return bool(int(res[0])), float(res[1]), float(res[2])

    async def take_many(self, key: str, rate: float, burst: float, n: int) -> int:
        res = await self._conn.run(
            self._s_take_many, [f"{self.prefix}{{rl:{key}}}"], [repr(rate), repr(burst), int(n)]
        )
        return int(res)

    # ---- revocations ---------------------------------------------------------------------------
    def _revoked_key(self) -> str:
        return f"{self.prefix}{{revoked}}"

    async def revoke(self, user: str, cutoff: float, keep: float) -> None:
        now = time.time()
        expiry_ms = max(1, math.ceil((cutoff + keep - now) * 1000))
        await self._conn.run(
            self._s_revoke,
            [self._revoked_key()],
            [user, repr(float(cutoff)), repr(now - keep), expiry_ms],
        )

    async def revocations(self, keep: float) -> dict[str, float]:
        raw = await self._conn.run(
            self._s_revocations, [self._revoked_key()], [repr(time.time() - keep)]
        )
        return {raw[i].decode(): float(raw[i + 1]) for i in range(0, len(raw), 2)}

    # ---- refresh ---------------------------------------------------------------------------------
    async def _batch(self, redis: Any, calls: list[tuple[Script, list[Any], list[Any]]]) -> None:
        """Run script calls in one pipeline; on a cluster (no scripts in cluster pipelines),
        as concurrent calls, 100 at a time."""
        if not calls:
            return
        if not self._conn.cluster:
            # ``async with``: redis-py keeps the pipeline's connection when loading the scripts
            # fails (a dropped connection, a cancel) and only the exit gives it back to the pool.
            async with redis.pipeline(transaction=False) as pipe:
                for script, keys, args in calls:
                    await script(keys=keys, args=args, client=pipe)
                await pipe.execute()
            return
        for i in range(0, len(calls), 100):
            await asyncio.gather(
                *(script(keys=keys, args=args) for script, keys, args in calls[i : i + 100])
            )

    async def refresh_once(self) -> None:
        """Re-assert this node's presence members, connections and rooms (idempotent: also
        rebuilds them after Redis lost its data)."""
        ttl = self._presence_ms
        calls: list[tuple[Script, list[Any], list[Any]]] = [
            (
                self._s_node_alive,
                [*self._rooms_keys, self._node_set_prefix + self.node],
                [self.node, ttl, self._node_set_prefix],
            )
        ]
        for m in list(self._members.values()):
            calls.append((self._s_presence_add, *self._presence_add_args(m)))
        for user, sessions in list(self._conns.items()):
            own = list(sessions)
            for i in range(0, len(own), _CONNS_PER_CALL):  # one call per user (per 1000)
                calls.append(
                    (self._s_conn_add, [self._conn_key(user)], [ttl, *own[i : i + _CONNS_PER_CALL]])
                )
        for room, n in list(self._room_counts.items()):
            calls.append((self._s_room_set, *self._room_set_args(room, n)))
        zeroed = list(self._rooms_zeroed)
        for room in zeroed:
            calls.append((self._s_room_set, *self._room_set_args(room, 0)))
        await self._do(self._batch(self._conn.client, calls))
        self._rooms_zeroed.difference_update(r for r in zeroed if r not in self._room_counts)

    async def refresh_loop(self) -> None:
        while not self.stopped:
            try:
                await self.refresh_once()
            except BrokerError as exc:
                log.debug("presence refresh failed: %r", exc.__cause__)
            await asyncio.sleep(self.presence_ttl / 3)

    async def forget(self) -> None:
        """Remove everything this node asserted (a graceful stop). Raises BrokerError."""
        calls: list[tuple[Script, list[Any], list[Any]]] = []
        for room, session in list(self._members):
            calls.append((self._s_presence_remove, *self._presence_remove_call(room, session)))
        for user, sessions in list(self._conns.items()):
            calls.append((self._s_conn_remove, [self._conn_key(user)], list(sessions)))
        for room in list(self._room_counts):
            calls.append((self._s_room_set, *self._room_set_args(room, 0)))
        await self._do(self._batch(self._conn.client, calls))
