"""One loop timer for many deadlines: a timer wheel per event loop.

A node holds thousands of idle sessions, each with a deadline or two ahead (heartbeat ping,
liveness check, token expiry). A loop timer handle costs about 0.5 KiB each (uvloop); here every
deadline is an entry in the dict of its tick instead, and one loop timer fires at the earliest
tick. Deadlines are rounded *up* to :data:`TICK`: a callback never runs early and at most one tick
late.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import weakref
from typing import Protocol

TICK = 0.05  # seconds


class Timed(Protocol):
    def on_tick(self) -> None:
        """Called at (or just after) the deadline it was added for."""


class Wheel:
    """The deadlines of one event loop. Use :func:`wheel` to get the running loop's."""

    def __init__(self) -> None:
        self.buckets: dict[int, dict[Timed, None]] = {}
        self.ticks: list[int] = []  # heap of the ticks in ``buckets`` (and some emptied ones)
        self.timer: asyncio.TimerHandle | None = None
        self.timer_tick = 0

    @staticmethod
    def tick_of(when: float) -> int:
        """The tick a deadline at loop time ``when`` belongs to (rounded up)."""
        return math.ceil(when / TICK)

    def add(self, item: Timed, tick: int) -> None:
        """Call ``item.on_tick()`` at ``tick``. One item may be in several ticks."""
        bucket = self.buckets.get(tick)
        if bucket is None:
            bucket = self.buckets[tick] = {}
            heapq.heappush(self.ticks, tick)
            if self.timer is None or tick < self.timer_tick:
                self._schedule(tick)
        bucket[item] = None

    def remove(self, item: Timed, tick: int) -> None:
        """Forget ``item`` at ``tick`` (no error when it is not there)."""
        bucket = self.buckets.get(tick)
        if bucket is not None:
            bucket.pop(item, None)
            if not bucket:
                del self.buckets[tick]  # its heap entry is skipped when reached
                if not self.buckets:  # nothing pending: no loop timer (it would keep the loop)
                    self.ticks.clear()
                    if self.timer is not None:
                        self.timer.cancel()
                        self.timer = None

    def _schedule(self, tick: int) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_tick = tick
        self.timer = asyncio.get_running_loop().call_at(tick * TICK, self._run)

    def _run(self) -> None:
        self.timer = None
        # The loop's clock has millisecond steps: a timer may fire a hair before its time.
        now = math.floor((asyncio.get_running_loop().time() + 0.001) / TICK)
        due: list[dict[Timed, None]] = []
        while self.ticks and self.ticks[0] <= now:
            bucket = self.buckets.pop(heapq.heappop(self.ticks), None)
            if bucket:
                due.append(bucket)
        for bucket in due:
            for item in bucket:
                item.on_tick()
        while self.ticks and self.ticks[0] not in self.buckets:
            heapq.heappop(self.ticks)
        if self.ticks and (self.timer is None or self.timer_tick != self.ticks[0]):
            self._schedule(self.ticks[0])


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Wheel] = weakref.WeakKeyDictionary()


def wheel() -> Wheel:
    """The running loop's wheel."""
    loop = asyncio.get_running_loop()
    w = _wheels.get(loop)
    if w is None:
        w = _wheels[loop] = Wheel()
    return w
