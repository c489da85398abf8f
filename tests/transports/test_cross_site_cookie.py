"""Cross-site cookies (hardening case 60): a WebSocket, SSE or HTTP API request authenticated by
the ``hubbub_token`` cookie and marked ``Sec-Fetch-Site: cross-site`` is refused with 403 before
any stream or upgrade unless it carries an allowed ``Origin``; a credential in the header, a
same-site request or an allowed origin are served as before."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import token
from tests.wsclient import WS

APP = "https://app.example.com"


def cookie_headers(tok: str, site: str = "cross-site", **extra: str) -> dict[str, str]:
    return {"Cookie": f"hubbub_token={tok}", "Sec-Fetch-Site": site, **extra}


async def sse_status(http: httpx.AsyncClient, headers: dict[str, str]) -> tuple[int, str]:
    """The status of an SSE request and, for a refusal, its body (an accepted stream is left
    at once, before it ends)."""
    async with http.stream("GET", "/v1/rooms/news/events", headers=headers) as r:
        if r.status_code != 200:
            return r.status_code, (await r.aread()).decode()
        assert r.headers["content-type"].startswith("text/event-stream")
        return 200, ""


async def ws_status(url: str, headers: dict[str, str]) -> int:
    """101 when the upgrade succeeded (and ``welcome`` came), else the handshake's status."""
    try:
        c = await WS.connect(url, additional_headers=headers)
    except websockets.InvalidStatus as exc:
        return exc.response.status_code
    assert c.welcome["user"] == "alice"
    await c.close()
    return 101


async def test_cross_site_cookie_requests_are_refused(node_factory: Any) -> None:
    node = await node_factory(allowed_origins=(APP,))
    tok = token("alice")
    refused = cookie_headers(tok)
    assert await ws_status(node.ws_url, refused) == 403
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        status, body = await sse_status(http, refused)
        assert status == 403 and '"forbidden"' in body, body
        r = await http.get("/v1/rooms/news/messages", headers=refused)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        # a foreign Origin is refused as before; an allowed one is served
        evil = cookie_headers(tok, Origin="https://evil.example")
        assert (await sse_status(http, evil))[0] == 403
        assert (await sse_status(http, cookie_headers(tok, Origin=APP)))[0] == 200
        # same-site, same-origin or no Sec-Fetch-Site at all: the cookie works
        for site in ("same-origin", "same-site", "none"):
            assert (await sse_status(http, cookie_headers(tok, site)))[0] == 200, site
        assert (await sse_status(http, {"Cookie": f"hubbub_token={tok}"}))[0] == 200
        # a credential in the Authorization header is not lent by the browser: served
        bearer = cookie_headers(tok, Authorization=f"Bearer {tok}")
        assert (await sse_status(http, bearer))[0] == 200
    assert await ws_status(node.ws_url, cookie_headers(tok, Origin=APP)) == 101
    assert await ws_status(node.ws_url, cookie_headers(tok, "same-origin")) == 101
    assert await ws_status(node.ws_url + f"?token={tok}", {"Sec-Fetch-Site": "cross-site"}) == 101


@pytest.mark.parametrize("site", ["cross-site", "CROSS-SITE", " cross-site "])
async def test_refusal_comes_before_the_upgrade(node_factory: Any, site: str) -> None:
    node = await node_factory()
    assert await ws_status(node.ws_url, cookie_headers(token("alice"), site)) == 403
    assert node.hub.metrics.auth_failures == 0  # refused before any credential was looked at
