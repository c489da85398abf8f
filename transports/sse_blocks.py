"""What an SSE stream writes, as bytes: blocks (WHATWG HTML §9.2), built once per publication.

:class:`BlockCache` turns the publication being fanned out into its block and HTTP chunk once for
every subscriber (the fan-out offers one publication to all its sessions in a row, so one entry
is enough). The rest are the other blocks a stream writes: control events, the farewell, the
``: ping`` comment, and the piecing of queued batches into writes.
"""

from __future__ import annotations

import random

import orjson

from hubbub.hub.envelope import Position, Publication, make_cursor
from hubbub.hub.errors import CLOSE_EXPIRED, Disconnect
from hubbub.transports.server import http_chunk

SEP = "\n"
PING_BLOCK = b": ping\n\n"
WRITE_PIECE = 64 * 1024  # queued batches are written in chunks of about this size


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


class BlockCache:
    """What a publication becomes on SSE, built once for every subscriber (the fan-out offers
    one publication to all its sessions in a row, so one entry is enough): ``part``, the room's
    part of the cursor (empty for an ephemeral publication); ``block``, the block of a one-room
    stream (whose cursor is that part alone) or of an ephemeral publication; ``chunk``, that
    block framed as an HTTP chunk."""

    __slots__ = ("block", "chunk", "event", "item", "part")

    def __init__(self) -> None:
        self.item: Publication | None = None
        self.part = self.event = ""
        self.block = self.chunk = b""

    def get(self, pub: Publication) -> None:
        """Make ``pub`` the cached publication (the caller checks ``pub is cache.item``)."""
        self.event = pub.event or "message"
        if pub.offset is None or pub.epoch is None:
            self.part = ""
        else:
            self.part = make_cursor({pub.room: Position(pub.epoch, pub.offset)})
        self.block = pub_block(self.part, self.event, pub.frame)
        self.chunk = http_chunk(self.block)
        self.item = pub


blocks = BlockCache()


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
