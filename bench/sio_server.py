"""Reference server: python-socketio (ASGI) on uvicorn, rooms and ``emit`` to a room.

Clients emit ``join`` (with an ack) to enter a room; the publisher emits ``pub`` with a payload
carrying ``"r": room`` and the server emits it as ``m`` to that room.

    python bench/sio_server.py PORT
"""

from __future__ import annotations

import sys
from typing import Any

import socketio
import uvicorn

sio = socketio.AsyncServer(async_mode="asgi")


@sio.on("join")
async def join(sid: str, room: str) -> bool:
    await sio.enter_room(sid, room)
    return True


@sio.on("pub")
async def pub(sid: str, data: dict[str, Any]) -> None:
    await sio.emit("m", data, room=data["r"])


app = socketio.ASGIApp(sio)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                ws_per_message_deflate=False)  # fmt: skip
