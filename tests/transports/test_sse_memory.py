"""What keeps an idle SSE stream small on Hubbub's protocol (bench/idle-memory.md), and that the
behaviour around it holds: the stream is held without a task or coroutine while idle, frames the
session queues are written in order by a task that ends when the queue is empty, and the
session's close ends the stream (farewell event, end of the response, session gone). Real
uvicorn and a real HTTP client."""

from __future__ import annotations

import asyncio

from hubbub.hub.session import Session
from hubbub.transports.sse_stream import EventStream
from tests.conftest import Node, token
from tests.helpers import until
from tests.transports.test_sse import offsets, publish, sse, wait_sessions


def _stream(node: Node) -> tuple[Session, EventStream]:
    (session,) = node.hub.sessions.values()
    waker = session.waker
    assert waker is not None
    stream = waker.__self__  # type: ignore[attr-defined]
    assert isinstance(stream, EventStream)
    return session, stream


async def test_idle_stream_is_held_without_a_task(node: Node) -> None:
    async with sse(node) as (_, s):
        await wait_sessions(node, 1)
        session, stream = _stream(node)
        out = stream._out
        assert out is not None and out.cycle.held
        assert stream._pumping is None and stream._ending is None
        assert session.direct is stream._writer
        assert out.conn.parser is None  # no HTTP parser while the response streams
        await publish(node, "r", 3)
        assert offsets(await s.events(3)) == [1, 2, 3]
        assert stream._pumping is None  # written by the fan-out itself


async def test_queued_frames_are_written_in_order_by_a_task_that_ends(node: Node) -> None:
    async with sse(node) as (_, s):
        await wait_sessions(node, 1)
        _session, stream = _stream(node)
        out = stream._out
        assert out is not None
        await publish(node, "r", 1)  # written directly
        out.conn.writable.clear()  # as if the socket were over its high-water mark
        await publish(node, "r", 3)  # queued: a task waits to write them
        pumping = stream._pumping
        assert pumping is not None and not pumping.done()
        out.conn.writable.set()
        await until(lambda: stream._pumping is None)
        await publish(node, "r", 1)  # direct again
        assert offsets(await s.events(5)) == [1, 2, 3, 4, 5]


async def test_close_ends_a_held_stream(node: Node) -> None:
    async with sse(node) as (_, s):
        await wait_sessions(node, 1)
        _session, stream = _stream(node)
        await node.hub.disconnect_user("alice", "go away")
        rest = await s.rest()
        assert [e.event for e in rest] == ["hub.disconnect"]
        assert rest[0].json["code"] == 4509
    await wait_sessions(node, 0)
    ending = stream._ending
    assert ending is not None
    await until(ending.done)
    assert stream._out is None and stream._writer is None


async def test_client_going_away_closes_a_held_stream(node: Node) -> None:
    async with sse(node) as (_, s):
        await wait_sessions(node, 1)
        session, stream = _stream(node)
        await publish(node, "r", 1)
        assert offsets(await s.events(1)) == [1]
    await wait_sessions(node, 0)
    assert session.closed is not None and stream.gone


async def test_connection_serves_the_next_request_after_a_held_stream(node: Node) -> None:
    # A raw connection, to be sure the next request goes over the same one (keep-alive): the
    # HTTP parser, dropped while the stream ran, is made again for it.
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        writer.write(
            b"GET /v1/rooms/r/events HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + token("alice").encode() + b"\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head
        await wait_sessions(node, 1)
        _session, stream = _stream(node)
        out = stream._out
        assert out is not None and out.conn.parser is None
        await node.hub.disconnect_user("alice", "go away")
        body = await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), 5)  # the last chunk
        assert b"event: hub.disconnect" in body
        await wait_sessions(node, 0)
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
