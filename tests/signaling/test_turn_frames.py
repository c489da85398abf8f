"""ICE servers and TURN REST credentials on the wire (PROTOCOL.md §6, hardening case 45): in
``welcome``, at ``GET /v1/ice-servers`` and pushed again as an ``ice_servers`` frame before the
credentials expire; the secret never reaches a client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any

import httpx

from hubbub.hub.settings import Rate
from hubbub.signaling.turn import ice_servers, refresh_period, turn_credentials
from tests.conftest import API_KEY, make_settings, token
from tests.wsclient import WS

TURN_SECRET = "turn-shared-secret-DO-NOT-LEAK-4f1c9a"
TURN = {
    "stun_urls": ("stun:127.0.0.1:3478",),
    "turn_urls": ("turn:127.0.0.1:3478?transport=udp", "turns:127.0.0.1:5349"),
    "turn_secret": TURN_SECRET,
}


def check_turn_entry(entry: dict[str, Any], sub: str, ttl: float, now: float) -> int:
    """Verify the TURN REST credential math; return the expiry."""
    assert entry["urls"] == list(TURN["turn_urls"])
    expiry_text, user = entry["username"].split(":", 1)
    assert user == sub
    expiry = int(expiry_text)
    assert now + ttl - 2 <= expiry <= now + ttl + 2
    mac = hmac.new(TURN_SECRET.encode(), entry["username"].encode(), hashlib.sha1).digest()
    assert entry["credential"] == base64.b64encode(mac).decode()
    assert set(entry) == {"urls", "username", "credential"}
    return expiry


def test_credential_math() -> None:
    username, credential = turn_credentials("s3cret", "alice", 600, now=1_700_000_000.4)
    assert username == "1700000600:alice"
    expected = base64.b64encode(hmac.new(b"s3cret", b"1700000600:alice", hashlib.sha1).digest())
    assert credential == expected.decode()
    body = ice_servers(make_settings(**TURN, turn_ttl=600.0), "bob", now=1_700_000_000)
    assert body["ttl"] == 600
    assert body["ice_servers"][0] == {"urls": ["stun:127.0.0.1:3478"]}
    assert body["ice_servers"][1]["username"] == "1700000600:bob"
    assert ice_servers(make_settings(), "bob") == {"ice_servers": [], "ttl": 3600}


def test_refresh_period_leaves_a_margin() -> None:
    assert refresh_period(3600) == 3300  # 5 minutes before
    assert refresh_period(600) == 480
    assert refresh_period(2) == 1
    for ttl in (0.5, 1, 2, 3, 10, 60, 86400):
        assert 0 < refresh_period(ttl) < ttl or refresh_period(ttl) == 0.5


async def test_welcome_carries_ice_servers(node_factory: Any) -> None:
    node = await node_factory(**TURN, turn_ttl=900.0)
    c = await WS.open(node.ws_url, "alice")
    servers = c.welcome["ice_servers"]
    assert servers[0] == {"urls": ["stun:127.0.0.1:3478"]}
    check_turn_entry(servers[1], "alice", 900, time.time())
    # without TURN or STUN configured there is nothing to send
    plain = await node_factory()
    c2 = await WS.open(plain.ws_url, "alice")
    assert "ice_servers" not in c2.welcome


async def test_ice_servers_frame_is_pushed_before_expiry(node_factory: Any) -> None:
    node = await node_factory(**TURN, turn_ttl=2.0)
    c = await WS.open(node.ws_url, "alice")
    t0 = time.monotonic()
    first_expiry = check_turn_entry(c.welcome["ice_servers"][1], "alice", 2, time.time())
    f1 = await c.next("ice_servers", 3)
    assert time.monotonic() - t0 < 2.0  # before the welcome's credentials expired
    assert f1["ttl"] == 2 and set(f1) == {"type", "ice_servers", "ttl"}
    e1 = check_turn_entry(f1["ice_servers"][1], "alice", 2, time.time())
    f2 = await c.next("ice_servers", 3)
    e2 = check_turn_entry(f2["ice_servers"][1], "alice", 2, time.time())
    assert first_expiry <= e1 <= e2 and first_expiry < e2
    # the pushes stop when the session ends (no timer left behind)
    await c.close()
    await asyncio.sleep(0.05)
    assert not node.hub.sessions


async def test_no_refresh_frames_without_turn(node_factory: Any) -> None:
    node = await node_factory(stun_urls=("stun:127.0.0.1:3478",), turn_ttl=1.0)
    c = await WS.open(node.ws_url, "alice")
    assert c.welcome["ice_servers"] == [{"urls": ["stun:127.0.0.1:3478"]}]
    await c.nothing("ice_servers", 1.2)


async def test_http_ice_servers_needs_a_client_token(node_factory: Any) -> None:
    node = await node_factory(**TURN, turn_ttl=600.0)
    async with httpx.AsyncClient(base_url=node.url) as http:
        r = await http.get("/v1/ice-servers", headers={"Authorization": f"Bearer {token('zoe')}"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["ttl"] == 600
        check_turn_entry(body["ice_servers"][1], "zoe", 600, time.time())
        assert TURN_SECRET not in r.text
        r = await http.get("/v1/ice-servers")
        assert r.status_code == 401
        assert TURN_SECRET not in r.text
        r = await http.get("/v1/ice-servers", headers={"Authorization": f"Bearer {API_KEY}"})
        assert r.status_code == 403  # backends do not need TURN credentials
        assert TURN_SECRET not in r.text


async def test_the_secret_never_appears_in_any_frame(node_factory: Any) -> None:
    node = await node_factory(**TURN, turn_ttl=1.0)
    a = await WS.open(node.ws_url, "alice", record=True)
    b = await WS.open(node.ws_url, "bob", record=True)
    await a.join("call:s")
    await b.join("call:s")
    await a.result({"type": "presence", "room": "call:s"})
    await a.signal("call:s", b.session, {"kind": "offer", "sdp": "v=0\r\n"})
    await b.next("signal")
    await a.call({"type": "bogus"})
    await a.next("ice_servers", 2)
    await b.next("ice_servers", 2)
    assert a.raw is not None and b.raw is not None
    frames = a.raw + b.raw
    assert len(frames) >= 6
    for text in frames:
        assert TURN_SECRET not in text
        assert base64.b64encode(TURN_SECRET.encode()).decode() not in text


async def test_ice_servers_endpoint_is_rate_limited(node_factory: Any) -> None:
    """Hardening case 45: the credential endpoint is rate-limited like the rest of the API."""
    node = await node_factory(**TURN, api_rate=Rate.parse("0.2/s:3"))
    auth = {"Authorization": f"Bearer {token('zoe')}"}
    async with httpx.AsyncClient(base_url=node.url) as http:
        codes = [(await http.get("/v1/ice-servers", headers=auth)).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[-1] == 429
        r = await http.get("/v1/ice-servers", headers=auth)
        assert r.status_code == 429 and "Retry-After" in r.headers
        assert TURN_SECRET not in r.text
