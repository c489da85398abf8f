"""One write per connection per loop iteration, for every transport's direct-write path.

The fan-out hands frames to a connection's direct writer
(:class:`hubbub.transports.direct.DirectWriter`), which only collects them; the first
frame a writer collects in a loop iteration registers it here, and one ``call_soon`` callback
then calls ``flush()`` on every registered writer. So every publication fanned out in the same
iteration leaves in one ``transport.write`` per connection (WebSocket frames and SSE chunks
alike), and under light load the write still happens as soon as the fan-out returns.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Flushable(Protocol):
    def flush(self) -> None:
        """Write what was collected since the last flush (nothing when the peer went away)."""


class Flusher:
    """The writers with collected frames, flushed by one ``call_soon`` per loop iteration."""

    def __init__(self) -> None:
        self.dirty: list[Flushable] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.scheduled = False

    def add(self, writer: Flushable) -> None:
        """Flush ``writer`` at the end of this loop iteration. Call once per batch (when the
        writer's first frame is collected)."""
        self.dirty.append(writer)
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # a new loop (tests run several): a pending flush is void
            self.loop, self.scheduled = loop, False
            self.dirty = [writer]
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self.flush_all)

    def flush_all(self) -> None:
        self.scheduled = False
        dirty, self.dirty = self.dirty, []
        for w in dirty:
            w.flush()


flusher = Flusher()
