"""Shared fixtures: real redis-server processes on free ports, real uvicorn servers on sockets.

Never touches the shared Redis on 6379. In CI (``CI=true``) a missing tool is a failure, not a
skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from hubbub.app import create_app
from hubbub.hub.hub import Hub
from hubbub.hub.settings import Settings
from hubbub.transports.server import server_options

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SECRET = "test-secret-0123456789abcdef0123456789"
API_KEY = "test-api-key-0123456789abcdef"


def need_tool(name: str) -> str:
    """Path of a required executable; skip locally, fail in CI, when it is missing."""
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
    )
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is required in CI but is not installed")
        pytest.skip(f"{name} not installed")
    return path


# Debian's Chromium, headless, with no background traffic (the machine has no network).
DEBIAN_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """Debian's /usr/bin/chromium; else whatever ``chromium`` is on PATH; else skip (fail in
    CI) like every other required tool."""
    if os.access(DEBIAN_CHROMIUM, os.X_OK):
        return DEBIAN_CHROMIUM
    return need_tool("chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisProc:
    """A private redis-server: no persistence, loopback only, stopped by pid."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProc:
        exe = need_tool("redis-server")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--dir", tempfile.gettempdir(),
             *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return self
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_proc() -> Iterator[RedisProc]:
    """A fresh redis-server for this test."""
    r = RedisProc().start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[RedisProc]:
    """One redis-server for the session; tests isolate themselves with a unique key prefix."""
    r = RedisProc().start()
    try:
        yield r
    finally:
        r.stop()


def make_settings(**kw: Any) -> Settings:
    """Test settings: a JWT secret and an API key unless overridden."""
    base: dict[str, Any] = {"jwt_secret": SECRET, "api_keys": (API_KEY,), "port": 0}
    base.update(kw)
    s = Settings(**base)
    s.validate()
    return s


@dataclass
class Node:
    """A running node: real uvicorn on a real socket."""

    hub: Hub
    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    async def stop(self) -> None:
        """Drain as SIGTERM would (hubbub.drain), then stop the server."""
        app: Any = self.server.config.app
        with contextlib.suppress(Exception):
            await asyncio.wait_for(app.drain(), 15)
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self.task, 15)


async def serve(
    app: Any, settings: Settings, port: int = 0, fast_path: bool | None = None, **options: Any
) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """Serve ``app`` in this event loop on 127.0.0.1 with a node's uvicorn options
    (``server_options``; ``options`` override them, e.g. ``http="h11"``). Returns the server,
    its task and the port it listens on, once it listens."""
    opts = {**server_options(settings, fast_path), "port": port, "log_level": "warning", **options}
    server = uvicorn.Server(uvicorn.Config(app, **opts))
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server stopped during start-up")
        await asyncio.sleep(0.01)
    return server, task, server.servers[0].sockets[0].getsockname()[1]


async def start_node(settings: Settings, port: int = 0, **options: Any) -> Node:
    """Start a node in this event loop on 127.0.0.1 (port 0: any free port). ``options``
    override uvicorn's (e.g. ``http="h11"``)."""
    app = create_app(settings, handle_signals=False)
    server, task, bound = await serve(app, settings, port, **options)
    return Node(app.state.hub, server, task, bound)


@pytest.fixture
async def node_factory() -> AsyncIterator[Any]:
    """``await node_factory(**settings)`` starts a node; all are stopped after the test, once
    the test's WebSocket clients (:mod:`tests.wsclient`) are closed, so no node waits to drain
    sessions nobody reads any more."""
    from tests.wsclient import close_all  # tests.wsclient imports this module

    nodes: list[Node] = []

    async def factory(port: int = 0, **kw: Any) -> Node:
        n = await start_node(make_settings(**kw), port)
        nodes.append(n)
        return n

    yield factory
    await close_all()
    for n in nodes:
        await n.stop()


@pytest.fixture
async def node(node_factory: Any) -> Node:
    """One node on memory:// with a JWT secret and an API key."""
    return await node_factory()  # type: ignore[no-any-return]


def token(sub: str = "alice", ttl: float = 3600, **claims: Any) -> str:
    """A client JWT signed with the test secret."""
    import jwt

    body = {"sub": sub, "exp": int(time.time() + ttl), **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")
