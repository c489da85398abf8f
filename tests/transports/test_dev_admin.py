"""The admin endpoints in dev mode (no secret, no API key: what ``make run`` serves): a guest on
a loopback address may use them and ``GET /v1/stats`` says ``dev_mode``; from any other address,
and outside dev mode, they still need an API key."""

from __future__ import annotations

from typing import Any

import httpx

from hubbub import create_app
from tests.conftest import API_KEY, make_settings
from tests.wsclient import WS

DEV = {"jwt_secret": None, "api_keys": ()}


async def test_dev_mode_admin_endpoints_work_on_loopback(node_factory: Any) -> None:
    node = await node_factory(**DEV)
    guest = await WS.connect(node.ws_url, None)
    await guest.result({"type": "subscribe", "room": "chat:lobby", "presence": True})
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        stats = await http.get("/v1/stats")
        assert stats.status_code == 200, stats.text
        assert stats.json()["dev_mode"] is True
        assert stats.json()["connections"]["ws"] == 1
        rooms = await http.get("/v1/rooms")
        assert rooms.status_code == 200
        assert {"room": "chat:lobby", "sessions": 1} in rooms.json()["rooms"]
        pres = await http.get("/v1/rooms/chat:lobby/presence")
        assert pres.status_code == 200 and pres.json()["users"] == 1
        pub = await http.post("/v1/rooms/chat:lobby/messages", json={"data": {"t": 1}})
        assert pub.status_code == 201, pub.text
        many = await http.post("/v1/publish", json={"messages": [{"room": "news", "data": 1}]})
        assert many.status_code == 200 and "offset" in many.json()["results"][0]
        gone = await http.post("/v1/users/nobody/disconnect", json={})
        assert gone.status_code == 200 and gone.json() == {"sessions": 0}


async def test_dev_mode_admin_endpoints_refuse_other_addresses() -> None:
    """The same app asked from a non-loopback client address (an in-process ASGI call that
    says so: tests send no traffic beyond loopback)."""
    app = create_app(make_settings(**DEV), handle_signals=False)
    transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 40000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            for method, path in (("GET", "/v1/stats"), ("GET", "/v1/rooms"),
                                 ("POST", "/v1/users/bob/disconnect")):  # fmt: skip
                r = await http.request(method, path)
                assert r.status_code == 403, (path, r.text)
                assert r.json()["error"]["code"] == "forbidden"
    finally:
        await app.shutdown()


async def test_outside_dev_mode_loopback_changes_nothing(node_factory: Any) -> None:
    # Anonymous guests allowed, but the hub has an API key: not dev mode.
    node = await node_factory(allow_anonymous=True)
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        assert (await http.get("/v1/stats")).status_code == 403
        assert (await http.get("/v1/rooms")).status_code == 403
        keyed = await http.get("/v1/stats", headers={"Authorization": f"Bearer {API_KEY}"})
        assert keyed.status_code == 200 and keyed.json()["dev_mode"] is False
