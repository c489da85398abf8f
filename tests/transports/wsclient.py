"""A small test client over a real ``websockets`` connection."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection


class WS:
    """Wraps a connection: ``call`` sends a frame with an id and returns its reply/error;
    frames that arrive meanwhile are kept in ``inbox``."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.inbox: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def connect(
        cls, url: str, token: str | None = None, *, welcome: bool = True, **kw: Any
    ) -> WS:
        if token is not None:
            url += ("&" if "?" in url else "?") + f"token={token}"
        conn = await websockets.connect(url, max_size=2**24, **kw)
        ws = cls(conn)
        if welcome:
            ws.welcome = await ws.recv()
            assert ws.welcome["type"] == "welcome", ws.welcome
        return ws

    async def send(self, obj: Any) -> None:
        await self.conn.send(obj if isinstance(obj, str | bytes) else json.dumps(obj))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.recv(), timeout)
        frame: dict[str, Any] = json.loads(raw)
        return frame

    async def call(self, frame: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Send ``frame`` with a fresh id; return the matching reply or error frame."""
        fid = next(self._ids)
        await self.send({**frame, "id": fid})
        while True:
            f = await self.recv(timeout)
            if f.get("id") == fid and f["type"] in ("reply", "error"):
                return f
            self.inbox.append(f)

    async def result(self, frame: dict[str, Any]) -> dict[str, Any]:
        f = await self.call(frame)
        assert f["type"] == "reply", f
        res: dict[str, Any] = f["result"]
        return res

    async def next(self, type_: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame of ``type_`` (from the inbox first); skips pings."""
        for i, f in enumerate(self.inbox):
            if f["type"] == type_:
                return self.inbox.pop(i)
        while True:
            f = await self.recv(timeout)
            if f["type"] == type_:
                return f
            if f["type"] != "ping":
                self.inbox.append(f)

    async def messages(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        return [await self.next("message", timeout) for _ in range(n)]

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, list[dict[str, Any]]]:
        """Read until the server closes; returns (close code, frames seen)."""
        seen: list[dict[str, Any]] = []
        try:
            while True:
                seen.append(await self.recv(timeout))
        except websockets.ConnectionClosed as exc:
            return (exc.rcvd.code if exc.rcvd else None), seen

    async def close(self) -> None:
        await self.conn.close()
