"""Auto-batching of publish calls on Redis Cluster: few round trips for many publications.

(One Redis uses :mod:`hub.brokers.redis_pipe` instead: one connection, fully pipelined. A
cluster spreads rooms over shards, so a batch is run room by room in parallel, each room's
calls in order, by the broker's runner.)

On a cluster every ``publish`` of a node goes through one :class:`PublishLane`. When nothing is
in flight, a call is sent at once, alone, by its caller (no extra loop iteration: the latency of
a lone publication is that of a plain call). While a batch is in flight, new calls queue up and
leave together as the next batch once it is answered. Under light load that is one call per
batch; under heavy load batches grow (up to ``max_batch``) and the waits per publication
shrink.

Contract:

* Order: batches go out one at a time, and a batch holds calls in submission order, so calls
  reach Redis in the order they were submitted (what keeps one connection's publications in
  the order it sent them).
* :meth:`PublishLane.call` sends or queues its call before it first suspends, so calls made
  in some order (tasks started in that order) keep it.
* Every call ends: with its own result, with its own error, or with
  :class:`~hub.errors.BrokerError` when its batch failed as a whole (connection lost, timeout,
  lane closed). A batch that failed as a whole may have been partly executed by Redis, exactly
  like a single call that failed after it was sent.
* A call cancelled (its caller timed out or went away) before its batch left is dropped from
  the queue, so it is never executed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from hubbub.hub.errors import BrokerError

log = logging.getLogger("hubbub.redis")

C = TypeVar("C")
R = TypeVar("R")

# Runs one batch; returns one entry per call: its result, or the exception for that call alone.
# Raising fails the whole batch.
BatchRunner = Callable[[Sequence[C]], Awaitable[Sequence["R | BaseException"]]]


class PublishLane(Generic[C, R]):
    """Queue calls, run them as batches, one batch in flight at a time. See the module doc."""

    def __init__(self, run: BatchRunner[C, R], *, max_batch: int = 128) -> None:
        self._run = run
        self.max_batch = max_batch
        self._queue: deque[tuple[C, asyncio.Future[R]]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._busy = False  # a batch is in flight
        self._closed = False
        self.batches = 0  # batches sent, for tests and the bench notes
        self.calls = 0  # calls sent

    async def call(self, call: C) -> R:
        """Run ``call`` (see the module docstring); raises its own error or BrokerError."""
        if self._closed:
            raise BrokerError("broker is not running")
        if self._busy or self._queue:  # a batch is in flight or about to leave: join the queue
            fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            self._queue.append((call, fut))
            return await fut
        self._busy = True  # idle: this call leaves at once, alone
        try:
            self.batches += 1
            self.calls += 1
            res = (await self._run_checked([call]))[0]
        finally:
            self._busy = False
            self._start_drain()
        if isinstance(res, BaseException):
            raise res
        return res

    def _start_drain(self) -> None:
        if self._queue and self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._drain(), name="redis-publish-lane"
            )

    async def _run_checked(self, calls: list[C]) -> Sequence[R | BaseException]:
        """The runner's answer, or BrokerError for the whole batch."""
        try:
            results = await self._run(calls)
        except BrokerError:
            raise
        except Exception as exc:
            log.exception("publish batch failed")
            raise BrokerError(f"broker error: {exc!r}") from exc
        if len(results) != len(calls):  # pragma: no cover - a runner bug
            raise BrokerError("batch answered the wrong number of calls")
        return results

    async def close(self) -> None:
        """Fail what is queued and stop the batch in flight (its callers get BrokerError)."""
        self._closed = True
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._fail(list(self._queue), BrokerError("broker is not running"))
        self._queue.clear()

    @staticmethod
    def _fail(batch: list[tuple[C, asyncio.Future[R]]], exc: BaseException) -> None:
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved: the caller may be gone

    def _take(self) -> list[tuple[C, asyncio.Future[R]]]:
        batch: list[tuple[C, asyncio.Future[R]]] = []
        queue = self._queue
        while queue and len(batch) < self.max_batch:
            entry = queue.popleft()
            if not entry[1].done():  # cancelled by its caller: never sent
                batch.append(entry)
        return batch

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                if not batch:
                    continue
                self.batches += 1
                self.calls += len(batch)
                self._busy = True
                try:
                    results = await self._run_checked([call for call, _ in batch])
                except asyncio.CancelledError:
                    self._fail(batch, BrokerError("broker is not running"))
                    raise
                except BrokerError as exc:
                    self._fail(batch, exc)
                    continue
                finally:
                    self._busy = False
                for (_, fut), res in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if isinstance(res, BaseException):
                        fut.set_exception(res)
                        fut.exception()
                    else:
                        fut.set_result(res)
        finally:
            self._task = None
