"""Hubbub's own HTTP/1.1 connection protocol (transports/h1.py) on raw sockets, and the
start-up check that falls back to uvicorn's protocols (transports/server.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from hubbub.transports import server
from tests.conftest import API_KEY, Node, make_settings


async def raw(node: Node, data: bytes, until: bytes = b"", timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read until ``until`` appears (or EOF)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        writer.write(data)
        got = b""
        async with asyncio.timeout(timeout):
            while not until or until not in got:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                got += chunk
        return got
    finally:
        writer.close()


def publish_request(room: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST /v1/rooms/%s/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
        % (room.encode(), API_KEY.encode(), len(body), extra, body)
    )


async def test_pipelined_requests_are_answered_in_order(node: Node) -> None:
    reqs = b"".join(publish_request("p", b'{"data": %d}' % i) for i in range(1, 4))
    got = await raw(
        node, reqs + b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n", b'{"status":"ok"}'
    )
    assert got.count(b"HTTP/1.1 201") == 3
    assert got.index(b'"offset":1') < got.index(b'"offset":2') < got.index(b'"offset":3')


async def test_chunked_request_body_and_expect_continue(node: Node) -> None:
    body = b'{"data": "chunked"}'
    req = (
        b"POST /v1/rooms/c/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"Expect: 100-continue\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (API_KEY.encode(), len(body), body)
    )
    got = await raw(node, req, b'"offset":1')
    assert got.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201")


async def test_head_has_no_body_and_keeps_the_connection(node: Node) -> None:
    got = await raw(
        node,
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /health/live HTTP/1.1\r\nHost: x\r\n\r\n",
        b'{"status":"ok"}',
    )
    assert got.count(b"HTTP/1.1 200") == 2 and b"<html" not in got.lower()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"b" * 70_000 + b"\r\n\r\n", b"431"),
        (b"NOT HTTP AT ALL\r\n\r\n", b"400"),
    ],
)
async def test_oversized_or_broken_requests_are_refused(
    node: Node, request_bytes: bytes, status: bytes
) -> None:
    got = await raw(node, request_bytes)
    assert got.startswith(b"HTTP/1.1 " + status), got[:80]
    assert (await node.hub.ready()) is True


async def test_http_1_0_gets_a_close_delimited_answer(node: Node) -> None:
    got = await raw(node, b"GET /health/live HTTP/1.0\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200") and b"connection: close" in got
    assert got.endswith(b'{"status":"ok"}')


def test_the_installed_uvicorn_runs_the_fast_path() -> None:
    assert server.fast_path_problem() is None
    assert server.server_options(make_settings())["http"] is server.HttpConnection


def test_a_uvicorn_without_what_the_protocol_needs_falls_back(
    monkeypatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import uvicorn.server

    class Bare:
        def __init__(self) -> None:
            self.connections: set[Any] = set()

    monkeypatch.setattr(uvicorn.server, "ServerState", Bare)
    problem = server.fast_path_problem()
    assert problem is not None and "tasks" in problem
    with caplog.at_level(logging.WARNING, logger="hubbub.server"):
        options = server.server_options(make_settings())
    assert "http" not in options
    assert "uvicorn's own protocols" in caplog.text and "tasks" in caplog.text


async def test_headers_trickling_in_still_time_out(node_factory: Any) -> None:
    """A client that sends one header byte every 0.2 s (slowloris) is closed once
    HUB_HANDSHAKE_TIMEOUT has passed since its request began, not kept while bytes trickle."""
    node = await node_factory(handshake_timeout=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        closed = False
        for _ in range(40):  # up to 8 s of trickling
            writer.write(b"X")
            try:
                await writer.drain()
                data = await asyncio.wait_for(reader.read(1024), 0.2)
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if data == b"":
                closed = True
                break
        assert closed, "the server kept a connection whose headers never ended"
    finally:
        writer.close()
