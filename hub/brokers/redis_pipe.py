"""The publish pipe: a node's publications to one Redis over one connection, pipelined.

Every call is written to the connection without waiting for the replies of the calls before it;
calls made in the same loop iteration leave in one write. Redis runs a connection's commands in
the order they arrive and answers in that order, so the replies are matched first in, first out,
and the order of the calls is the order in which Redis runs them (what keeps one WebSocket
connection's publications in the order it sent them, with many in flight). Pub/sub messages of
calls that Redis ran back to back reach the subscribed nodes together, so their WebSocket
flusher writes them to a subscriber at once.

Contract:

* :meth:`PublishPipe.call` queues its command before it first suspends: calls made in some
  order (tasks started in that order) reach Redis in that order.
* Every call ends: with its reply, with its own error reply (raised as the ``ResponseError``),
  or with :class:`~hub.errors.BrokerError` when the connection failed or Redis did not answer
  the oldest outstanding call within ``timeout`` (then every outstanding call fails: it may or
  may not have run, as for any call that failed after it was sent). A call whose caller gave up
  before it was written is never written.
* A fresh connection first runs the ``preamble`` (``SCRIPT LOAD``), so NOSCRIPT only follows a
  ``SCRIPT FLUSH`` on a live connection. Then nothing more is written on that connection; once
  it has answered everything, the calls that met NOSCRIPT are written again, first, on a new
  connection (which loads the script), in their order.
* A connection that Redis closes while idle is noticed at once (the reader always waits on it)
  and replaced at the next call.
* With ``one_write_in_flight``, a write leaves only once every reply of the write before it was
  read: an idle pipe writes at once, a busy one gathers the calls of many loop iterations into
  one write (the node's subscribes in a connect storm), at the price of at most one round trip
  of waiting. Order and the other rules are unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, RedisError, ResponseError

from hubbub.hub.errors import BrokerError

log = logging.getLogger("hubbub.redis")

_ERRORS = (RedisError, OSError, TimeoutError)


class _Call:
    __slots__ = ("args", "fut", "on_write", "retried")

    def __init__(
        self,
        args: tuple[Any, ...] | list[Any],
        fut: asyncio.Future[Any] | None,
        on_write: Callable[[], None] | None = None,
    ) -> None:
        self.args = args  # a list while the caller may still extend it (see ``cast``)
        self.fut = fut  # None: a preamble command, answered to nobody
        self.on_write = on_write  # called once, as the call is written
        self.retried = False


class PublishPipe:
    """Commands over one connection, pipelined. See the module docstring."""

    def __init__(
        self,
        connect: Callable[[], AbstractConnection],
        *,
        timeout: float,
        preamble: Sequence[tuple[Any, ...]] = (),
        max_write: int = 256,
        one_write_in_flight: bool = False,
    ) -> None:
        self._connect = connect
        # Write the next batch only once every reply of the one before was read: under load
        # the calls of many loop iterations share one write (one syscall each way) instead of
        # one write per iteration; an idle pipe still writes at once.
        self.one_write_in_flight = one_write_in_flight
        self._answered: asyncio.Future[None] | None = None  # the writer waits for _sent to empty
        self.timeout = timeout
        self._preamble = list(preamble)
        self.max_write = max_write
        self._queue: deque[_Call] = deque()  # not written yet
        self._sent: deque[_Call] = deque()  # written, reply not read yet, oldest first
        self._retry: list[_Call] = []  # met NOSCRIPT: written again first on the next connection
        self._conn: AbstractConnection | None = None
        self._fresh = False  # the preamble is still to be written on _conn
        self._poisoned = False  # _conn met NOSCRIPT: write nothing more, read what it owes
        self._deadline: asyncio.Timeout | None = None  # the reader's, while it waits for a reply
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()  # disconnects under way
        self.writes = 0  # writes of calls, for tests and the bench notes
        self.calls = 0  # calls written

    def preload(self, *command: Any) -> None:
        """Add a command (``SCRIPT LOAD``) to the preamble of every new connection. A script
        added while a connection is live is loaded through the NOSCRIPT path on first use."""
        self._preamble.append(command)

    def cast(self, *args: Any, on_write: Callable[[], None] | None = None) -> list[Any]:
        """Queue one command whose reply nobody waits for (its errors are dropped): it keeps
        its place in the order of calls like any other. Returns its arguments as a list that
        the caller may extend until ``on_write`` is called (the command is being written)."""
        call_args = list(args)
        if self._closed:
            return call_args
        self._queue.append(_Call(call_args, None, on_write))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(
                self._write_loop(), name="redis-publish-writer"
            )
        return call_args

    async def call(self, *args: Any, on_write: Callable[[], None] | None = None) -> Any:
        """Run one command (see the module docstring). ``on_write`` is called as it is
        written (never if it fails before)."""
        if self._closed:
            raise BrokerError("broker is not running")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Call(args, fut, on_write))
        if self._writer is None:
            # Its first step runs at the next loop iteration: the calls made until then
            # leave in one write.
            self._writer = loop.create_task(self._write_loop(), name="redis-publish-writer")
        return await fut

    async def close(self) -> None:
        """Fail every call not answered yet with BrokerError and drop the connection."""
        self._closed = True
        for task in (self._writer, self._reader):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        exc = BrokerError("broker is not running")
        conn = self._conn
        self._drop(exc)
        self._fail(self._queue, exc)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    # ---- internals ---------------------------------------------------------------------------
    @staticmethod
    def _fail(calls: Sequence[_Call] | deque[_Call], exc: BaseException) -> None:
        for c in calls:
            if c.fut is not None and not c.fut.done():
                c.fut.set_exception(exc)
                c.fut.exception()  # retrieved: the caller may be gone
        if isinstance(calls, deque):
            calls.clear()

    def _drop(self, exc: BaseException) -> None:
        """Forget the connection; every call written on it and not answered fails."""
        conn, self._conn = self._conn, None
        self._poisoned = self._fresh = False
        self._fail(self._sent, exc)
        self._fail(self._retry, exc)
        self._retry = []
        self._wake_writer()
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        if conn is not None:
            self._disconnect_later(conn)

    async def _wait_answered(self) -> None:
        fut = self._answered = asyncio.get_running_loop().create_future()
        try:
            await fut
        finally:
            self._answered = None

    def _wake_writer(self) -> None:
        fut = self._answered
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _disconnect_later(self, conn: AbstractConnection) -> None:
        task = asyncio.get_running_loop().create_task(conn.disconnect(nowait=True))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _open(self) -> AbstractConnection:
        conn = self._connect()
        async with asyncio.timeout(self.timeout):
            await conn.connect()  # type: ignore[no-untyped-call]
        self._conn, self._fresh, self._poisoned = conn, True, False
        self._reader = asyncio.get_running_loop().create_task(
            self._read_loop(conn), name="redis-publish-reader"
        )
        return conn

    def _take(self) -> list[_Call]:
        """The next write: calls to write again first, then queued calls and casts (calls whose
        caller gave up are dropped: never written); led by the preamble on a fresh connection."""
        batch: list[_Call] = self._retry
        self._retry = []
        queue = self._queue
        while queue and len(batch) < self.max_write:
            c = queue.popleft()
            if c.fut is None or not c.fut.done():  # None: a cast, nobody waits for it
                batch.append(c)
        if batch and self._fresh:
            self._fresh = False
            batch[:0] = [_Call(args, None) for args in self._preamble]
        return batch

    async def _write_loop(self) -> None:
        try:
            while self._queue or self._retry:
                if self._poisoned:  # let the reader collect what the connection owes
                    reader = self._reader
                    if reader is None or reader.done():
                        self._drop(BrokerError("broker unavailable"))
                    else:
                        await asyncio.wait([reader])
                    continue
                try:
                    conn = self._conn or await self._open()
                except _ERRORS as exc:  # nothing was written: the queued calls simply fail
                    err = BrokerError("broker unavailable")
                    err.__cause__ = exc
                    self._drop(err)
                    self._fail(self._queue, err)
                    return
                if self.one_write_in_flight and self._sent:
                    await self._wait_answered()
                    continue
                batch = self._take()
                if not batch:
                    continue
                if not self._sent and self._deadline is not None:
                    self._deadline.reschedule(asyncio.get_running_loop().time() + self.timeout)
                self._sent.extend(batch)
                for c in batch:
                    if c.on_write is not None:
                        c.on_write()
                        c.on_write = None
                self.writes += 1
                self.calls += sum(1 for c in batch if c.fut is not None)
                try:
                    await conn.send_packed_command(
                        conn.pack_commands([c.args for c in batch]), check_health=False
                    )
                except _ERRORS as exc:
                    if conn is self._conn:
                        err = BrokerError("broker unavailable")
                        err.__cause__ = exc
                        self._drop(err)
        finally:
            self._writer = None

    async def _read_loop(self, conn: AbstractConnection) -> None:
        """Read the replies of ``conn`` in order, for as long as it is the connection."""
        loop = asyncio.get_running_loop()
        sent = self._sent
        try:
            while conn is self._conn:
                if self._poisoned and not sent:  # it owes nothing more: replace it
                    self._conn = None
                    self._poisoned = self._fresh = False
                    self._disconnect_later(conn)
                    if self._writer is None and self._retry:
                        self._writer = loop.create_task(self._write_loop())
                    return
                try:
                    async with asyncio.timeout(None) as deadline:
                        if sent:
                            deadline.reschedule(loop.time() + self.timeout)
                        self._deadline = deadline
                        try:
                            reply: Any = await conn.read_response(timeout=math.inf)
                        finally:
                            self._deadline = None
                except ResponseError as exc:
                    reply = exc  # an error reply: the connection is fine
                if not sent:
                    raise BrokerError(f"unexpected reply from redis: {reply!r}")
                c = sent.popleft()
                if not sent:
                    self._wake_writer()
                if isinstance(reply, NoScriptError) and not c.retried:
                    c.retried = True  # not run: write it again once the script is loaded
                    self._retry.append(c)
                    self._poisoned = True
                    continue
                if self._poisoned and self._retry and c.fut is not None:
                    log.warning("a publish ran after one that met NOSCRIPT: order may not hold")
                if c.fut is None or c.fut.done():
                    continue
                if isinstance(reply, BaseException):
                    c.fut.set_exception(reply)
                    c.fut.exception()
                else:
                    c.fut.set_result(reply)
        except (*_ERRORS, BrokerError) as exc:
            if conn is self._conn:
                err = BrokerError("broker unavailable")
                err.__cause__ = exc
                self._drop(err)
        finally:
            if self._reader is asyncio.current_task():
                self._reader = None
