"""Replies and replays bounded in bytes (PROTOCOL.md §8, ``HUB_MAX_REPLY_BYTES``), on real
nodes: uvicorn on a socket, real WebSocket and HTTP clients, memory:// and two nodes on a real
redis-server (publisher on one, reader on the other).

* A history page (HTTP and WebSocket) stops before the message that would take it past the
  bound, holds at least one message, says ``more: true``, and ``since=cursor`` continues it.
* A replay larger than many pages (WebSocket subscribe with ``since``, SSE ``since`` and
  ``Last-Event-ID``, the multi-room cursor) delivers every message once, in order, with live
  publications arriving while it is written.
* A client that does not read its replay is a slow consumer: WebSocket 4001, SSE stream ended
  with 4001. (The memory figure of the hostile case is tests/ops/test_reply_memory.py.)
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
import pytest

from hubbub.hub.auth import Identity
from hubbub.hub.envelope import Position, make_cursor, parse_cursor
from hubbub.hub.session import Session
from tests.conftest import API_KEY, Node, RedisProc, token
from tests.helpers import until
from tests.mute import quiet_socket, sse_not_reading, ws_not_reading
from tests.transports.test_sse import Event, offsets, sse
from tests.wsclient import WS

BACKEND = Identity(sub="backend", api_key=True, scope="test")
PAGE_BYTES = 4096
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(params=["memory", "redis"])
async def nodes(request: Any, node_factory: Any) -> tuple[Node, Node]:
    """(the publishers' node, the readers' node): one memory:// node twice, or two nodes on
    one redis-server."""
    if request.param == "memory":
        node = await node_factory(max_reply_bytes=PAGE_BYTES)
        return node, node
    redis: RedisProc = request.getfixturevalue("shared_redis")
    kw = {"broker_url": redis.url, "redis_prefix": f"rb{os.urandom(3).hex()}:",
          "max_reply_bytes": PAGE_BYTES}  # fmt: skip
    return await node_factory(**kw), await node_factory(**kw)


async def fill(node: Node, room: str, n: int, size: int = 1000, start: int = 1) -> str:
    """Publish messages ``{"i": start…, "pad": size characters}``; returns the epoch."""
    epoch = ""
    for i in range(start, start + n):
        epoch = (await node.hub.publish(BACKEND, room, {"i": i, "pad": "x" * size}))["epoch"]
    return epoch


async def body_sizes(node: Node, room: str) -> dict[int, int]:
    """Offset → stored body size (what the bound counts)."""
    page = await node.hub.broker.history(room, after=0, limit=1000)
    return {p.offset or 0: len(p.body) for p in page.publications}


def fitting(sizes: dict[int, int], first: int) -> list[int]:
    """The offsets a page starting at ``first`` holds under PAGE_BYTES (at least one)."""
    out: list[int] = []
    total = 0
    for off in range(first, max(sizes) + 1):
        total += sizes[off]
        if total > PAGE_BYTES and out:
            break
        out.append(off)
    return out


class Pager:
    """History pages through HTTP or a WebSocket ``history`` frame."""

    def __init__(self, node: Node, transport: str) -> None:
        self.node = node
        self.transport = transport
        self.ws: WS | None = None

    async def page(self, room: str, **params: Any) -> dict[str, Any]:
        if self.transport == "ws":
            if self.ws is None:
                self.ws = await WS.connect(self.node.ws_url, token("pager"))
            return await self.ws.result({"type": "history", "room": room, **params})
        async with httpx.AsyncClient(base_url=self.node.url, timeout=10) as c:
            r = await c.get(f"/v1/rooms/{room}/messages", params=params, headers=AUTH)
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body


def page_offsets(page: dict[str, Any]) -> list[int]:
    return [m["offset"] for m in page["messages"]]


# ---- history pages ----------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_history_pages_stop_at_the_byte_bound(
    nodes: tuple[Node, Node], transport: str
) -> None:
    writer, reader = nodes
    await fill(writer, "h", 30)
    await fill(writer, "h", 1, size=3 * PAGE_BYTES, start=31)  # larger than a page by itself
    await fill(writer, "h", 9, start=32)
    sizes = await body_sizes(writer, "h")
    pager = Pager(reader, transport)
    # From the start: pages of what fits, each `more`, continued with the cursor.
    seen: list[int] = []
    page = await pager.page("h", since=0, limit=1000)
    assert page_offsets(page) == fitting(sizes, 1) and len(page["messages"]) > 1
    while True:
        got = page_offsets(page)
        assert got == fitting(sizes, got[0])  # what fits, at least one
        assert page["cursor"] == make_cursor({"h": Position(page["epoch"], got[-1])})
        seen += got
        if not page["more"]:
            break
        page = await pager.page("h", since=page["cursor"], limit=1000)
    assert seen == list(range(1, 41))
    # The message larger than the bound comes alone.
    page = await pager.page("h", since=30, limit=1000)
    assert page_offsets(page) == [31] and page["more"] is True
    # The count still bounds a page.
    page = await pager.page("h", since=0, limit=2)
    assert page_offsets(page) == [1, 2] and page["more"] is True
    # Without `since`: the newest `limit`, from the oldest of them, as far as they fit;
    # `since=cursor` continues to the head.
    page = await pager.page("h", limit=8)
    assert page_offsets(page) == fitting(sizes, 33) and page["more"] is True
    seen = page_offsets(page)
    while page["more"]:
        page = await pager.page("h", since=page["cursor"], limit=1000)
        seen += page_offsets(page)
    assert seen == list(range(33, 41))
    page = await pager.page("h", limit=2)  # fits: as before the bound
    assert page_offsets(page) == [39, 40] and page["more"] is True  # (older ones exist)
    if pager.ws is not None:
        await pager.ws.close()


# ---- replays: every message once, in order, live ones arriving meanwhile --------------------
async def _publish_live(node: Node, room: str, start: int, n: int, done: asyncio.Event) -> None:
    for i in range(start, start + n):
        await node.hub.publish(BACKEND, room, {"i": i, "pad": "x" * 1000})
        await asyncio.sleep(0.002)
    done.set()


async def test_ws_replay_of_many_pages_with_live_publications(nodes: tuple[Node, Node]) -> None:
    writer, reader = nodes
    # 6 MB, more than socket buffers hold, in pages of one message (each above PAGE_BYTES).
    epoch = await fill(writer, "r", 400, size=15_000)
    # The client reads nothing until the live publications are out: its socket fills and
    # the replay waits for it, page after page, while they arrive.
    ws = await WS.connect(reader.ws_url, token("bob"), max_queue=2,
                          sock=quiet_socket(reader.port))  # fmt: skip
    await ws.send({"type": "subscribe", "room": "r", "since": {"epoch": epoch, "offset": 0},
                   "id": 1})  # fmt: skip
    session: Session = await until(lambda: next(iter(reader.hub.sessions.values()), None))
    await until(lambda: "r" in session.subs, what="the subscribe to start")
    done = asyncio.Event()
    await _publish_live(writer, "r", 401, 50, done)
    assert session.subs["r"].buffering, "the replay was over before the live publications"
    frames: list[dict[str, Any]] = []
    last = 0
    while last != 450 or "reply" not in [f["type"] for f in frames]:
        frame = await ws.recv()
        if frame["type"] != "ping":
            frames.append(frame)
            last = frame.get("offset", last)
    kinds = [f["type"] for f in frames]
    assert set(kinds) == {"message", "reply"} and kinds.count("reply") == 1
    got = [f["offset"] for f in frames if f["type"] == "message"]
    assert got == list(range(1, 451))
    assert [f["data"]["i"] for f in frames if f["type"] == "message"] == got
    reply = frames[kinds.index("reply")]["result"]
    assert reply["recovered"] is True
    assert reply["offset"] == frames[kinds.index("reply") - 1]["offset"]  # the seam
    await ws.close()


async def test_sse_replay_of_many_pages_with_live_publications(nodes: tuple[Node, Node]) -> None:
    writer, reader = nodes
    epoch = await fill(writer, "r", 400, size=15_000)  # as for WebSocket
    async with sse(reader, "/v1/rooms/r/events?since=0") as (resp, s):
        assert resp.headers["hubbub-last-event-id"] != "earliest"
        session: Session = next(iter(reader.hub.sessions.values()))
        done = asyncio.Event()
        await _publish_live(writer, "r", 401, 50, done)
        assert session.subs["r"].buffering, "the replay was over before the live publications"
        events = await s.events(450)
    assert offsets(events) == list(range(1, 451))
    assert [e.json["data"]["i"] for e in events] == list(range(1, 451))
    assert events[-1].id == make_cursor({"r": Position(epoch, 450)})


async def test_sse_resume_of_many_pages_mid_replay(nodes: tuple[Node, Node]) -> None:
    """Last-Event-ID taken from the middle of a paged replay resumes exactly after it."""
    writer, reader = nodes
    await fill(writer, "r", 200)
    async with sse(reader, "/v1/rooms/r/events?since=0") as (_, s):
        first = await s.events(77)
    assert offsets(first) == list(range(1, 78))
    headers = {"Last-Event-ID": first[-1].id or ""}
    await fill(writer, "r", 10, start=201)
    async with sse(reader, "/v1/rooms/r/events", headers=headers) as (resp, s):
        assert resp.headers["hubbub-last-event-id"] == first[-1].id
        rest = await s.events(133)
    assert offsets(rest) == list(range(78, 211))


async def test_sse_resume_older_than_history_says_earliest_before_a_paged_replay(
    node_factory: Any,
) -> None:
    """The stream starts before its replay is over (it is many pages), yet the response
    header already says the resume position was lost (hardening case 42), then the gap and
    every retained message follow."""
    node = await node_factory(max_reply_bytes=PAGE_BYTES, history_size=100)
    epoch = await fill(node, "r", 150)
    async with sse(node, "/v1/rooms/r/events?since=10") as (resp, s):
        assert resp.headers["hubbub-last-event-id"] == "earliest"
        events = await s.events(101)
    assert events[0].event == "hub.gap" and events[0].json["from"] == 11
    assert events[0].json["to"] == 50 and events[0].json["epoch"] == epoch
    assert offsets(events) == list(range(51, 151))


async def test_sse_multi_room_cursor_of_many_pages(nodes: tuple[Node, Node]) -> None:
    """Two rooms resumed from one cursor, both replays many pages long, live publications
    meanwhile: each room's messages once and in order, and every id resumes both rooms."""
    writer, reader = nodes
    ea = await fill(writer, "a", 150)
    eb = await fill(writer, "b", 150)
    since = make_cursor({"a": Position(ea, 0), "b": Position(eb, 50)})
    path = f"/v1/events?room=a&room=b&since={since}"
    async with sse(reader, path) as (_, s):
        assert parse_cursor(s.first.id or "", ["a", "b"]) == {
            "a": Position(ea, 0), "b": Position(eb, 50)
        }  # fmt: skip
        done = asyncio.Event()
        await asyncio.gather(
            _publish_live(writer, "a", 151, 20, done), _publish_live(writer, "b", 151, 20, done)
        )
        events = await s.events(170 + 120)
    assert offsets(events, "a") == list(range(1, 171))
    assert offsets(events, "b") == list(range(51, 171))
    positions = parse_cursor(events[-1].id or "", ["a", "b"])
    assert positions == {"a": Position(ea, 170), "b": Position(eb, 170)}
    # Resuming from an id in the middle gives exactly what followed it, in both rooms.
    middle: Event = events[100]
    seen_a = max(offsets(events[:101], "a"), default=0)
    seen_b = max(offsets(events[:101], "b"), default=50)
    async with sse(reader, "/v1/events?room=a&room=b",
                   headers={"Last-Event-ID": middle.id or ""}) as (_, s):  # fmt: skip
        rest = await s.events(340 - 50 - 101)
    assert offsets(rest, "a") == list(range(seen_a + 1, 171))
    assert offsets(rest, "b") == list(range(seen_b + 1, 171))


# ---- a client that does not read its replay ---------------------------------------------------
@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_client_that_does_not_read_its_replay_is_a_slow_consumer(
    node_factory: Any, transport: str
) -> None:
    """Its replay (far more than socket buffers hold) waits for it a page at a time; a page
    not taken within HUB_PING_INTERVAL closes it with 4001, and an honest reader of the same
    replay meanwhile gets all of it."""
    node = await node_factory(max_reply_bytes=64 * 1024, ping_interval=1.0, ping_timeout=30.0)
    await fill(node, "big", 150, size=60_000)  # 9 MB
    if transport == "ws":
        since = {"type": "subscribe", "room": "big", "since": {"epoch": None, "offset": 0},
                 "id": 1}  # fmt: skip
        sock = await asyncio.to_thread(ws_not_reading, node.port, token("mute"), since)
    else:
        sock = await asyncio.to_thread(sse_not_reading, node.port, "big", token("mute"))
    try:
        mute: Session = await until(lambda: next(iter(node.hub.sessions.values()), None))
        async with sse(node, "/v1/rooms/big/events?since=0") as (_, s):
            events = await s.events(150, within=10)
        assert offsets(events) == list(range(1, 151))
        await until(lambda: mute.closed is not None, within=10, what="the mute client closed")
        assert mute.closed is not None and mute.closed.code == 4001, mute.closed
        await until(lambda: mute.id not in node.hub.sessions, what="the session gone")
        assert node.hub.metrics.disconnects[4001] == 1
    finally:
        sock.close()
