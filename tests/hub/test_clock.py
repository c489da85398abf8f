"""The timer wheel (hub/clock.py): deadlines never run early, earlier ones reschedule the loop
timer, removed ones do not run, callbacks may re-add themselves. Real event loop; waits have
generous deadlines and nothing asserts how long something took beyond "not early"."""

from __future__ import annotations

import asyncio

from hubbub.hub.clock import TICK, Wheel, wheel
from tests.helpers import until

DEADLINE = 5.0


class Item:
    def __init__(self, w: Wheel, again: float = 0.0, times: int = 1) -> None:
        self.wheel = w
        self.calls: list[float] = []
        self.again = again
        self.times = times

    def on_tick(self) -> None:
        now = asyncio.get_running_loop().time()
        self.calls.append(now)
        if len(self.calls) < self.times:
            self.wheel.add(self, Wheel.tick_of(now + self.again))


async def test_deadlines_run_in_order_never_early() -> None:
    w = wheel()
    assert wheel() is w  # one per loop
    now = asyncio.get_running_loop().time()
    late, early = Item(w), Item(w)
    w.add(late, Wheel.tick_of(now + 0.3))
    w.add(early, Wheel.tick_of(now + 0.1))  # earlier than the scheduled loop timer
    await until(lambda: late.calls)
    assert early.calls and early.calls[0] <= late.calls[0]
    assert early.calls[0] >= now + 0.1 - 0.002 and late.calls[0] >= now + 0.3 - 0.002
    assert not w.buckets and w.timer is None


async def test_removed_items_do_not_run_and_re_adding_works() -> None:
    w = wheel()
    now = asyncio.get_running_loop().time()
    gone, kept = Item(w), Item(w, again=0.02, times=3)
    tick = Wheel.tick_of(now + 0.05)
    w.add(gone, tick)
    w.add(kept, tick)
    w.remove(gone, tick)
    w.remove(gone, tick + 99)  # not there: no error
    await until(lambda: len(kept.calls) == 3)
    await asyncio.sleep(3 * TICK)
    assert gone.calls == [] and len(kept.calls) == 3
    assert all(b - a >= 0.02 - 0.002 for a, b in zip(kept.calls, kept.calls[1:], strict=False))
    assert not w.buckets


async def test_a_later_deadline_does_not_delay_a_pending_earlier_one() -> None:
    w = wheel()
    now = asyncio.get_running_loop().time()
    first = Item(w, again=10.0, times=2)  # re-adds itself far ahead while ``second`` waits
    second = Item(w)
    w.add(first, Wheel.tick_of(now + 0.02))
    w.add(second, Wheel.tick_of(now + 0.2))
    await until(lambda: second.calls)
    assert len(first.calls) == 1
    w.remove(first, Wheel.tick_of(first.calls[0] + 10.0))
    assert not w.buckets and not w.ticks and w.timer is None  # nothing left scheduled
