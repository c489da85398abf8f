"""Reference server: a bare ``websockets`` broadcast server (what users would write instead).

``/sub?room=R`` subscribes a connection to room R; every text frame sent on ``/pub`` is a JSON
payload with ``"r": room`` and is handed, as is, to ``websockets.broadcast()`` for that room's
subscribers (encoded once, framed per connection, no queue, no task per subscriber).

    python bench/ws_server.py PORT
"""

from __future__ import annotations

import asyncio
import sys
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection, broadcast, serve

rooms: dict[str, set[ServerConnection]] = {}


async def handler(ws: ServerConnection) -> None:
    url = urlsplit(ws.request.path if ws.request else "/")
    if url.path == "/pub":
        async for msg in ws:
            room = orjson.loads(msg)["r"]
            broadcast(rooms.get(room, ()), msg)
        return
    room = parse_qs(url.query).get("room", ["default"])[0]
    members = rooms.setdefault(room, set())
    members.add(ws)
    try:
        await ws.wait_closed()
    finally:
        members.discard(ws)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=2**20,
                     ping_interval=None):  # fmt: skip
        print(f"ws_server ready on {port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main(int(sys.argv[1])))
    except ImportError:
        asyncio.run(main(int(sys.argv[1])))
