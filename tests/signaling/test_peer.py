"""The aiortc peer (signaling/peer.py) through a real hub, without a browser."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hubbub.cli import build_parser
from hubbub.probe.peer import Probe, restrict_ice_hosts
from tests.conftest import token

LOOP = ("127.0.0.1",)


@pytest.fixture(autouse=True)
def loopback_ice() -> None:
    restrict_ice_hosts(LOOP)


async def test_two_probes_connect_through_the_hub(node: Any) -> None:
    a = Probe(node.ws_url, "call:pp", token("a"), ice_hosts=LOOP)
    b = Probe(node.ws_url, "call:pp", token("b"), ice_hosts=LOOP)
    ta = asyncio.create_task(a.run())
    assert await a.wait_for(lambda s: s.session is not None, 5)
    await asyncio.sleep(0.1)
    tb = asyncio.create_task(b.run())
    try:
        assert await b.wait_for(lambda s: s.connected == 1 and s.channel_open == 1, 15)
        assert await a.wait_for(lambda s: s.connected == 1 and s.channel_open == 1, 15)
        assert (b.stats.offers, a.stats.answers) == (1, 1)  # the new arrival offered
        assert (a.stats.offers, b.stats.answers) == (0, 0)
        # b leaves: a drops the peer (leave), and its connection
        b.stop()
        assert await tb == 0
        assert await a.wait_for(lambda s: s.peers == 0 and s.connected == 0, 10)
    finally:
        a.stop()
        b.stop()
        assert await ta == 0


async def test_probe_refused_for_good(node_factory: Any) -> None:
    node = await node_factory(signal_max_peers=1)
    bad = Probe(node.ws_url, "call:x", "not-a-jwt", ice_hosts=LOOP)
    assert await asyncio.wait_for(bad.run(), 10) == 1  # 4501: no reconnect
    first = Probe(node.ws_url, "call:x", token("a"), ice_hosts=LOOP)
    task = asyncio.create_task(first.run())
    try:
        assert await first.wait_for(lambda s: s.session is not None, 5)
        await asyncio.sleep(0.1)
        second = Probe(node.ws_url, "call:x", token("b"), ice_hosts=LOOP)
        assert await asyncio.wait_for(second.run(), 10) == 1
        assert second.error is not None and second.error.code == "room_full"
    finally:
        first.stop()
        await task


async def test_probe_reconnects_after_a_drain(node_factory: Any) -> None:
    """Close 4000 (node draining) is temporary: the probe comes back with a new session."""
    node = await node_factory()
    p = Probe(node.ws_url, "call:r", token("a"), ice_hosts=LOOP)
    task = asyncio.create_task(p.run())
    try:
        assert await p.wait_for(lambda s: s.session is not None, 5)
        before = p.stats.session
        for s in list(node.hub.sessions.values()):
            s.close(4000, "draining")
        assert await p.wait_for(lambda s: s.session not in (None, before), 10)
        members = await node.hub.presence(node.hub.auth.authenticate(token("x")), "call:r")
        assert members["sessions"] == 1
    finally:
        p.stop()
        assert await task == 0


def test_cli_probe_flags() -> None:
    args = build_parser().parse_args(
        ["probe", "call:x", "--url", "ws://127.0.0.1:1/v1/ws", "--ice-host", "127.0.0.1",
         "--record", "out.json", "--duration", "2"]
    )  # fmt: skip
    assert args.room == "call:x" and args.ice_host == ["127.0.0.1"] and args.duration == 2.0
