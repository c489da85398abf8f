"""A minimal signaling test client over a real ``websockets`` connection."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import websockets

from tests.conftest import token as make_token

OPEN: list[Client] = []  # closed by tests/signaling/conftest.py before the nodes stop


async def close_all() -> None:
    """Close every client still open (a node with no sessions stops without a drain wait)."""
    clients = OPEN[:]
    OPEN.clear()
    await asyncio.gather(*(c.conn.close() for c in clients), return_exceptions=True)


class Client:
    """One hub session. ``call`` sends a frame with an id and returns its reply or error;
    anything else read meanwhile is kept in ``frames`` (``raw`` keeps every text received)."""

    def __init__(self, conn: Any, welcome: dict[str, Any], raw: list[str]) -> None:
        self.conn = conn
        self.welcome = welcome
        self.session: str = welcome["session"]
        self.frames: list[dict[str, Any]] = []
        self.raw = raw
        self._ids = itertools.count(1)

    @classmethod
    async def open(
        cls, url: str, sub: str = "alice", tok: str | None = None, **claims: Any
    ) -> Client:
        tok = tok or make_token(sub, **claims)
        conn = await websockets.connect(
            url, additional_headers={"Authorization": f"Bearer {tok}"}, max_size=2**22
        )
        text = await asyncio.wait_for(conn.recv(), 5)
        welcome = json.loads(text)
        assert welcome["type"] == "welcome", welcome
        client = cls(conn, welcome, [str(text)])
        OPEN.append(client)
        return client

    async def recv(self, within: float = 5.0) -> dict[str, Any]:
        text = await asyncio.wait_for(self.conn.recv(), within)
        self.raw.append(str(text))
        frame: dict[str, Any] = json.loads(text)
        return frame

    async def call(self, frame: dict[str, Any], within: float = 5.0) -> dict[str, Any]:
        fid = next(self._ids)
        await self.conn.send(json.dumps({**frame, "id": fid}, ensure_ascii=False))
        while True:
            f = await self.recv(within)
            if f.get("id") == fid and f["type"] in ("reply", "error"):
                return f
            self.frames.append(f)

    async def ok(self, frame: dict[str, Any]) -> dict[str, Any]:
        f = await self.call(frame)
        assert f["type"] == "reply", f
        result: dict[str, Any] = f["result"]
        return result

    async def error(self, frame: dict[str, Any]) -> str:
        f = await self.call(frame)
        assert f["type"] == "error", f
        return str(f["code"])

    async def join(self, room: str, presence: bool = True) -> dict[str, Any]:
        return await self.ok({"type": "subscribe", "room": room, "presence": presence})

    async def signal(self, room: str, to: str, data: Any) -> dict[str, Any]:
        return await self.call({"type": "signal", "room": room, "to": to, "data": data})

    async def next(self, kind: str, within: float = 5.0) -> dict[str, Any]:
        """The next frame of type ``kind`` (kept frames first); pings are skipped."""
        for i, f in enumerate(self.frames):
            if f["type"] == kind:
                return self.frames.pop(i)
        while True:
            f = await self.recv(within)
            if f["type"] == kind:
                return f
            if f["type"] != "ping":
                self.frames.append(f)

    async def nothing(self, kind: str, within: float = 0.3) -> None:
        """Assert no frame of type ``kind`` arrives within ``within`` seconds."""
        assert not any(f["type"] == kind for f in self.frames), self.frames
        try:
            while True:
                f = await self.recv(within)
                assert f["type"] != kind, f
                self.frames.append(f)
        except TimeoutError:
            return

    async def close(self) -> None:
        await self.conn.close()
