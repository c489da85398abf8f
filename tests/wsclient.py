"""The suite's one WebSocket test client, over a real ``websockets`` connection.

``WS.connect(url, token)`` passes the token in the query (or nothing, or whatever ``**kw``
gives ``websockets.connect``: headers, origin, limits); ``WS.open(url, sub, **claims)`` mints a
token for ``sub`` and sends it as ``Authorization: Bearer``. Both wait for ``welcome`` unless
told not to. Every client is remembered until :func:`close_all` (called by the ``node_factory``
fixture before its nodes stop, so they stop at once instead of draining open sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import weakref
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from tests.conftest import token as make_token

_OPEN: weakref.WeakSet[WS] = weakref.WeakSet()


async def close_all() -> None:
    """Close every client still open."""
    clients = list(_OPEN)
    _OPEN.clear()
    await asyncio.gather(*(c.conn.close() for c in clients), return_exceptions=True)


class WS:
    """One connection. ``call`` sends a frame with a fresh id and returns its ``reply`` or
    ``error``; other frames read meanwhile wait in ``inbox`` for :meth:`next`. With
    ``record=True`` every text received is also kept in ``raw``."""

    def __init__(self, conn: ClientConnection, *, record: bool = False) -> None:
        self.conn = conn
        self.inbox: list[dict[str, Any]] = []
        self.raw: list[str] | None = [] if record else None
        self.welcome: dict[str, Any] = {}
        self._ids = itertools.count(1)
        _OPEN.add(self)

    @classmethod
    async def connect(
        cls,
        url: str,
        token: str | None = None,
        *,
        welcome: bool = True,
        record: bool = False,
        **kw: Any,
    ) -> WS:
        """Connect with ``token`` in the query (if any); wait for ``welcome`` unless
        ``welcome=False``. ``kw`` goes to ``websockets.connect``."""
        if token is not None:
            url += ("&" if "?" in url else "?") + f"token={token}"
        kw.setdefault("max_size", 2**24)
        ws = cls(await websockets.connect(url, **kw), record=record)
        if welcome:
            ws.welcome = await ws.recv()
            assert ws.welcome["type"] == "welcome", ws.welcome
        return ws

    @classmethod
    async def open(
        cls,
        url: str,
        sub: str = "alice",
        tok: str | None = None,
        *,
        record: bool = False,
        **claims: Any,
    ) -> WS:
        """Connect as ``sub`` (a token minted with ``claims``, or ``tok``) with the token in
        the ``Authorization`` header, and wait for ``welcome``."""
        tok = tok or make_token(sub, **claims)
        return await cls.connect(
            url, additional_headers={"Authorization": f"Bearer {tok}"}, record=record
        )

    @property
    def session(self) -> str:
        """The session id from ``welcome``."""
        return str(self.welcome["session"])

    # ---- frames ------------------------------------------------------------------------------
    async def send(self, obj: Any) -> None:
        """Send ``obj``: text or bytes as they are, anything else as JSON (UTF-8, not escaped,
        so sizes count UTF-8 bytes)."""
        await self.conn.send(
            obj if isinstance(obj, str | bytes) else json.dumps(obj, ensure_ascii=False)
        )

    async def recv(self, timeout: float | None = 5.0) -> dict[str, Any]:
        """The next frame, decoded (``timeout=None``: wait as long as it takes)."""
        raw = await asyncio.wait_for(self.conn.recv(), timeout)
        if self.raw is not None:
            self.raw.append(str(raw))
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

    async def result(self, frame: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """The ``result`` of the reply to ``frame``; fails on an error frame."""
        f = await self.call(frame, timeout)
        assert f["type"] == "reply", f
        res: dict[str, Any] = f["result"]
        return res

    async def error(self, frame: dict[str, Any], timeout: float = 5.0) -> str:
        """The error code answered to ``frame``; fails on a reply."""
        f = await self.call(frame, timeout)
        assert f["type"] == "error", f
        return str(f["code"])

    async def join(self, room: str, presence: bool = True) -> dict[str, Any]:
        """Subscribe to ``room`` (as a presence member by default)."""
        return await self.result({"type": "subscribe", "room": room, "presence": presence})

    async def signal(self, room: str, to: str, data: Any) -> dict[str, Any]:
        """Send a ``signal`` frame; returns its reply or error."""
        return await self.call({"type": "signal", "room": room, "to": to, "data": data})

    async def next(self, type_: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame of ``type_`` (from the inbox first); pings are skipped."""
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

    async def nothing(self, type_: str, timeout: float = 0.3) -> None:
        """Assert that no frame of ``type_`` is in the inbox or arrives within ``timeout``."""
        assert not any(f["type"] == type_ for f in self.inbox), self.inbox
        try:
            while True:
                f = await self.recv(timeout)
                assert f["type"] != type_, f
                self.inbox.append(f)
        except TimeoutError:
            return

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, list[dict[str, Any]]]:
        """Read until the server closes; returns (close code, frames seen)."""
        seen: list[dict[str, Any]] = []
        try:
            while True:
                seen.append(await self.recv(timeout))
        except websockets.ConnectionClosed as exc:
            return (exc.rcvd.code if exc.rcvd else None), seen

    async def flood(
        self, frame: dict[str, Any], *, every: float = 0.002, within: float = 30.0
    ) -> tuple[int | None, str, list[dict[str, Any]]]:
        """Send ``frame`` every ``every`` seconds, reading meanwhile, until the server closes
        the connection (fails after ``within`` seconds). Returns the close code and reason and
        the frames received, each with the monotonic time it arrived as ``"_at"``."""
        text = json.dumps(frame)
        seen: list[dict[str, Any]] = []

        async def read() -> None:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(websockets.ConnectionClosed):
                async for raw in self.conn:
                    seen.append({**json.loads(raw), "_at": loop.time()})

        reader = asyncio.get_running_loop().create_task(read())
        try:
            async with asyncio.timeout(within):
                while not reader.done():
                    try:
                        await self.conn.send(text)
                    except websockets.ConnectionClosed:
                        break
                    await asyncio.sleep(every)
                await reader
        finally:
            reader.cancel()
        rcvd = self.conn.protocol.close_rcvd
        return (rcvd.code if rcvd else None), (rcvd.reason if rcvd else ""), seen

    async def close(self) -> None:
        await self.conn.close()
