"""RedisBroker (``redis://``, ``rediss://``): many processes and machines behave as one hub.

Implements the Broker contract of :mod:`hub.brokers.base` over one Redis server, or a Redis
Cluster with ``cluster=true`` in the URL. Every call fails with
:class:`~hub.errors.BrokerError` within ``timeout`` seconds when Redis is unreachable, and is
never retried by redis-py (a retried publish could publish twice). Publications of one node
reach Redis in call order (one Redis: :mod:`hub.brokers.redis_pipe`; a cluster:
:mod:`hub.brokers.redis_batch`); the pub/sub link (:mod:`hub.brokers.redis_pubsub`) reports
every reconnection as ``NodeListener.resync()``. Key layout, channels and the reasons behind
them: docs/design.md, "The brokers".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript as Script
from redis.exceptions import RedisClusterException, RedisError

from hubbub.hub.brokers import redis_lua as lua
from hubbub.hub.brokers.base import (
    IDEMPOTENCY_TTL,
    HistoryPage,
    Idempotency,
    NodeListener,
    PublishResult,
)
from hubbub.hub.brokers.memory import new_epoch
from hubbub.hub.brokers.redis_batch import PublishLane
from hubbub.hub.brokers.redis_pipe import PublishPipe
from hubbub.hub.brokers.redis_pubsub import PubSubLink
from hubbub.hub.envelope import Publication
from hubbub.hub.errors import BrokerError, Conflict
from hubbub.hub.values import parse_bool, redact_url

log = logging.getLogger("hubbub.redis")


def split_cluster_flag(url: str) -> tuple[str, bool]:
    """Remove ``cluster=…`` from the URL's query; True when it asks for Redis Cluster. Raises
    ValueError when the flag is not a boolean (HUB_BROKER_URL is checked at load)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    flags = [v for k, v in query if k == "cluster"]
    rest = [(k, v) for k, v in query if k != "cluster"]
    cluster = bool(flags) and parse_bool(flags[-1])
    return urlunsplit(parts._replace(query=urlencode(rest))), cluster


T = TypeVar("T")
META_TTL = 7 * 86400
READ_TTL = 600  # seconds a room's meta created by a read alone lives (PROTOCOL: reads keep nothing)
_PUBLISH_SHA = hashlib.sha1(lua.PUBLISH.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _PubCall:
    """One queued publish: the PUBLISH script's ``keys`` and ``args``. ``plain``: an ephemeral
    publication without idempotency key, which a cluster sends as a plain ``PUBLISH``."""

    room: str
    keys: tuple[str, str, str]
    args: tuple[Any, ...]
    plain: bool = False


class RedisBroker:
    """Broker over one Redis server (key layout: docs/design.md, "The brokers")."""

    def __init__(
        self,
        url: str,
        *,
        history_size: int = 1000,
        history_ttl: float = 3600.0,
        prefix: str = "hubbub:",
        timeout: float = 5.0,
        probe_interval: float | None = None,
        probe_timeout: float | None = None,
        max_connections: int = 64,
        room_history: Callable[[str], tuple[int, float]] | None = None,
        longest_ttl: float | None = None,
        **_: Any,
    ) -> None:
        self.url = url
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.prefix = prefix
        self.timeout = timeout
        self.probe_interval = probe_interval or min(1.0, timeout)
        self.probe_timeout = probe_timeout or max(3 * self.probe_interval, timeout)
        self.max_connections = max_connections
        self._ttl_ms = int(history_ttl * 1000)
        # Per-room (size, ttl s) when rooms differ ([[rooms]]): they reach the scripts as ARGV.
        self._room_history = room_history
        self._meta_ttl = max(META_TTL, math.ceil((longest_ttl or history_ttl) * 10))
        self._read_ttl = READ_TTL
        self._listener: NodeListener | None = None
        self.node = ""
        self._redis: Any = None  # redis.asyncio.Redis or RedisCluster
        self._link: PubSubLink | None = None
        self._closed = False
        self._rooms_by_channel: dict[bytes, str] = {}
        self._ctl = (prefix + "ctl").encode()
        self._inbox = b""
        self.cluster = False  # set by start() from the URL
        self._pipe: PublishPipe | None = None  # one Redis: publishes pipelined on one connection
        self._calls: PublishPipe | None = None  # one Redis: every other script call, pipelined
        self._casts: set[asyncio.Task[None]] = set()  # casts and shared reads under way
        self._positions: dict[str, asyncio.Future[tuple[str, int]]] = {}  # reads not sent yet
        self._lane: PublishLane[_PubCall, Any] = PublishLane(self._run_batch)

    # ---- keys ------------------------------------------------------------------------------------
    def _rk(self, room: str, suffix: str) -> str:
        return lua.room_key(self.prefix, room, suffix)

    def _channel(self, room: str) -> bytes:
        return self._rk(room, "ch").encode()

    # ---- life cycle ------------------------------------------------------------------------------
    async def start(self, listener: NodeListener, node_id: str) -> None:
        """Connect in the background; waits at most ``min(timeout, 2)`` seconds for the first
        connection and never raises when Redis is down (``broker_state(False)`` instead)."""
        self._listener = listener
        self.node = node_id
        self._inbox = f"{self.prefix}node:{node_id}".encode()
        url, cluster = split_cluster_flag(self.url)
        self.cluster = cluster
        common: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 0),  # a retried script could publish twice
            # RESP2: pub/sub pushes come back from read_response() as plain arrays; and without
            # maintenance notifications the pool checks an idle connection before reuse, so one
            # closed by a Redis restart is replaced, not used and failed.
            "protocol": 2,
        }
        # The pool always makes the pub/sub connection (on a cluster: to the node in the URL;
        # PUBLISH reaches every node of a cluster).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=self.max_connections,
            timeout=self.timeout,
            health_check_interval=0,
            maint_notifications_config=None,
            **common,
        )
        self._pool = pool
        r: Any
        if cluster:
            r = RedisCluster.from_url(url, max_connections=self.max_connections, **common)
        else:
            r = aioredis.Redis(connection_pool=pool)
        self._redis = r

        def connect() -> AbstractConnection:
            conn: AbstractConnection = pool.connection_class(**pool.connection_kwargs)
            return conn

        def connect_pipe() -> AbstractConnection:
            # No socket timeout: redis-py would then run every write in a task of its own (one
            # more loop iteration per write); the pipe times out the oldest reply itself.
            kwargs = {**pool.connection_kwargs, "socket_timeout": None}
            conn: AbstractConnection = pool.connection_class(**kwargs)
            return conn

        if not cluster:
            self._pipe = PublishPipe(
                connect_pipe, timeout=self.timeout, preamble=[("SCRIPT", "LOAD", lua.PUBLISH)]
            )
            self._calls = PublishPipe(connect_pipe, timeout=self.timeout, one_write_in_flight=True)
        self._s_publish = r.register_script(lua.PUBLISH)
        self._s_history = self.script(lua.HISTORY)
        self._s_position = self.script(lua.POSITION)
        self._link = PubSubLink(
            connect,
            fixed=[self._ctl, self._inbox],
            on_message=self._on_message,
            on_state=self._on_state,
            send_probe=self._probe,
            timeout=self.timeout,
            probe_interval=self.probe_interval,
            probe_timeout=self.probe_timeout,
        )
        self._link.start()
        try:
            await asyncio.wait_for(self._link.became_up.wait(), min(self.timeout, 2.0))
        except TimeoutError:
            log.warning(
                "redis at %s is not reachable yet; retrying in the background",
                redact_url(self.url),
            )
            listener.broker_state(False)

    async def close(self) -> None:
        """Stop the tasks; remove what this node asserted (best effort, short timeout)."""
        if self._closed:
            return
        self._closed = True
        await self._lane.close()
        for pipe in (self._pipe, self._calls):
            if pipe is not None:
                await pipe.close()
        casts = list(self._casts)
        for task in casts:
            task.cancel()
        await asyncio.gather(*casts, return_exceptions=True)
        if self._link is not None:
            await self._link.close()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            with contextlib.suppress(Exception):
                await self._pool.disconnect()
        self._listener = None

    async def ready(self) -> bool:
        if self._closed or self._link is None or not self._link.up or self._redis is None:
            return False
        try:
            async with asyncio.timeout(self.timeout):
                return bool(await self._redis.ping())
        except _ERRORS:
            return False

    @property
    def link(self) -> PubSubLink | None:
        """The pub/sub link (tests inspect it)."""
        return self._link

    # ---- plumbing --------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The Redis client (redis.asyncio.Redis or RedisCluster), for the state store that
        shares this broker's connection pool. Raises BrokerError when not running."""
        if self._redis is None or self._closed:
            raise BrokerError("broker is not running")
        return self._redis

    async def call(self, aw: Awaitable[T]) -> T:
        """Await a Redis call within the timeout; every failure becomes BrokerError."""
        try:
            async with asyncio.timeout(self.timeout):
                return await aw
        except _ERRORS as exc:
            raise BrokerError("broker unavailable") from exc

    def script(self, source: str) -> Script:
        """Register a Lua script for :meth:`run` (on one Redis, every new connection of the
        calls pipe loads it first). Call it after :meth:`start`."""
        script: Script = self.client.register_script(source)
        if self._calls is not None:
            self._calls.preload("SCRIPT", "LOAD", source)
        return script

    def run(
        self,
        script: Script,
        keys: Sequence[Any],
        args: Sequence[Any] = (),
        on_write: Callable[[], None] | None = None,
    ) -> Awaitable[Any]:
        """Run a script of :meth:`script` within the timeout; every failure becomes
        BrokerError. One Redis: on the calls pipe, concurrent calls pipelined on one connection
        (a reconnect storm's thousands of subscribes cost one write per loop iteration, not one
        pooled round trip each; one write in flight, so a busy node's calls of many loop
        iterations share one), within the pipe's own deadline (the oldest call written and
        not answered), ``on_write`` called as the call is written; a cluster: through
        redis-py, which routes each call to its slot's node (``on_write`` is not called)."""
        if self._calls is not None:
            call = ("EVALSHA", script.sha, len(keys), *keys, *args)
            return self._piped(self._calls, call, on_write)
        return self.call(script(keys=list(keys), args=list(args)))

    @staticmethod
    async def _piped(
        pipe: PublishPipe, args: tuple[Any, ...], on_write: Callable[[], None] | None = None
    ) -> Any:
        try:
            return await pipe.call(*args, on_write=on_write)
        except _ERRORS as exc:  # a script's error reply; the pipe's own failures are BrokerError
            raise BrokerError("broker unavailable") from exc

    def cast(
        self,
        script: Script,
        keys: Sequence[Any],
        args: Sequence[Any] = (),
        on_write: Callable[[], None] | None = None,
    ) -> list[Any] | None:
        """Run a script of :meth:`script` without waiting for it; its failures are dropped
        (for writes something else repeats, as the state store's refresh). One Redis: queued
        on the calls pipe in call order, so a later :meth:`run` sees it, and the queued
        command is returned: its ARGV may be extended until ``on_write`` is called. A
        cluster: a task (returns None, ``on_write`` is not called)."""
        if self._calls is not None:
            return self._calls.cast(
                "EVALSHA", script.sha, len(keys), *keys, *args, on_write=on_write
            )
        self._spawn(self._cast_task(script, keys, args))
        return None

    async def _cast_task(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> None:
        with contextlib.suppress(BrokerError, RedisError):
            await self.run(script, keys, args)

    def _on_state(self, up: bool) -> None:
        if self._listener is None:
            return
        self._listener.broker_state(up)
        if up:
            self._listener.resync()

    def _on_message(self, channel: bytes, data: bytes) -> None:
        listener = self._listener
        if listener is None:
            return
        room = self._rooms_by_channel.get(channel)
        if room is not None:
            off, ep, body = data.split(b"|", 2)
            listener.deliver(
                Publication(room, int(off) if off else None, ep.decode() if ep else None, body)
            )
        elif data[:1] == b"{" and (channel == self._ctl or channel == self._inbox):
            listener.on_control(orjson.loads(data))

    async def _probe(self) -> None:
        await self.call(self.client.publish(self._inbox, b"probe"))

    # ---- publish, history ------------------------------------------------------------------------
    async def publish(
        self,
        room: str,
        body: bytes,
        *,
        ephemeral: bool = False,
        idempotency: Idempotency | None = None,
    ) -> PublishResult:
        """As the protocol. The call is queued before this coroutine first suspends: publish
        coroutines started in some order reach Redis in that order. One Redis: on the publish
        pipe (:mod:`hub.brokers.redis_pipe`), concurrent calls pipelined on one connection;
        Redis Cluster: on the publish lane (:mod:`hub.brokers.redis_batch`)."""
        if self._redis is None or self._closed:
            raise BrokerError("broker is not running")
        meta = self._rk(room, "meta")
        idem, fp = meta, ""
        if idempotency is not None:
            digest = hashlib.sha256(
                idempotency.scope.encode() + b"\0" + idempotency.key.encode()
            ).hexdigest()
            idem, fp = self._rk(room, "idem:" + digest), idempotency.fingerprint
        size, ttl_ms = self.history_size, self._ttl_ms
        if self._room_history is not None:
            size, ttl = self._room_history(room)
            ttl_ms = int(ttl * 1000)
        call = _PubCall(
            room,
            (meta, self._rk(room, "stream"), idem),
            (
                new_epoch(),
                body,
                size,
                ttl_ms,
                self._channel(room),
                fp,
                int(IDEMPOTENCY_TTL),
                "1" if ephemeral else "0",
                self._meta_ttl,
            ),
            plain=ephemeral and idempotency is None,
        )
        if self._pipe is not None:
            res = await self.call(
                self._pipe.call("EVALSHA", _PUBLISH_SHA, 3, *call.keys, *call.args)
            )
        else:
            res = await self.call(self._lane.call(call))
        if call.plain:
            return PublishResult(room, None, None)
        status, off, ep = res
        if status == b"conflict":
            raise Conflict("Idempotency-Key reused with a different request")
        return PublishResult(
            room,
            int(off) if off else None,
            ep.decode() if ep else None,
            duplicate=status == b"dup",
        )

    @property
    def lane(self) -> PublishLane[_PubCall, Any]:
        """The publish lane of Redis Cluster (tests read its counters)."""
        return self._lane

    @property
    def pipe(self) -> PublishPipe | None:
        """The publish pipe of one Redis (tests read its counters); None on a cluster."""
        return self._pipe

    async def _run_batch(self, calls: Sequence[_PubCall]) -> list[Any]:
        """Redis Cluster: run one batch of the publish lane within the timeout, rooms in
        parallel, each room's calls one after the other (keys of different rooms live on
        different shards). Per-call Redis errors become BrokerError; the timeout fails the
        whole batch with BrokerError."""
        redis = self.client
        try:
            async with asyncio.timeout(self.timeout):
                return await self._run_cluster(redis, calls)
        except _ERRORS as exc:
            raise BrokerError("broker unavailable") from exc

    async def _run_cluster(self, redis: Any, calls: Sequence[_PubCall]) -> list[Any]:
        out: list[Any] = [None] * len(calls)
        by_room: dict[str, list[int]] = {}
        for i, c in enumerate(calls):
            by_room.setdefault(c.room, []).append(i)

        async def room_calls(indexes: list[int]) -> None:
            for i in indexes:
                c = calls[i]
                try:
                    if c.plain:
                        out[i] = await redis.publish(c.args[4], b"||" + c.args[1])
                    else:
                        out[i] = await self._s_publish(keys=list(c.keys), args=list(c.args))
                except _ERRORS as exc:
                    out[i] = _call_error(exc)

        await asyncio.gather(*(room_calls(ix) for ix in by_room.values()))
        return out

    async def publish_frame(self, room: str, frame: bytes) -> None:
        await self.call(self.client.publish(self._channel(room), b"||" + frame))

    async def subscribe(self, room: str) -> None:
        """Receive the room's traffic from when this returns. Raises BrokerError."""
        if self._link is None:
            raise BrokerError("broker is not running")
        ch = self._channel(room)
        self._rooms_by_channel[ch] = room
        try:
            await self._link.subscribe(ch)
        except BaseException:
            self._rooms_by_channel.pop(ch, None)
            raise

    async def unsubscribe(self, room: str) -> None:
        ch = self._channel(room)
        self._rooms_by_channel.pop(ch, None)
        if self._link is not None:
            await self._link.unsubscribe(ch)

    async def history(
        self,
        room: str,
        *,
        after: int | None = None,
        limit: int = 100,
        max_bytes: int | None = None,
    ) -> HistoryPage:
        ttl_ms = self._ttl_ms
        if self._room_history is not None:
            ttl_ms = int(self._room_history(room)[1] * 1000)
        res = await self.run(
            self._s_history,
            [self._rk(room, "meta"), self._rk(room, "stream")],
            [
                new_epoch(),
                ttl_ms,
                "" if after is None else int(after),
                max(0, int(limit)),
                self._read_ttl,
                0 if max_bytes is None else max(1, int(max_bytes)),
            ],
        )
        epoch = res[0].decode()
        pubs = [Publication(room, int(res[i]), epoch, res[i + 1]) for i in range(3, len(res), 2)]
        return HistoryPage(epoch=epoch, head=int(res[1]), first=int(res[2]), publications=pubs)

    async def position(self, room: str) -> tuple[str, int]:
        """The room's epoch and head. Every call gets a head read after it was made. One Redis:
        calls for one room share a read until it is written to the calls pipe (which keeps one
        write in flight, so a burst of subscribes to one room costs one read per round trip);
        a cluster: calls made in the same loop iteration share one read, sent after the last
        of them."""
        pending = self._positions.get(room)
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = loop.create_future()
            self._positions[room] = pending
            if self._calls is not None:
                self._spawn(self._position_into(room, pending))
            else:
                loop.call_soon(self._read_position, room, pending)
        return await asyncio.shield(pending)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._casts.add(task)
        task.add_done_callback(self._casts.discard)

    def _forget_position(self, room: str, fut: asyncio.Future[tuple[str, int]]) -> None:
        if self._positions.get(room) is fut:
            del self._positions[room]  # later calls make a read of their own

    def _read_position(self, room: str, fut: asyncio.Future[tuple[str, int]]) -> None:
        self._forget_position(room, fut)
        self._spawn(self._position_into(room, fut))

    async def _position_into(self, room: str, fut: asyncio.Future[tuple[str, int]]) -> None:
        keys = [self._rk(room, "meta"), self._rk(room, "stream")]
        args = [new_epoch(), self._read_ttl]
        try:
            res = await self.run(
                self._s_position, keys, args, on_write=lambda: self._forget_position(room, fut)
            )
            value = (res[0].decode(), int(res[1]))
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc if isinstance(exc, Exception) else BrokerError("cancelled"))
                fut.exception()  # retrieved: every caller may be gone
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._forget_position(room, fut)
        if not fut.done():
            fut.set_result(value)

    # ---- control -------------------------------------------------------------------------------
    async def send_control(self, message: dict[str, Any], node: str | None = None) -> None:
        channel = self._ctl if node is None else f"{self.prefix}node:{node}".encode()
        await self.call(self.client.publish(channel, orjson.dumps(message)))


_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)


def _call_error(exc: BaseException) -> BrokerError:
    err = BrokerError("broker unavailable")
    err.__cause__ = exc
    return err
