"""A flag to wait on, for the per-connection state of the server protocols."""

from __future__ import annotations

import asyncio


class Flag:
    """``asyncio.Event`` without the Event's deque (about 0.8 KiB each, and every connection
    has one): the waiters live in a list made on the first wait. ``wait`` returns at once
    while the flag is set."""

    __slots__ = ("_set", "_waiters")

    def __init__(self, value: bool = True) -> None:
        self._set = value
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            waiters, self._waiters = self._waiters, None
            for w in waiters or ():
                if not w.done():
                    w.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if self._waiters is not None and fut in self._waiters:
                self._waiters.remove(fut)
