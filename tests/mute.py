"""Clients that never read what they asked for, on raw sockets with a small receive buffer:
what a node sends them fills its own buffers, as a hostile or stuck client would make it."""

from __future__ import annotations

import base64
import json
import os
import socket
from typing import Any

from hubbub.bench.wire import mask_frame


def quiet_socket(port: int) -> socket.socket:
    """A blocking TCP connection to 127.0.0.1:``port`` with a 4 KiB receive buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def sse_not_reading(port: int, room: str, token: str) -> socket.socket:
    """An SSE stream resuming ``room`` from offset 0 whose client never reads."""
    sock = quiet_socket(port)
    sock.sendall(
        f"GET /v1/rooms/{room}/events?since=0&token={token} HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    return sock


def ws_not_reading(port: int, token: str, frame: dict[str, Any]) -> socket.socket:
    """A WebSocket client that sends ``frame`` and reads nothing after the upgrade's response
    headers (asserted to be 101)."""
    sock = quiet_socket(port)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /v1/ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .encode()
    )  # fmt: skip
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1024)
        assert chunk, "the node closed the upgrade"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head[:200]
    sock.sendall(mask_frame(0x1, json.dumps(frame).encode()))
    return sock
