"""A tiny asyncio TCP proxy for broker fault tests (no toxiproxy here).

Every accepted connection is piped to the target. Faults apply to the connections open at the
time they are injected: ``deafen()`` silently drops what the server sends (the client's socket
stays open and hears nothing), ``pause()`` stops reading from the server (its output buffers fill
up), ``resume()`` undoes both. Connections made afterwards are healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Pipe:
    deaf: bool = False
    running: asyncio.Event = field(default_factory=asyncio.Event)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.running.set()


class TcpProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.port = 0
        self.pipes: list[_Pipe] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for p in self.pipes:
            for w in p.writers:
                w.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def deafen(self) -> None:
        for p in self.pipes:
            p.deaf = True

    def pause(self) -> None:
        for p in self.pipes:
            p.running.clear()

    def resume(self) -> None:
        for p in self.pipes:
            p.deaf = False
            p.running.set()

    async def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await asyncio.open_connection(*self.target)
        except OSError:
            cw.close()
            return
        pipe = _Pipe(writers=[cw, sw])
        self.pipes.append(pipe)
        loop = asyncio.get_running_loop()
        for coro in (self._copy(cr, sw, pipe, False), self._copy(sr, cw, pipe, True)):
            t = loop.create_task(coro)
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _copy(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, pipe: _Pipe, downstream: bool
    ) -> None:
        try:
            while True:
                if downstream:
                    await pipe.running.wait()
                data = await src.read(65536)
                if not data:
                    break
                if downstream and pipe.deaf:
                    continue
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in pipe.writers:
                w.close()
