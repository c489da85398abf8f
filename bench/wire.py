"""Minimal client wire code for ``hubbub bench``: WebSocket and SSE subscribers as asyncio protocols.

Written for throughput on the load generator's side, not for general use: frames are parsed with
a few slices per frame, timestamps are taken once per ``data_received`` call, and nothing is
validated beyond what counting needs. Three dialects share the code:

* ``hubbub``: ``/v1/ws`` (``welcome``, then ``subscribe`` with an ``id``, positions are the room
  offsets of ``message`` frames) or ``/v1/rooms/{room}/events`` (SSE, positions from ``data:``).
* ``plain``: a bare broadcast server (``bench/ws_server.py``): ``/sub?room=R``, every text frame is
  the publisher's JSON payload, positions are the publisher's sequence numbers.
* ``socketio``: Engine.IO 4 over WebSocket (``bench/sio_server.py``): ``42["m",payload]``.

The reconnect storm's clients (:mod:`hubbub.bench.storm_client`) and the soak's followers and
WebSocket publisher (:mod:`hubbub.bench.soak_clients`, :mod:`hubbub.bench.soak_publish`) are
subclasses of :class:`Subscriber`: they change the request (:meth:`~Subscriber.target`,
:meth:`~Subscriber.extra_headers`) and what is done with the stream (:meth:`~Subscriber.on_open`,
:meth:`~Subscriber.on_text`, :meth:`~Subscriber.on_sse`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from array import array
from collections.abc import Callable
from typing import Any

import orjson

DIALECTS = ("hubbub", "plain", "socketio")


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (RFC 6455 §5.3: clients must mask)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    if n:
        k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
        masked = (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big")
    else:
        masked = b""
    return head + key + masked


class Tally:
    """What one load-generator process counts, shared by all its connections."""

    __slots__ = ("deliveries", "last_at", "latencies_us", "on_progress")

    def __init__(self, on_progress: Callable[[int], None] | None = None) -> None:
        self.deliveries = 0
        self.last_at = 0
        self.latencies_us = array("q")
        self.on_progress = on_progress


class Subscriber(asyncio.Protocol):
    """One subscriber connection (WebSocket or SSE) in one room.

    ``ready`` resolves once the subscription is live; ``start`` is then the room position the
    subscription began after. ``uniq``/``dup`` count publications after ``start`` (positions must
    only grow on one connection: an old one again is a duplicate).
    """

    def __init__(
        self, kind: str, dialect: str, host: str, port: int, room: str, key: str, tally: Tally
    ) -> None:
        self.kind = kind
        self.dialect = dialect
        self.host, self.port, self.room, self.key = host, port, room, key
        self.tally = tally
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.headers_done = False
        self.start = 0
        self.last = 0
        self.uniq = 0
        self.dup = 0
        self.closed_code: int | None = None
        self.chunk_left = -1  # SSE: bytes left in the current HTTP chunk (-1: read a size line)
        self.sse = bytearray()

    # ---- connection --------------------------------------------------------------------------
    def target(self) -> str:
        """The request's path and query (a subclass may ask for another one)."""
        if self.kind == "sse":
            return f"/v1/rooms/{self.room}/events"
        return {
            "hubbub": "/v1/ws",
            "plain": f"/sub?room={self.room}",
            "socketio": "/socket.io/?EIO=4&transport=websocket",
        }[self.dialect]

    def extra_headers(self) -> str:
        """More request header lines, each ending with CRLF (a subclass's; none here)."""
        return ""

    def request(self) -> bytes:
        auth = f"Authorization: Bearer {self.key}\r\n" if self.key else ""
        head = f"GET {self.target()} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if self.kind == "sse":
            return f"{head}Accept: text/event-stream\r\n{auth}{self.extra_headers()}\r\n".encode()
        wskey = base64.b64encode(os.urandom(16)).decode()
        return (
            f"{head}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {wskey}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{auth}{self.extra_headers()}\r\n"
        ).encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        transport.write(self.request())  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed_code is None:
            self.closed_code = 1006
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost before ready: {exc}"))

    def send_text(self, text: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(mask_frame(0x1, text))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # ---- input -------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.headers_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:end]).split(b"\r\n", 1)[0]
            if b" 101 " not in status and b" 200 " not in status:
                self.closed_code = -1
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(status.decode("latin-1")))
                self.close()
                return
            del buf[: end + 4]
            self.headers_done = True
            self.on_open()
        before = self.tally.deliveries
        if self.kind == "ws":
            self._frames()
        else:
            self._chunks()
        if self.tally.deliveries != before and self.tally.on_progress is not None:
            self.tally.on_progress(self.tally.deliveries)

    def on_open(self) -> None:
        """The response head was accepted (101 or 200); frames or events follow. A plain
        broadcast server's subscription is live from here."""
        if self.kind == "ws" and self.dialect == "plain":
            self.ready.set_result(None)

    def _frames(self) -> None:
        buf = self.buf
        n = len(buf)
        pos = 0
        texts: list[bytes] = []
        while n - pos >= 2:
            b0 = buf[pos]
            ln = buf[pos + 1] & 0x7F
            at = pos + 2
            if ln == 126:
                if n - at < 2:
                    break
                ln = (buf[at] << 8) | buf[at + 1]
                at += 2
            elif ln == 127:
                if n - at < 8:
                    break
                ln = int.from_bytes(buf[at : at + 8], "big")
                at += 8
            if n - at < ln:
                break
            op = b0 & 0x0F
            payload = bytes(buf[at : at + ln])
            pos = at + ln
            if op == 0x1:
                texts.append(payload)
            elif op == 0x8:
                self.closed_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.close()
            elif op == 0x9 and self.transport is not None:
                self.transport.write(mask_frame(0xA, payload))
        if pos:
            del buf[:pos]
        if texts:
            now = time.monotonic_ns()
            for t in texts:
                self.on_text(t, now)

    def _chunks(self) -> None:
        """De-chunk the HTTP body (uvicorn streams SSE with chunked encoding), then split events."""
        buf = self.buf
        out = self.sse
        while True:
            left = self.chunk_left
            if left < 0:  # a chunk-size line
                eol = buf.find(b"\r\n")
                if eol < 0:
                    break
                size = int(bytes(buf[:eol]).split(b";")[0] or b"0", 16)
                del buf[: eol + 2]
                if size == 0:
                    self.closed_code = 0
                    self.close()
                    return
                self.chunk_left = size
            elif left == 0:  # the CRLF after a chunk
                if len(buf) < 2:
                    break
                del buf[:2]
                self.chunk_left = -1
            else:
                if not buf:
                    break
                take = min(left, len(buf))
                out += buf[:take]
                del buf[:take]
                self.chunk_left = left - take
        end = out.rfind(b"\n\n")
        if end < 0:
            return
        events = bytes(out[:end]).split(b"\n\n")
        del out[: end + 2]
        now = time.monotonic_ns()
        for ev in events:
            self.on_sse(ev, now)

    def on_sse(self, ev: bytes, now: int) -> None:
        # Hubbub writes ``id:``, ``event:``, ``data:`` in that order, one line each (compact
        # JSON), so the data is the event's last line: find it instead of splitting lines.
        at = ev.find(b"data: ")
        if at < 0:
            if not self.ready.done():
                at = ev.find(b"id: ")
                if at >= 0:
                    ident = ev[at + 4 :].split(b"\n", 1)[0]
                    self.start = self.last = int(ident.rsplit(b".", 1)[-1])
                    self.ready.set_result(None)
            return
        if ev.startswith(b'{"type":"message"', at + 6):
            obj = orjson.loads(ev[at + 6 :])
            self.count(obj["offset"], obj["data"]["t"], now)

    def on_text(self, text: bytes, now: int) -> None:
        d = self.dialect
        if d == "hubbub":
            if text.startswith(b'{"type":"message"'):
                obj = orjson.loads(text)
                self.count(obj["offset"], obj["data"]["t"], now)
                return
            obj = orjson.loads(text)
            kind = obj.get("type")
            if kind == "welcome":
                self.send_text(b'{"type":"subscribe","room":"%s","id":1}' % self.room.encode())
            elif kind == "reply" and obj.get("id") == 1:
                self.start = self.last = int(obj["result"]["offset"])
                self.ready.set_result(None)
            elif kind == "ping":
                self.send_text(b'{"type":"pong"}')
            elif kind == "error" and not self.ready.done():
                self.ready.set_exception(ConnectionError(text.decode()))
        elif d == "plain":
            obj = orjson.loads(text)
            self.count(obj["s"], obj["t"], now)
        else:
            if text.startswith(b"42"):
                obj = orjson.loads(text[2:])[1]
                self.count(obj["s"], obj["t"], now)
            elif text.startswith(b"0{"):
                self.send_text(b"40")
            elif text.startswith(b"40"):
                self.send_text(b'421["join","%s"]' % self.room.encode())
            elif text.startswith(b"431"):
                self.ready.set_result(None)
            elif text == b"2":
                self.send_text(b"3")

    def count(self, position: int, sent_ns: int, now: int) -> None:
        if position > self.last:
            self.last = position
            self.uniq += 1
        else:
            self.dup += 1
        tally = self.tally
        tally.deliveries += 1
        tally.last_at = now
        tally.latencies_us.append((now - sent_ns) // 1000)


async def open_subscriber(
    kind: str, dialect: str, host: str, port: int, room: str, key: str, tally: Tally
) -> Subscriber:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(
        lambda: Subscriber(kind, dialect, host, port, room, key, tally), host, port
    )
    return proto


def summary(subs: list[Subscriber]) -> list[tuple[str, int, int, int, int | None]]:
    """Per subscriber: (room, start, unique, duplicated, close code or None)."""
    out: list[tuple[str, int, int, int, int | None]] = []
    for s in subs:
        out.append((s.room, s.start, s.uniq, s.dup, s.closed_code))
    return out


def payload_maker(size: int) -> Callable[[int, str], dict[str, Any]]:
    """``make(seq, room)`` builds a publication ``data`` of about ``size`` encoded bytes with the
    send time (``t``, CLOCK_MONOTONIC ns, shared by every process on the machine) stamped in."""
    probe = orjson.dumps({"t": time.monotonic_ns(), "s": 1000000, "r": "room-00", "p": ""})
    pad = "x" * max(0, size - len(probe))

    def make(seq: int, room: str) -> dict[str, Any]:
        return {"t": time.monotonic_ns(), "s": seq, "r": room, "p": pad}

    return make
