"""Helpers shared by the whole suite."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

FAST = 0.01  # seconds between polls during the first second
SLOW = 0.05  # and afterwards (browser and HTTP checks cost more per poll)


async def until(
    check: Callable[[], Any | Awaitable[Any]], within: float = 10.0, what: str = "condition"
) -> Any:
    """Poll ``check()`` (a plain function or a coroutine function) until it returns something
    truthy, and return that value. Fails with an AssertionError naming ``what`` and the last
    value after ``within`` seconds. ``within`` is an upper bound for "eventually", never a
    performance assertion."""
    start = time.monotonic()
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        elapsed = time.monotonic() - start
        if elapsed > within:
            raise AssertionError(f"timed out after {within} s waiting for {what}; last: {value!r}")
        await asyncio.sleep(FAST if elapsed < 1.0 else SLOW)
