"""The node's one pub/sub connection, read by one supervised task.

redis-py's ``PubSub`` reconnects and resubscribes by itself after a short outage without telling
anyone, and whatever was published meanwhile is silently gone. So this module drives a bare
:class:`redis.asyncio.Connection` itself: every (re)connection subscribes every wanted channel,
waits for the server to confirm (a ``PING`` after the ``SUBSCRIBE`` answers once all of them are
in place) and only then reports ``up`` — the broker turns that into ``NodeListener.resync()``.

A pub/sub connection can also stay open and receive nothing (a proxy or a detached replica
blackholes it). A probe task publishes on the node's inbox every ``probe_interval`` seconds; when
nothing at all has arrived for ``probe_timeout`` seconds the connection is dropped and made anew
(docs/hardening.md, case 37).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from hubbub.hub.errors import BrokerError

log = logging.getLogger("hubbub.redis")

_ERRORS = (RedisError, OSError, TimeoutError)


async def supervise(
    name: str, fn: Callable[[], Awaitable[None]], running: Callable[[], bool]
) -> None:
    """Run ``fn`` while ``running()``: log a crash, back off (0.1 s doubling to 5 s) and run
    it again."""
    delay = 0.1
    while running():
        try:
            await fn()
            delay = 0.1
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s crashed; restarting in %.1f s", name, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait for them. Python 3.11's ``asyncio.timeout`` can swallow a
    cancellation that races with its deadline, so the loops also check a flag, and a task that
    survives is cancelled again."""
    for _ in range(5):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            break
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=1.0)
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            log.debug("task %s ended with %r", t.get_name(), t.exception())


class PubSubLink:
    """Subscriptions of one node over one pub/sub connection.

    ``on_message(channel, data)`` and ``on_state(up)`` are plain functions called from the
    reader task; they must not block. ``send_probe()`` publishes anything on a fixed channel.
    """

    def __init__(
        self,
        connect: Callable[[], AbstractConnection],
        *,
        fixed: list[bytes],
        on_message: Callable[[bytes, bytes], None],
        on_state: Callable[[bool], None],
        send_probe: Callable[[], Awaitable[None]],
        timeout: float,
        probe_interval: float,
        probe_timeout: float,
    ) -> None:
        self._connect = connect
        self._fixed = list(fixed)
        self._channels: set[bytes] = set(fixed)
        self._on_message = on_message
        self._on_state = on_state
        self._send_probe = send_probe
        self.timeout = timeout
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self._conn: AbstractConnection | None = None
        self._reading: asyncio.Task[None] | None = None
        self._waiters: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._last_rx = 0.0
        self.up = False
        self.connects = 0  # successful (re)connections, for tests and metrics
        self.became_up = asyncio.Event()
        self._closing = False

    # ---- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(
                supervise("redis pub/sub reader", self._run, self._running), name="pubsub-reader"
            ),
            loop.create_task(
                supervise("redis pub/sub probe", self._probe, self._running), name="pubsub-probe"
            ),
        ]

    def _running(self) -> bool:
        return not self._closing

    async def close(self) -> None:
        self._closing = True
        await stop_tasks(self._tasks)
        self._tasks = []
        self._fail_waiters()

    # ---- subscriptions -------------------------------------------------------------------------
    async def subscribe(self, channel: bytes) -> None:
        """Subscribe and wait for the server's confirmation (so nothing published after this
        returns is missed). Raises BrokerError when the link is down or the confirmation does
        not come within the timeout."""
        conn = self._conn
        if conn is None or not conn.is_connected:
            raise BrokerError("pub/sub connection is down")
        self._channels.add(channel)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(channel, deque())
        waiters.append(fut)
        try:
            async with asyncio.timeout(self.timeout):
                await conn.send_command("SUBSCRIBE", channel, check_health=False)
                await fut
        except (*_ERRORS, BrokerError) as exc:
            with contextlib.suppress(ValueError):
                waiters.remove(fut)
            # A reconnection may have subscribed it meanwhile: take it back (best effort).
            await self.unsubscribe(channel)
            raise BrokerError("pub/sub subscribe failed") from exc

    async def unsubscribe(self, channel: bytes) -> None:
        """Stop wanting ``channel``. Never raises: a dead connection forgets it anyway."""
        if channel in self._fixed:
            return
        self._channels.discard(channel)
        conn = self._conn
        if conn is not None and conn.is_connected:
            with contextlib.suppress(*_ERRORS):
                async with asyncio.timeout(self.timeout):
                    await conn.send_command("UNSUBSCRIBE", channel, check_health=False)

    def drop(self, reason: str) -> None:
        """Drop the current connection (the reader reconnects)."""
        if self._reading is not None and not self._reading.done():
            log.warning("dropping the redis pub/sub connection: %s", reason)
            self._reading.cancel()

    # ---- internals -----------------------------------------------------------------------------
    def _set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            if up:
                self.became_up.set()
            self._on_state(up)

    def _fail_waiters(self) -> None:
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(BrokerError("pub/sub connection lost"))
                    fut.exception()  # retrieved: the subscriber may have timed out already
        self._waiters.clear()

    def _handle(self, msg: Any) -> bool:
        """Handle one pushed frame; True for the handshake's pong."""
        if not isinstance(msg, list) or len(msg) < 2:
            return False
        kind = msg[0]
        if kind == b"message":
            try:
                self._on_message(msg[1], msg[2])
            except Exception:
                log.exception("pub/sub message handler failed")
        elif kind == b"subscribe":
            waiters = self._waiters.get(msg[1])
            if waiters:
                fut = waiters.popleft()
                if not fut.done():
                    fut.set_result(None)
        elif kind == b"pong":
            return True
        return False

    async def _read_loop(self, conn: AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            msg = await conn.read_response(timeout=math.inf, disconnect_on_error=True)
            self._last_rx = loop.time()
            self._handle(msg)

    async def _run(self) -> None:
        delay = 0.05
        loop = asyncio.get_running_loop()
        while not self._closing:
            conn = self._connect()
            try:
                async with asyncio.timeout(self.timeout):
                    await conn.connect()  # type: ignore[no-untyped-call]
                    await conn.send_command(
                        "SUBSCRIBE", *sorted(self._channels), check_health=False
                    )
                    await conn.send_command("PING", check_health=False)
                    self._conn = conn
                    while not self._handle(
                        await conn.read_response(timeout=math.inf, disconnect_on_error=True)
                    ):
                        pass
                self._last_rx = loop.time()
                self.connects += 1
                delay = 0.05
                self._set_up(True)
                self._reading = loop.create_task(self._read_loop(conn))
                await asyncio.wait([self._reading])
                if self._reading.cancelled():
                    log.warning("redis pub/sub connection dropped (deaf)")
                else:
                    exc = self._reading.exception()
                    log.warning("redis pub/sub connection lost: %s", exc)
            except _ERRORS as exc:
                log.debug("redis pub/sub connect failed: %r", exc)
            finally:
                if self._reading is not None and not self._reading.done():
                    self._reading.cancel()
                self._reading = None
                self._conn = None
                self._fail_waiters()
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            self._set_up(False)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, 2.0)

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            await asyncio.sleep(self.probe_interval)
            if not self.up or self._reading is None:
                continue
            with contextlib.suppress(BrokerError):
                await self._send_probe()
            if self.up and loop.time() - self._last_rx > self.probe_timeout:
                self._set_up(False)
                self.drop(f"nothing received for {self.probe_timeout:.1f} s")
