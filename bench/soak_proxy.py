"""A TCP proxy on asyncio between one node and Redis, for the soak's network faults.

:class:`Proxy` listens on 127.0.0.1 and forwards every connection to ``upstream``. Bytes keep
their order in each direction. Faults, each undone by the next call or :meth:`heal`:

* :meth:`latency` — every chunk is delivered ``delay`` seconds after it was read;
* :meth:`blackhole` — nothing is delivered and new connections do not reach Redis (bytes read
  meanwhile are held, as a partition's retransmissions would be, and delivered on
  :meth:`heal` to the connections that are still open);
* :meth:`drop` — every open connection is reset at once (both sides get an RST).

When Redis refuses a new connection, the client side is closed. :meth:`close` ends everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field

_READ = 65536


@dataclass(eq=False)
class _Pair:
    """One proxied connection: the node's side and Redis' side."""

    down: asyncio.StreamWriter
    up: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _reset(w: asyncio.StreamWriter | None) -> None:
    """Close ``w`` with an RST (SO_LINGER 0), not a FIN."""
    if w is None:
        return
    sock = w.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


class Proxy:
    """See the module docstring; ``port`` is known once :meth:`start` returned."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.host, self.upstream_port = host, upstream_port
        self.port = 0
        self.delay = 0.0
        self._open = asyncio.Event()  # cleared while blackholed
        self._open.set()
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self.connections = 0  # accepted so far

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    def latency(self, delay: float) -> None:
        self.delay = delay

    def blackhole(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self.delay = 0.0
        self._open.set()

    def drop(self) -> int:
        """Reset every open connection; returns how many."""
        pairs = list(self._pairs)
        for p in pairs:
            self._end(p)
        return len(pairs)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop()
        self._open.set()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def _end(self, p: _Pair) -> None:
        self._pairs.discard(p)
        _reset(p.down)
        _reset(p.up)
        for t in p.tasks:
            t.cancel()

    async def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        p = _Pair(down=w)
        self._pairs.add(p)
        try:
            await self._open.wait()  # a blackholed connect hangs, as a dropped SYN would
            if p not in self._pairs:
                return
            try:
                ur, uw = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.upstream_port), 5
                )
            except (OSError, TimeoutError):
                self._end(p)
                return
            if p not in self._pairs:
                _reset(uw)
                return
            p.up = uw
            p.tasks = [asyncio.create_task(self._pump(p, r, uw)),
                       asyncio.create_task(self._pump(p, ur, w))]  # fmt: skip
            await asyncio.gather(*p.tasks, return_exceptions=True)
        finally:
            if p in self._pairs:
                self._end(p)

    async def _pump(self, p: _Pair, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Copy ``src`` to ``dst`` in order, delayed while latency is set and held while
        blackholed; the pair ends when either side ends."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            data = b"x"
            try:
                while data:
                    data = await src.read(_READ)
                    q.put_nowait((loop.time() + self.delay, data))
            except (OSError, ConnectionError):
                q.put_nowait((0.0, b""))

        reader = asyncio.create_task(read())
        try:
            while True:
                due, data = await q.get()
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                await self._open.wait()
                if not data:
                    break
                dst.write(data)
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self._end(p)
