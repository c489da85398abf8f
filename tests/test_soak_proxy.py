"""The soak's TCP proxy (hubbub.bench.soak_proxy) in front of a real echo server on 127.0.0.1:
bytes pass in order, latency delays without reordering, a blackhole holds bytes until healed,
a drop resets every connection, and a refused upstream closes the client side."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from hubbub.bench.soak_proxy import Proxy
from tests.conftest import free_port


async def _echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await r.read(4096):
            w.write(data)
            await w.drain()
    w.close()


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    px = Proxy(server.sockets[0].getsockname()[1])
    await px.start()
    try:
        yield px
    finally:
        await px.close()
        server.close()
        await server.wait_closed()


async def _conn(px: Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", px.port)


async def test_bytes_pass_in_order_with_latency(proxy: Proxy) -> None:
    r, w = await _conn(proxy)
    w.write(b"a")
    assert await asyncio.wait_for(r.readexactly(1), 5) == b"a"
    proxy.latency(0.05)
    for i in range(20):
        w.write(b"%02d" % i)
    got = await asyncio.wait_for(r.readexactly(40), 5)
    assert got == b"".join(b"%02d" % i for i in range(20))
    proxy.heal()
    w.close()


async def test_blackhole_holds_until_healed(proxy: Proxy) -> None:
    r, w = await _conn(proxy)
    proxy.blackhole()
    w.write(b"held")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(r.readexactly(4), 0.3)
    proxy.heal()
    assert await asyncio.wait_for(r.readexactly(4), 5) == b"held"
    w.close()


async def test_drop_resets_every_connection(proxy: Proxy) -> None:
    conns = [await _conn(proxy) for _ in range(3)]
    for r, w in conns:
        w.write(b"x")
        assert await asyncio.wait_for(r.readexactly(1), 5) == b"x"
    assert proxy.drop() == 3
    for r, w in conns:
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(r.readexactly(1), 5)
        w.close()


async def test_refused_upstream_closes_the_client() -> None:
    px = Proxy(free_port())  # nothing listens there
    await px.start()
    try:
        r, w = await _conn(px)
        with contextlib.suppress(ConnectionResetError):  # closed with an RST, or a FIN
            assert await asyncio.wait_for(r.read(1), 5) == b""
        w.close()
    finally:
        await px.close()
