"""The direct-write path of one connection, shared by the WebSocket and SSE transports.

The fan-out offers each frame to the session, which hands it to its ``direct`` writer while
nothing is queued (:meth:`hubbub.hub.session.Session.offer`). A :class:`DirectWriter` only
collects what it accepts: the first frame of a batch registers it with the loop's
:data:`~hubbub.transports.flush.flusher`, which writes every connection's batch with one
``transport.write`` at the end of the loop iteration (or at once after :data:`MAX_PENDING`
frames). It refuses, and the session queues the frame, while the connection is over its
high-water mark or while the transport's writer holds frames it took from the queue
(:attr:`busy`): frames keep their order, and a client that stops reading fills its queue
(``HUB_MAX_QUEUE`` → 4001).

What the session queued is written by :meth:`DirectWriter.write_items`, in pieces of about
:data:`WRITE_PIECE` bytes, each once the connection takes more, so a client that stops reading
holds at most one piece beyond its queue limit.

A transport supplies what differs:

* ``cache``, an :class:`Encoder`: what an item becomes on the wire, built once per item for
  every subscriber when it can be shared (the fan-out offers one item to all its sessions in a
  row, so one entry is enough);
* the connection's flow-control flag and its direct ``write`` (``WSConnection.write_now``,
  ``ChunkedStream.write``); :meth:`DirectWriter.frame`: a batch of encoded frames as the bytes
  of one write (SSE: one HTTP chunk); :meth:`DirectWriter.wait_writable`: waiting until the
  connection takes more (SSE bounds the wait);
* :meth:`DirectWriter.send_items`: the ASGI ``send`` fallback, for a server without a direct
  path or for what the direct path refused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import ClassVar, Protocol

from hubbub.hub.metrics import Metrics
from hubbub.hub.session import Item
from hubbub.transports.flow import Flag
from hubbub.transports.flush import flusher

MAX_PENDING = 64  # frames per connection before writing without waiting for the flush
WRITE_PIECE = 64 * 1024  # queued frames are written in pieces of about this size

_NO_PATH = Flag(False)  # the flag of a writer without a direct path: never set


class Encoder(Protocol):
    """What items become on one connection. ``item`` is the item ``data`` was built from, for
    a cache shared by connections that write the same bytes for it (None when nothing is
    shared: :meth:`encode` is then called for every item)."""

    item: Item | None
    data: bytes

    def encode(self, item: Item) -> bytes | None:
        """The bytes of ``item``'s frame, or None when this transport does not write it (the
        item is then taken and dropped). A shared cache also sets ``item`` and ``data``."""


def _refuse(data: bytes) -> bool:
    return False


class DirectWriter:
    """``Session.direct`` for one connection, and the writer of what its session queued.

    ``writable`` is the connection's flow-control flag (set while below its high-water mark)
    and ``write`` writes bytes on the direct path (False, writing nothing, once the connection
    is gone or no longer takes frames that way); both None when the server offers no direct
    path: the writer then refuses every frame and :meth:`write_items` sends everything through
    :meth:`send_items`. Counted in ``frames_sent``/``bytes_sent`` under :attr:`TRANSPORT`
    (``bytes_sent``: the bytes handed to the connection)."""

    TRANSPORT: ClassVar[str] = ""
    PLAIN: ClassVar[bool] = True
    """Frames are written back to back (WebSocket); False: :meth:`frame` wraps each write."""

    __slots__ = ("busy", "bytes_sent", "cache", "frames_sent", "pending", "plain", "sink",
                 "transport", "writable")  # fmt: skip

    def __init__(
        self,
        metrics: Metrics | None,
        cache: Encoder,
        writable: Flag | None,
        write: Callable[[bytes], bool] | None,
    ) -> None:
        # Per instance, not read from the class on each flush: slots are the fastest attributes.
        self.transport = self.TRANSPORT
        self.plain = self.PLAIN
        self.frames_sent: Counter[str] = metrics.frames_sent if metrics else Counter()
        self.bytes_sent: Counter[str] = metrics.bytes_sent if metrics else Counter()
        self.cache = cache
        self.writable = _NO_PATH if writable is None or write is None else writable
        self.sink = _refuse if write is None else write
        self.busy = False  # write_items holds frames taken from the queue: keep the order
        self.pending: list[bytes] = []  # accepted from the fan-out, not yet written

    @property
    def direct(self) -> bool:
        """The server offers a direct path (it may since have gone away)."""
        return self.writable is not _NO_PATH

    def detach(self) -> None:
        """The response or connection is over: write nothing more on the direct path."""
        self.sink = _refuse

    # ---- the fan-out's side: per subscriber and frame, so kept short ------------------------
    def __call__(self, item: Item) -> bool:
        """Take ``item`` from the fan-out, to be written at the end of this loop iteration;
        False (the session queues it) while busy or over the high-water mark. Only flow control
        is checked here: whether the connection is still open is checked once per write."""
        if self.busy or not self.writable.is_set():
            return False
        cache = self.cache
        if item is cache.item:
            data = cache.data
        else:
            encoded = cache.encode(item)
            if encoded is None:
                return True  # nothing to write on this transport: taken and dropped
            data = encoded
        pending = self.pending
        pending.append(data)
        if len(pending) == 1:
            flusher.add(self)
        elif len(pending) >= MAX_PENDING:
            self.flush()
        return True

    def flush(self) -> None:
        """Write what was accepted, in one write (dropped if the connection went away)."""
        pending = self.pending
        if not pending:
            return
        if self.plain:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
        else:
            data = self.frame(pending)
        self.frames_sent[self.transport] += len(pending)
        self.bytes_sent[self.transport] += len(data)
        pending.clear()
        self.sink(data)

    # ---- the session's queue ------------------------------------------------------------------
    async def write_items(self, items: list[Item]) -> bool:
        """Write a batch taken from the session's queue after what the fan-out handed over:
        on the direct path in pieces of about :data:`WRITE_PIECE` bytes, each once the
        connection takes more; what the direct path refuses (or everything, without one) goes
        to :meth:`send_items`. Meanwhile the fan-out's frames are refused (queued). Returns
        False when the connection is gone."""
        self.flush()  # older than anything in the queue
        self.busy = True
        try:
            if self.direct:
                done = await self._write_pieces(items)
                if done == len(items):
                    return True
                items = items[done:]
            return await self.send_items(items)
        finally:
            self.busy = False

    async def _write_pieces(self, items: list[Item]) -> int:
        """Returns how many items were written: all, or fewer when the connection refused."""
        cache = self.cache
        run: list[bytes] = []
        size = done = 0
        last = len(items) - 1
        for i, item in enumerate(items):
            data = cache.data if item is cache.item else cache.encode(item)
            if data is not None:
                run.append(data)
                size += len(data)
            if run and (size >= WRITE_PIECE or i == last):
                if not self.writable.is_set():
                    await self.wait_writable()
                piece = self.frame(run)
                if not self.sink(piece):
                    return done
                self.frames_sent[self.transport] += len(run)
                self.bytes_sent[self.transport] += len(piece)
                done = i + 1
                run, size = [], 0
        return len(items)

    # ---- what a transport supplies ----------------------------------------------------------
    def frame(self, frames: list[bytes]) -> bytes:
        """Encoded frames as the bytes of one write (here: joined; see :attr:`PLAIN`)."""
        return frames[0] if len(frames) == 1 else b"".join(frames)

    async def wait_writable(self) -> None:
        """Wait until the connection is below its low-water mark (or gone)."""
        await self.writable.wait()

    async def send_items(self, items: list[Item]) -> bool:
        """Send items through the ASGI ``send``; False when the connection is gone."""
        raise NotImplementedError
