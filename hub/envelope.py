"""Publications, frames and cursors: validation, size limits, and encoding once.

A publication is encoded to JSON bytes **once per node**: the broker carries a ``body`` (the
``message`` frame without ``offset``/``epoch``), and :attr:`Publication.frame` splices those two in
once. Every subscriber, on every transport, gets the very same bytes (PROTOCOL.md §3 ``message``,
§4 ``data:``).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from hubbub.hub.errors import BadRequest, TooLarge

ROOM_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
EVENT_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
EPOCH_RE = re.compile(r"[A-Za-z0-9]{1,16}")
CURSOR_RE = re.compile(r"[A-Za-z0-9_.~-]{1,1024}")
MAX_DEPTH = 64


def check_room(room: Any) -> str:
    """Return ``room`` if it is a valid room name (PROTOCOL.md §1), else raise BadRequest."""
    if not isinstance(room, str) or not ROOM_RE.fullmatch(room) or room.strip(".") == "":
        shown = room[:64] if isinstance(room, str) else type(room).__name__
        raise BadRequest(
            "room must match ^[A-Za-z0-9_.:-]{1,128}$ and not be only dots",
            details={"room": repr(shown)},
        )
    return room


def check_event(event: Any) -> str | None:
    """Validate an optional publication ``event`` name; raise BadRequest when malformed."""
    if event is None:
        return None
    if not isinstance(event, str) or not EVENT_RE.fullmatch(event) or event.startswith("hub."):
        raise BadRequest("event must match ^[A-Za-z0-9_.:-]{1,64}$ and not start with hub.")
    return event


def _depth_ok(value: Any, limit: int = MAX_DEPTH) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in item)
    return True


def encode_data(data: Any, max_bytes: int) -> bytes:
    """Encode publication ``data`` to JSON, enforcing the size limit (PROTOCOL.md §3 limits).

    Raises TooLarge over ``max_bytes`` and BadRequest for what JSON cannot carry (too deep,
    integers beyond 64 bits, non-string keys).
    """
    if not _depth_ok(data):
        raise BadRequest(f"data nested deeper than {MAX_DEPTH} levels")
    try:
        raw = orjson.dumps(data)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise BadRequest(f"data cannot be encoded as JSON: {str(exc)[:80]}") from None
    if len(raw) > max_bytes:
        raise TooLarge(
            f"data is {len(raw)} bytes; the limit is {max_bytes}",
            details={"limit": max_bytes, "size": len(raw)},
        )
    return raw


class BadString(BadRequest):
    """A JSON string that cannot be Unicode text (a lone surrogate escape)."""


def parse_frame(text: str | bytes) -> dict[str, Any]:
    """Parse one client frame. Raises BadRequest for anything that is not a JSON object with a
    string ``type`` (the WebSocket transport turns that into close 4500). A lone surrogate
    escape in a string raises :class:`BadString` (an ``error`` frame, not a close)."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if "surrogate" in str(exc):
            # Well-formed JSON text, but a string escapes half a UTF-16 pair: the frame is
            # refused with an error, the connection stays (hardening case 20).
            raise BadString("a string holds a lone surrogate escape") from None
        raise BadRequest("frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise BadRequest("frame must be a JSON object")
    if not isinstance(obj.get("type"), str):
        raise BadRequest("frame needs a string type")
    return obj


def now_ms() -> int:
    return int(time.time() * 1000)


def make_body(
    room: str,
    data_json: bytes,
    *,
    event: str | None = None,
    sender: dict[str, str] | None = None,
    ts: int | None = None,
) -> bytes:
    """Encode the offset-less part of a ``message`` frame: ``{"room",…,"data","ts"}``.

    ``data_json`` is already-encoded JSON, spliced in without a re-encode.
    """
    head: dict[str, Any] = {"type": "message", "room": room}
    if event is not None:
        head["event"] = event
    if sender is not None:
        head["from"] = sender
    head["ts"] = now_ms() if ts is None else ts
    enc = orjson.dumps(head)
    return enc[:-1] + b',"data":' + data_json + b"}"


@dataclass(slots=True)
class Publication:
    """One message in a room as a node sees it.

    ``offset``/``epoch`` are None for ephemeral publications. ``body`` is the frame without
    position; :attr:`frame` is the full ``message`` frame, built once and shared.
    """

    room: str
    offset: int | None
    epoch: str | None
    body: bytes
    _frame: bytes | None = field(default=None, repr=False)
    _text: str | None = field(default=None, repr=False)
    _decoded: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def frame(self) -> bytes:
        f = self._frame
        if f is None:
            if self.offset is None:
                f = self.body
            else:
                pos = b'{"type":"message","offset":%d,"epoch":"%s",' % (
                    self.offset,
                    (self.epoch or "").encode(),
                )
                f = pos + self.body[len(b'{"type":"message",') :]
            self._frame = f
        return f

    @property
    def text(self) -> str:
        """The frame as ``str`` (ASGI text frames need str), decoded once."""
        t = self._text
        if t is None:
            t = self._text = self.frame.decode()
        return t

    @property
    def kind(self) -> str:
        """``message``, ``join`` or ``leave`` (from the frame's leading type field)."""
        b = self.body
        if b.startswith(b'{"type":"message"'):
            return "message"
        if b.startswith(b'{"type":"join"'):
            return "join"
        if b.startswith(b'{"type":"leave"'):
            return "leave"
        return "other"

    @property
    def event(self) -> str | None:
        """The publisher's event name (decoded lazily; used by SSE only)."""
        ev = self.decoded().get("event")
        return ev if isinstance(ev, str) else None

    def decoded(self) -> dict[str, Any]:
        if self._decoded is None:
            self._decoded = orjson.loads(self.frame)
        return self._decoded


def frame_bytes(obj: dict[str, Any]) -> bytes:
    """Encode a control frame (reply, error, join, gap …)."""
    return orjson.dumps(obj)


# ---- cursors ---------------------------------------------------------------------------------
#
# A cursor names one position per room: ``<roomhash>.<epoch>.<offset>`` joined by ``~``.
# ``roomhash`` is 8 base64url characters of BLAKE2b(room) so that 32 rooms of 128 characters
# still fit in 1024 characters. It is opaque to clients (PROTOCOL.md §1).


def room_hash(room: str) -> str:
    digest = hashlib.blake2b(room.encode(), digest_size=6).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class Position:
    """``{"epoch", "offset"}``: everything up to and including ``offset`` of ``epoch``.

    ``epoch`` None means "the current epoch, whatever it is" (a bare offset from SSE ``since``).
    """

    epoch: str | None
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset}


def make_cursor(positions: dict[str, Position]) -> str:
    """Encode the positions of one or more rooms as one cursor string."""
    return "~".join(
        f"{room_hash(room)}.{pos.epoch or '0'}.{pos.offset}" for room, pos in positions.items()
    )


def parse_cursor(cursor: str, rooms: list[str]) -> dict[str, Position]:
    """Decode a cursor for the given rooms. Rooms the cursor does not mention are absent.

    Raises BadRequest when the cursor is malformed.
    """
    if not isinstance(cursor, str) or not CURSOR_RE.fullmatch(cursor):
        raise BadRequest("malformed cursor")
    by_hash = {room_hash(r): r for r in rooms}
    out: dict[str, Position] = {}
    for part in cursor.split("~"):
        pieces = part.split(".")
        if len(pieces) != 3:
            raise BadRequest("malformed cursor")
        h, epoch, off = pieces
        if not EPOCH_RE.fullmatch(epoch) or not off.isdigit() or len(off) > 18:
            raise BadRequest("malformed cursor")
        room = by_hash.get(h)
        if room is not None:
            out[room] = Position(epoch, int(off))
    return out


def parse_since(since: Any, rooms: list[str]) -> dict[str, Position]:
    """Accept a ``since`` given as a position object, a cursor, or a bare offset.

    A position object or bare offset applies to every room asked for. Raises BadRequest.
    """
    if isinstance(since, dict):
        epoch, offset = since.get("epoch"), since.get("offset")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise BadRequest("since.offset must be an integer >= 0")
        if epoch is not None and (not isinstance(epoch, str) or len(epoch) > 64):
            raise BadRequest("since.epoch must be a string")
        return {r: Position(epoch, offset) for r in rooms}
    if isinstance(since, int) and not isinstance(since, bool):
        if since < 0:
            raise BadRequest("since must be >= 0")
        return {r: Position(None, since) for r in rooms}
    if isinstance(since, str):
        if since.isascii() and since.isdigit() and len(since) <= 18:
            return {r: Position(None, int(since)) for r in rooms}
        return parse_cursor(since, rooms)
    raise BadRequest("since must be a position object or a cursor string")
