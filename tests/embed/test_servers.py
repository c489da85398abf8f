"""Hubbub as a plain ASGI app, mounted under ``/hub`` inside a FastAPI application
(tests/embed/fastapi_app.py), served by stock ASGI servers: uvicorn with its own protocols
(httptools + websockets-sansio, h11 + wsproto) and hypercorn. None of them offers Hubbub's
direct-write path, so this is the plain-ASGI path end to end: pages, WebSocket
subscribe/publish/resume, SSE resume, HTTP and in-process publishes, and the drain on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import API_KEY, SECRET, free_port, token
from tests.wsclient import WS

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.embed.fastapi_app:app"

SERVERS = {
    "uvicorn-httptools": ["-m", "uvicorn", APP, "--http", "httptools", "--ws", "websockets-sansio"],
    "uvicorn-h11-wsproto": ["-m", "uvicorn", APP, "--http", "h11", "--ws", "wsproto"],
    # One process: hypercorn signals only its own process (its default, a parent with
    # spawned workers, tells the workers through an Event, which no app can see).
    "hypercorn": ["-m", "hypercorn", APP, "--workers", "0", "--graceful-timeout", "10"],
}


def wait_ready(proc: subprocess.Popen[bytes], hub: str, log: Path) -> None:
    """Until ``hub``/health/ready answers 200 (the server's output in the failure)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{hub}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"server did not become ready:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.base = f"http://127.0.0.1:{port}"
        self.hub = f"{self.base}/hub"
        self.ws = f"ws://127.0.0.1:{port}/hub/v1/ws"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(params=list(SERVERS))
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    args = list(SERVERS[request.param])
    if request.param == "hypercorn":
        args += ["--bind", f"127.0.0.1:{port}"]
    else:
        args += ["--host", "127.0.0.1", "--port", str(port)]
    env = {
        **os.environ,
        "HUB_JWT_SECRET": SECRET,
        "HUB_API_KEYS": API_KEY,
        "HUB_BROKER_URL": "memory://",
        "HUB_SHUTDOWN_TIMEOUT": "6",
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    s = Served(proc, port, log)
    try:
        wait_ready(proc, s.hub, log)
        yield s
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def api() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


async def sse_events(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> AsyncIterator[dict[str, Any]]:
    """Events of one SSE stream as dicts (``id``, ``event``, ``data``); comments skipped."""
    async with client.stream("GET", url, headers=headers) as resp:
        assert resp.status_code == 200, await resp.aread()
        event: dict[str, Any] = {}
        async for line in resp.aiter_lines():
            if line == "":
                if "data" in event or "event" in event:
                    yield event
                event = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                event[name] = value[1:] if value.startswith(" ") else value


async def test_mounted_app_serves_everything_and_drains(served: Served) -> None:
    tok = token("alice", hub={"subscribe": ["*"], "publish": ["*"]})
    async with httpx.AsyncClient(timeout=5) as client:
        # The pages and the scripts they load, under the prefix.
        for path in ("/", "/events", "/call", "/admin", "/static/hubbub.js"):
            r = await client.get(served.hub + path)
            assert r.status_code == 200, (path, r.status_code)
        # An HTTP publish with an API key, then an in-process publish from the FastAPI route.
        r = await client.post(
            f"{served.hub}/v1/rooms/orders/messages", headers=api(), json={"data": {"n": 1}}
        )
        assert r.status_code == 201, r.text
        first = r.json()
        assert first["offset"] == 1
        r = await client.post(f"{served.base}/orders/42")
        assert r.status_code == 200, r.text
        assert r.json()["offset"] == 2 and r.json()["room"] == "orders"

        # WebSocket: subscribe from the first cursor (resume), publish, receive live.
        ws = await WS.connect(served.ws, tok)
        result = await ws.result({"type": "subscribe", "room": "orders", "since": first["cursor"]})
        assert result["recovered"] is True and result["offset"] == 2
        replayed = await ws.next("message")
        assert replayed["offset"] == 2 and replayed["data"] == {"order": "42"}
        await ws.result({"type": "publish", "room": "orders", "data": 3})
        live = await ws.next("message")
        assert live["offset"] == 3 and live["from"]["user"] == "alice"
        await ws.close()
        r = await client.post(
            f"{served.hub}/v1/rooms/orders/messages", headers=api(), json={"data": 4}
        )
        third = r.json()
        assert third["offset"] == 4
        ws = await WS.connect(served.ws, tok)
        since = {"epoch": third["epoch"], "offset": 3}
        await ws.result({"type": "subscribe", "room": "orders", "since": since})
        missed = await ws.next("message")
        assert missed["offset"] == 4 and missed["data"] == 4
        await ws.close()

        # SSE: resume with Last-Event-ID from the first publication.
        url = f"{served.hub}/v1/rooms/orders/events?token={tok}"
        got: list[int] = []
        stream = sse_events(client, url, {"Last-Event-ID": first["cursor"]})
        async for ev in stream:
            if ev.get("event") == "message" or ev.get("event") == "order.created":
                got.append(json.loads(ev["data"])["offset"])
            if got and got[-1] == 4:
                break
        await stream.aclose()
        assert got == [2, 3, 4]

        # SIGTERM with a WebSocket and an SSE stream open: both are told to reconnect (4000 /
        # hub.disconnect), and the server exits promptly.
        sse_done: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()

        async def follow() -> None:
            names: list[str] = []
            try:
                async for ev in sse_events(client, url, {}):
                    names.append(ev.get("event", "message"))
                    if len(names) == 1:
                        opened.set()
            except httpx.HTTPError as exc:
                names.append(f"error {exc!r}")
            sse_done.set_result(names)

        opened = asyncio.Event()
        follower = asyncio.create_task(follow())
        ws = await WS.connect(served.ws, tok)
        await ws.join("orders", presence=False)
        r = await client.post(
            f"{served.hub}/v1/rooms/orders/messages", headers=api(), json={"data": 5}
        )
        await asyncio.wait_for(opened.wait(), 5)
        started = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        bye = await ws.next("disconnect", timeout=8)
        assert bye["code"] == 4000 and bye["reconnect"] is True
        code, _ = await ws.closed()
        assert code == 4000
        names = await asyncio.wait_for(sse_done, 8)
        await follower
        assert names[-1] == "hub.disconnect", names
    rc = await asyncio.get_running_loop().run_in_executor(None, served.proc.wait, 10)
    assert time.monotonic() - started < 8
    assert rc in (0, -signal.SIGTERM), rc
    out = served.output()
    assert "Traceback" not in out and "CancelledError" not in out, out
    assert "no drain on SIGTERM" not in out, out


def test_hypercorn_worker_processes_are_named_in_the_log(tmp_path: Path) -> None:
    """hypercorn's default (a parent process with spawned workers) stops its workers without a
    signal, so no app can drain there (docs/embedding.md): the node says so at start-up
    instead of cutting its streams silently at shutdown."""
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "HUB_JWT_SECRET": SECRET, "HUB_API_KEYS": API_KEY,
           "HUB_BROKER_URL": "memory://", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hypercorn", APP, "--bind", f"127.0.0.1:{port}",
             "--graceful-timeout", "1"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/hub", log)
        text = log.read_text()
        assert "no drain on SIGTERM" in text and "hypercorn worker" in text, text
        assert "--workers 0" in text, text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
