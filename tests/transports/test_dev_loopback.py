"""Dev mode stays on loopback (hardening case 53).

A node with no JWT secret, public key, JWKS or API key lets anyone use every room, so every
entry point refuses to serve it on a non-loopback address (``hubbub serve``, its ``--workers``
children built by ``app_from_env``, and ``create_app``), and a dev-mode node answers ``403``
to any request whose ``Host`` does not name loopback: a page on another site whose name
resolves to 127.0.0.1 (DNS rebinding) gets nothing, on HTTP, SSE or WebSocket.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from hubbub.app import app_from_env, create_app
from hubbub.hub.errors import ConfigError
from hubbub.hub.values import host_header_is_loopback, is_loopback_host
from tests.conftest import make_settings
from tests.wsclient import WS

DEV = {"jwt_secret": None, "api_keys": ()}
HUBBUB = str(Path(sys.executable).parent / "hubbub")


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("localhost", True), ("localhost:8000", True), ("LOCALHOST:1", True),
        ("127.0.0.1", True), ("127.0.0.1:8000", True), ("127.1.2.3:80", True),
        ("[::1]", True), ("[::1]:8000", True),
        (None, False), ("", False), ("evil.example", False), ("evil.example:8000", False),
        ("localhost.evil.example", False), ("127.0.0.1.nip.io:80", False),
        ("10.0.0.1:8000", False), ("[::2]:80", False), ("::1", False),
        ("localhost:x", False), ("localhost:99999", False), ("[::1]x", False), ("[::1", False),
    ],
)  # fmt: skip
def test_host_header_names_loopback(host: str | None, ok: bool) -> None:
    assert host_header_is_loopback(host) is ok


def test_bind_addresses() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert is_loopback_host(host), host
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.com", "", "localhost.example"):
        assert not is_loopback_host(host), host


async def test_foreign_host_gets_403_on_every_transport(node_factory: Any) -> None:
    node = await node_factory(**DEV)
    evil = f"rebound.example:{node.port}"
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        for path in ("/", "/v1/rooms/chat/messages", "/health/live", "/v1/rooms/chat/events"):
            r = await http.get(path, headers={"Host": evil})
            assert r.status_code == 403, (path, r.text)
            assert r.headers["content-type"] == "application/json"
            assert r.json()["error"]["code"] == "forbidden"
        r = await http.post("/v1/rooms/chat/messages", json={"data": 1}, headers={"Host": evil})
        assert r.status_code == 403
        # Loopback names, any port, still work.
        for host in (f"localhost:{node.port}", f"127.0.0.1:{node.port}", "[::1]", "localhost"):
            r = await http.get("/v1/rooms/chat/messages", headers={"Host": host})
            assert r.status_code == 200, (host, r.text)
    assert await ws_handshake_status(node.port, evil) == 403
    assert await ws_handshake_status(node.port, f"localhost:{node.port}") == 101
    guest = await WS.connect(
        node.ws_url, None, additional_headers={"Host": f"localhost:{node.port}"}
    )
    await guest.result({"type": "subscribe", "room": "chat"})
    await guest.close()


async def ws_handshake_status(port: int, host: str) -> int:
    """The status of a WebSocket upgrade of /v1/ws sent with ``Host: host`` (a browser
    sends exactly one Host header, the name it resolved)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            (
                f"GET /v1/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
        return int(line.split()[1])
    finally:
        writer.close()


async def test_outside_dev_mode_any_host_is_served(node_factory: Any) -> None:
    node = await node_factory()
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        r = await http.get("/health/live", headers={"Host": "hub.example.com"})
        assert r.status_code == 200


def test_create_app_refuses_dev_mode_on_a_public_host() -> None:
    for host in ("0.0.0.0", "::", "192.0.2.10", "hub.example.com"):
        with pytest.raises(ConfigError, match=r"refusing to bind .* in dev mode"):
            create_app(make_settings(host=host, **DEV), handle_signals=False)
    # With credentials, or on loopback, it builds.
    create_app(make_settings(host="0.0.0.0"), handle_signals=False)
    create_app(make_settings(host="::1", **DEV), handle_signals=False)


def test_worker_factory_refuses_dev_mode_on_a_public_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """``hubbub serve --workers N`` children build their app with ``app_from_env``."""
    for name in ("HUB_JWT_SECRET", "HUB_API_KEYS", "HUB_JWT_PUBLIC_KEY", "HUB_JWT_JWKS_FILE",
                 "HUB_CONFIG"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HUB_HOST", "0.0.0.0")
    with pytest.raises(ConfigError, match=r"refusing to bind 0\.0\.0\.0 in dev mode"):
        app_from_env()


@pytest.mark.parametrize("extra", [[], ["--workers", "2", "--broker", "redis://127.0.0.1:9/0"]])
def test_cli_refuses_dev_mode_on_a_public_host(extra: list[str]) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [HUBBUB, "serve", "--host", "0.0.0.0", "--port", "0", *extra],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "refusing to bind 0.0.0.0 in dev mode" in proc.stderr
