"""First-contact refusals: an empty token is refused at once (WebSocket close 4501 right after
the upgrade, no wait for an ``auth`` frame; 401 on SSE and HTTP) unless guests are allowed, where
it counts as no token. A refusal's reason and a refused origin are in the node's log (naming the
transport, ``HUB_ALLOWED_ORIGINS`` and the escaped origin), never in the answer."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import token

EMPTY_WAYS: list[tuple[str, dict[str, str], str]] = [
    ("query", {}, "?token="),
    ("cookie", {"Cookie": "hubbub_token="}, ""),
    # "Bearer " with nothing: the trailing space is not part of a header value on the wire
    ("bearer", {"Authorization": "Bearer"}, ""),
]


async def _ws_close(url: str, headers: dict[str, str]) -> tuple[int, float]:
    """Connect, read until closed; (close code, seconds it took)."""
    t0 = time.monotonic()
    async with websockets.connect(url, additional_headers=headers, open_timeout=5) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code is not None
    return ws.close_code, time.monotonic() - t0


@pytest.mark.parametrize(("how", "headers", "query"), EMPTY_WAYS, ids=[w[0] for w in EMPTY_WAYS])
async def test_empty_token_is_refused_at_once(
    node_factory: Any, caplog: pytest.LogCaptureFixture, how: str, headers: dict[str, str],
    query: str,
) -> None:  # fmt: skip
    node = await node_factory()
    with caplog.at_level(logging.INFO, logger="hubbub.edge"):
        code, took = await _ws_close(node.ws_url + query, headers)
        assert code == 4501 and took < 2, (code, took)  # not after the 10 s auth-frame wait
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            sse = await http.get("/v1/rooms/news/events" + query, headers=headers)
            api = await http.get("/v1/rooms/news/messages" + query, headers=headers)
    for r in (sse, api):
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"
        assert "empty" not in r.text
    for transport in ("ws", "sse", "http"):
        assert f"{transport}: login refused: empty" in caplog.text, caplog.text
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        metrics = (await http.get("/metrics")).text
    assert 'hubbub_auth_refusals_total{reason="empty"} 3' in metrics


@pytest.mark.parametrize(("how", "headers", "query"), EMPTY_WAYS, ids=[w[0] for w in EMPTY_WAYS])
async def test_empty_token_in_dev_mode_is_no_token(
    node_factory: Any, how: str, headers: dict[str, str], query: str
) -> None:
    node = await node_factory(jwt_secret=None, api_keys=())
    async with websockets.connect(node.ws_url + query, additional_headers=headers) as ws:
        welcome = await asyncio.wait_for(ws.recv(), 5)
        assert '"welcome"' in str(welcome) and "guest-" in str(welcome)
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        sse = await http.head("/v1/rooms/news/events" + query, headers=headers)
        api = await http.get("/v1/rooms/news/messages" + query, headers=headers)
    assert sse.status_code == 200 and api.status_code == 200, (sse.text, api.text)


async def test_refusal_reasons_are_logged_per_transport(
    node_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    node = await node_factory()
    expired = token("alice", ttl=-60)
    forged = token("alice")[:-4] + "AAAA"
    too_long = token("alice", ttl=10 * 86400 * 365)
    with caplog.at_level(logging.INFO, logger="hubbub.edge"):
        code, _ = await _ws_close(node.ws_url + f"?token={expired}", {})
        assert code == 4501
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            sse = await http.get(f"/v1/rooms/news/events?token={forged}")
            api = await http.get("/v1/rooms/news/messages",
                                 headers={"Authorization": f"Bearer {too_long}"})  # fmt: skip
            junk = await http.get("/v1/rooms/news/messages?token=not-a-jwt")
            none = await http.get("/v1/rooms/news/messages")
    for r in (sse, api, junk, none):
        assert r.status_code == 401
        body = r.text
        for reason in ("expired", "signature", "ttl", "malformed"):
            assert reason not in body, body
    text = caplog.text
    assert "ws: login refused: expired" in text, text
    assert "sse: login refused: signature" in text, text
    assert "http: login refused: ttl" in text, text
    assert "http: login refused: malformed" in text, text
    assert "http: login refused: missing" in text, text


async def test_refused_origin_is_logged_escaped(
    node_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    node = await node_factory()
    origin = "https://\u00e9vil.example"
    with caplog.at_level(logging.INFO, logger="hubbub.edge"):
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            r = await http.get(
                "/v1/rooms/news/messages",
                headers={"Origin": origin.encode("latin-1"), "Authorization": f"Bearer {token()}"},
            )
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(node.ws_url, origin="https://other.example")  # type: ignore[arg-type]
    assert r.status_code == 403
    lines = [rec.getMessage() for rec in caplog.records if "origin refused" in rec.getMessage()]
    assert any(
        line.startswith("http:") and "HUB_ALLOWED_ORIGINS" in line and "\\xe9vil" in line
        for line in lines
    ), lines
    assert any(line.startswith("ws:") and "'https://other.example'" in line for line in lines)
    assert all(origin not in line for line in lines)


async def test_a_client_awaited_for_its_auth_frame_holds_no_handshake_turn(
    node_factory: Any,
) -> None:
    """With one handshake at a time (HUB_HANDSHAKE_CONCURRENCY=1), clients that connected
    without a token and send no ``auth`` frame do not hold the turn: others get in meanwhile,
    and a late ``auth`` frame still gets its welcome."""
    node = await node_factory(handshake_concurrency=1)
    waiting = [await websockets.connect(node.ws_url, open_timeout=5) for _ in range(3)]
    try:
        for i in range(3):
            url = f"{node.ws_url}?token={token(f'u{i}')}"
            async with websockets.connect(url, open_timeout=5) as ws:
                welcome = await asyncio.wait_for(ws.recv(), 2)
                assert '"type":"welcome"' in str(welcome)
        late = waiting[0]
        await late.send(json.dumps({"type": "auth", "token": token("late")}))
        assert '"type":"welcome"' in str(await asyncio.wait_for(late.recv(), 2))
    finally:
        for ws in waiting:
            await ws.close()
