"""What an SSE stream writes, as bytes: blocks (WHATWG HTML §9.2), built once per item.

Queue items become blocks by their type and kind alone (:func:`control_block`): a publication
is an ``event: <its event or message>`` whose ``data:`` is its WebSocket frame; ``ping`` is the
``: ping`` comment; ``join``/``leave``/``presence`` are ``hub.join``/``hub.leave``/
``hub.presence``; ``gap`` is ``hub.gap``, whose ``id:`` moves the cursor; other control frames
(replies, errors…) are not for SSE and are dropped.

Two encoders (:class:`hubbub.transports.direct.Encoder`): a one-room stream's blocks are the same
bytes for every subscriber (its cursor is the event's own position), so :data:`blocks`, one
:class:`BlockCache` shared by every stream, builds each item's block and HTTP chunk once; a
multi-room stream's cursor names every room, so its :class:`Cursor` builds its own blocks. The
rest are the other blocks a stream writes: the farewell, and the piecing of queued batches into
writes when the ASGI ``send`` carries them.
"""

from __future__ import annotations

import random

import orjson

from hubbub.hub.envelope import Position, Publication, make_cursor
from hubbub.hub.errors import CLOSE_EXPIRED, Disconnect
from hubbub.hub.session import GAP, JOIN, LEAVE, PING, PRESENCE, Control, Item
from hubbub.transports.direct import WRITE_PIECE
from hubbub.transports.server import http_chunk

SEP = "\n"
PING_BLOCK = b": ping\n\n"


def retry_hint(settings_ms: int) -> int:
    """A reconnect delay with jitter, so a drained node's clients do not return all at once."""
    return settings_ms + random.randint(0, settings_ms)


def block(*, event: str | None = None, data: str | None = None, id_: str | None = None,
           retry: int | None = None) -> str:  # fmt: skip
    """One SSE block (WHATWG HTML §9.2). ``data`` is compact JSON: it never holds a raw CR/LF,
    and ids are hub-issued cursors, so nothing the client sent is echoed into the stream."""
    lines = []
    if retry is not None:
        lines.append(f"retry: {retry}")
    if id_ is not None:
        lines.append(f"id: {id_}")
    if event is not None:
        lines.append(f"event: {event}")
    if data is not None:
        lines.append(f"data: {data}")
    return SEP.join(lines) + SEP + SEP


def pub_block(cursor: str | None, event: str, frame: bytes) -> bytes:
    """The block of one publication: ``data:`` is its WebSocket frame, byte for byte."""
    head = f"id: {cursor}\nevent: {event}\ndata: " if cursor else f"event: {event}\ndata: "
    return head.encode() + frame + b"\n\n"


def control_block(item: Control) -> bytes | None:
    """The block of a control frame that needs no cursor (None: not for SSE; gaps are the
    encoders' own)."""
    kind = item.kind
    if kind == PING.kind:
        return PING_BLOCK
    if kind in (JOIN, LEAVE, PRESENCE):
        return block(event=f"hub.{kind}", data=item.text).encode()
    return None


def gap_block(cursor: str, item: Control) -> bytes:
    return block(id_=cursor, event="hub.gap", data=item.text).encode()


def gap_position(item: Control) -> tuple[str, Position]:
    """The room a ``gap`` frame is about and the position it moves the client to."""
    frame = item.decoded()
    return str(frame["room"]), Position(str(frame["epoch"]), int(frame["to"]))


class BlockCache:
    """The blocks of one-room streams, the same bytes for every subscriber, built once per item
    (the fan-out offers one item to all its sessions in a row, so one entry is enough).

    ``item`` is the cached item; ``data`` its block; ``chunk`` that block framed as an HTTP
    chunk. For a publication also ``part``, its room's part of the cursor (empty when ephemeral)
    and ``event``, its SSE event name, which a multi-room stream's :class:`Cursor` reuses."""

    __slots__ = ("chunk", "data", "event", "item", "part")

    def __init__(self) -> None:
        self.item: Item | None = None
        self.part = self.event = ""
        self.data = self.chunk = b""

    def encode(self, item: Item) -> bytes | None:
        """Make ``item`` the cached item; its block, or None (not for SSE, nothing cached)."""
        if isinstance(item, Publication):
            self.event = event = item.event or "message"
            if item.offset is None or item.epoch is None:
                self.part = ""
            else:
                self.part = make_cursor({item.room: Position(item.epoch, item.offset)})
            data = pub_block(self.part, event, item.frame)
        elif item.kind == GAP:
            room, pos = gap_position(item)
            data = gap_block(make_cursor({room: pos}), item)
        else:
            encoded = control_block(item)
            if encoded is None:
                return None
            data = encoded
        self.data, self.chunk, self.item = data, http_chunk(data), item
        return data


blocks = BlockCache()


class Cursor:
    """What the client of one stream has, per room (``positions``), as the one cursor that
    resumes every room at once (:meth:`text`, each event's ``id:``); and the encoder of a
    multi-room stream's items, whose cursors move as its events are written. ``item`` is
    always None: nothing it builds is shared."""

    __slots__ = ("data", "item", "parts", "positions")

    def __init__(self) -> None:
        self.positions: dict[str, Position] = {}
        self.parts: dict[str, str] = {}  # room -> its part of the cursor (one hash per event)
        self.item: Item | None = None
        self.data = b""

    def move(self, room: str, pos: Position) -> None:
        self.positions[room] = pos
        self.parts[room] = make_cursor({room: pos})

    def order(self, rooms: list[str]) -> None:
        """Keep the rooms in ``rooms``' order (the order of the cursor's parts)."""
        self.positions = {r: self.positions[r] for r in rooms if r in self.positions}

    def text(self) -> str:
        """The cursor of every room (what ``make_cursor(positions)`` gives, without hashing
        again the rooms that did not move)."""
        return "~".join(self.parts[room] for room in self.positions)

    def encode(self, item: Item) -> bytes | None:
        """``item``'s block in this stream, moving the cursor; None when not for SSE."""
        if isinstance(item, Publication):
            cache = blocks
            if item is not cache.item:
                cache.encode(item)
            if not cache.part:  # ephemeral: no position, the shared block
                return cache.data
            assert item.epoch is not None and item.offset is not None
            self.positions[item.room] = Position(item.epoch, item.offset)
            self.parts[item.room] = cache.part
            return pub_block(self.text(), cache.event, item.frame)
        if item.kind == GAP:
            room, pos = gap_position(item)
            if room in self.positions:
                self.move(room, pos)
            return gap_block(self.text(), item)
        return control_block(item)


def farewell(closed: Disconnect, retry_ms: int) -> str:
    """The last event of a stream ended by ``closed``: ``hub.expired`` or ``hub.disconnect``
    (with a ``retry:`` hint with jitter when the client should come back)."""
    if closed.code == CLOSE_EXPIRED:
        data = {"type": "expired", "code": closed.code, "reason": closed.reason}
        return block(event="hub.expired", data=orjson.dumps(data).decode())
    data = {"type": "disconnect", "code": closed.code, "reason": closed.reason,
            "reconnect": closed.reconnect}  # fmt: skip
    retry = retry_hint(retry_ms) if closed.reconnect else None
    return block(event="hub.disconnect", data=orjson.dumps(data).decode(), retry=retry)


def pieces(blocks: list[bytes]) -> list[bytes]:
    """Join blocks into pieces of about ``WRITE_PIECE`` bytes (one chunk, one write each)."""
    if len(blocks) == 1:
        return blocks
    out: list[bytes] = []
    run: list[bytes] = []
    size = 0
    for b in blocks:
        run.append(b)
        size += len(b)
        if size >= WRITE_PIECE:
            out.append(b"".join(run))
            run, size = [], 0
    if run:
        out.append(b"".join(run))
    return out
