"""Operations test harness: real nodes as subprocesses, Debian's nginx rendered from
deploy/nginx.conf, and a reconnecting WebSocket client that resumes with ``since``.

Everything binds 127.0.0.1 on free ports and is stopped by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets

from tests.conftest import API_KEY, SECRET, free_port, need_tool
from tests.wsclient import WS

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"


def hubbub_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "hubbub"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "hubbub.cli"]


# ---- nodes -------------------------------------------------------------------------------------
@dataclass
class NodeProc:
    """``hubbub serve`` in a subprocess; stderr/stdout go to ``log_path``."""

    tmp: Path
    broker: str = "memory://"
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    name: str = "node"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    @property
    def log_path(self) -> Path:
        return self.tmp / f"{self.name}-{self.port}.log"

    def start(self) -> NodeProc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        env.update(
            {
                "HUB_JWT_SECRET": SECRET,
                "HUB_API_KEYS": API_KEY,
                "HUB_LOG_LEVEL": "info",
                "HUB_API_RATE": "0",
                "HUB_CLIENT_PUBLISH_RATE": "0",
                "HUB_CLIENT_COMMAND_RATE": "0",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env)
        cmd = [*hubbub_cmd(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--broker", self.broker]  # fmt: skip
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=ROOT)  # fmt: skip
        return self

    async def wait_live(self, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        async with httpx.AsyncClient() as c:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.logs()}")
                with contextlib.suppress(httpx.HTTPError):
                    r = await c.get(self.url + "/health/ready", timeout=1)
                    if r.status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready in {within}s: {self.logs()}")

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, within: float) -> int | None:
        assert self.proc is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                return rc
            await asyncio.sleep(0.02)
        return None

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


async def start_nodes(tmp: Path, n: int, broker: str, **env: str) -> list[NodeProc]:
    nodes = [NodeProc(tmp, broker, dict(env), name=f"node{i + 1}").start() for i in range(n)]
    await asyncio.gather(*(nd.wait_live() for nd in nodes))
    return nodes


@contextlib.asynccontextmanager
async def nginx_cluster(
    tmp: Path, broker: str, n: int = 2, **env: str
) -> AsyncIterator[tuple[Nginx, list[NodeProc]]]:
    """``n`` nodes (subprocesses) on ``broker`` behind Debian's nginx rendered from
    deploy/nginx.conf; everything is stopped by pid on exit."""
    nodes = await start_nodes(tmp, n, broker, **env)
    nginx = Nginx(tmp / "nginx", [nd.port for nd in nodes])
    try:
        nginx.start()
        yield nginx, nodes
    finally:
        nginx.stop()
        for nd in nodes:
            nd.stop()


# ---- nginx -------------------------------------------------------------------------------------
_UPSTREAM_RE = re.compile(r"^(\s*)server node\d+:8000(?P<opts>[^;]*);\n", re.MULTILINE)
_LISTEN_RE = re.compile(r"^(\s*)listen 80;$", re.MULTILINE)


def render_nginx(tmp: Path, listen: int, upstreams: list[int]) -> Path:
    """deploy/nginx.conf with the test's addresses: only the ``server nodeN:8000`` lines, the
    ``listen 80`` line and the temp paths (absent from the file on purpose) change."""
    text = NGINX_CONF.read_text()
    found = _UPSTREAM_RE.findall(text)
    assert len(found) == 2, "deploy/nginx.conf must list node1 and node2 in its upstream"
    first = _UPSTREAM_RE.search(text)
    assert first is not None
    indent, opts = first.group(1), first.group("opts")
    servers = "".join(f"{indent}server 127.0.0.1:{p}{opts};\n" for p in upstreams)
    text = _UPSTREAM_RE.sub("", text)
    text = text[: first.start()] + servers + text[first.start() :]
    text, n = _LISTEN_RE.subn(rf"\g<1>listen 127.0.0.1:{listen};", text)
    assert n == 1, "deploy/nginx.conf must have exactly one `listen 80;`"
    temp = "".join(
        f"    {kind}_temp_path {tmp / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text, n = re.subn(r"^http \{\n", "http {\n" + temp, text, count=1, flags=re.MULTILINE)
    assert n == 1
    out = tmp / "nginx.conf"
    out.write_text(text)
    return out


@dataclass
class Nginx:
    tmp: Path
    upstreams: list[int]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def argv(self, conf: Path, *extra: str) -> list[str]:
        g = f"daemon off; pid {self.tmp / 'nginx.pid'}; error_log {self.tmp / 'error.log'} info;"
        return [need_tool("nginx"), "-p", str(self.tmp), "-e", str(self.tmp / "error.log"),
                "-c", str(conf), "-g", g, *extra]  # fmt: skip

    def start(self) -> Nginx:
        self.tmp.mkdir(parents=True, exist_ok=True)
        conf = render_nginx(self.tmp, self.port, self.upstreams)
        check = subprocess.run(self.argv(conf, "-t"), capture_output=True, text=True, timeout=20)
        assert check.returncode == 0, check.stderr
        with open(self.tmp / "access.log", "ab") as out:
            self.proc = subprocess.Popen(self.argv(conf), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.error_log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return self
            time.sleep(0.02)
        raise RuntimeError("nginx did not start")

    def error_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.tmp / "error.log").read_text(errors="replace")
        return ""

    def access_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.tmp / "access.log").read_text(errors="replace")
        return ""

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGQUIT)  # graceful: workers finish, master exits
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


# ---- clients -----------------------------------------------------------------------------------
def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


async def metric(client: httpx.AsyncClient, base: str, name: str) -> float:
    """The value of one sample line (``name`` includes labels) of ``base``/metrics."""
    text = (await client.get(base + "/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


@dataclass
class Publisher:
    """Publishes ``{"n": i}`` over HTTP through ``base`` every ``interval`` s. A publish that
    fails in transit (502/503/connection error) is retried with the same Idempotency-Key, so
    each ``n`` is published at most once; ``acked`` maps offset → n for 201 answers."""

    base: str
    room: str
    interval: float = 0.02
    acked: dict[int, int] = field(default_factory=dict)
    retries: int = 0
    epoch: str | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, count: int) -> None:
        async with httpx.AsyncClient(timeout=5) as c:
            for n in range(count):
                if self._stop.is_set():
                    return
                await self.publish_one(c, n)
                await asyncio.sleep(self.interval)

    async def publish_one(self, c: httpx.AsyncClient, n: int) -> None:
        key = f"pub-{self.room}-{n}"
        headers = {**auth_headers(), "Idempotency-Key": key}
        for _ in range(50):
            try:
                r = await c.post(f"{self.base}/v1/rooms/{self.room}/messages",
                                 json={"data": {"n": n}}, headers=headers)  # fmt: skip
            except httpx.HTTPError:
                r = None
            if r is not None and r.status_code == 201:
                body = r.json()
                self.acked[body["offset"]] = n
                self.epoch = body["epoch"]
                return
            assert r is None or r.status_code in (502, 503, 504), (r.status_code, r.text)
            self.retries += 1
            await asyncio.sleep(0.05)
        raise AssertionError(f"publish {n} never succeeded")

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Resumer:
    """A WebSocket client through the balancer that follows a room: on a close 4000-4499 or a
    lost connection it reconnects (backoff with jitter) and resubscribes with ``since`` = the
    last position it saw. ``received`` holds (offset, n) of every message, duplicates kept."""

    url: str
    token: str
    room: str
    presence: bool = False
    received: list[tuple[int, int]] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)
    disconnect_frames: list[dict[str, Any]] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    epoch: str | None = None
    gaps: list[dict[str, Any]] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    _stop: bool = False
    _conn: Any = None

    def start(self) -> Resumer:
        self.task = asyncio.create_task(self.run())
        return self

    @property
    def last(self) -> int:
        return self.received[-1][0] if self.received else 0

    async def run(self) -> None:
        delay = 0.05
        while not self._stop:
            try:
                await self._once()
                delay = 0.05
            except (OSError, websockets.InvalidStatus, websockets.InvalidHandshake, TimeoutError):
                self.closes.append(None)
            if self._stop:
                return
            code = self.closes[-1] if self.closes else None
            if code is not None and code >= 4500:
                return
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)

    async def _once(self) -> None:
        ws = await WS.connect(self.url, self.token, welcome=False, open_timeout=5)
        self._conn = ws.conn
        async with ws.conn:
            first = await ws.recv()
            if first["type"] == "disconnect":  # e.g. reached a draining node: go elsewhere
                self.disconnect_frames.append(first)
                code, _ = await ws.closed()
                self.closes.append(code)
                return
            assert first["type"] == "welcome", first
            self.sessions.append(first["session"])
            sub: dict[str, Any] = {"type": "subscribe", "id": 1, "room": self.room}
            if self.received or self.epoch is not None:
                sub["since"] = {"epoch": self.epoch, "offset": self.last}
            if self.presence:
                sub["presence"] = True
            await ws.send(sub)
            try:
                while True:
                    f = await ws.recv(timeout=None)
                    t = f.get("type")
                    if t == "message":
                        self.epoch = f["epoch"]
                        self.received.append((f["offset"], f["data"]["n"]))
                    elif t == "reply" and f.get("id") == 1:
                        self.epoch = f["result"]["epoch"]
                        self.connected.set()
                    elif t == "error":
                        raise AssertionError(f"subscribe failed: {f}")
                    elif t == "gap":
                        self.gaps.append(f)
                    elif t == "disconnect":
                        self.disconnect_frames.append(f)
                    elif t == "ping":
                        await ws.send({"type": "pong"})
            except websockets.ConnectionClosed:
                pass
            rcvd = ws.conn.close_code
            self.closes.append(rcvd if rcvd not in (1006,) else None)
            self.connected.clear()

    async def stop(self) -> None:
        self._stop = True
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()


@dataclass
class SseFollower:
    """An EventSource-like SSE client through the balancer: when a stream ends it reconnects
    (after the server's ``retry:`` hint, shortened) with ``Last-Event-ID``, like a browser.
    ``received`` holds (offset, n) of every message event, duplicates kept."""

    base: str
    token: str
    room: str
    received: list[tuple[int, int]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    ends: int = 0
    refused: list[int] = field(default_factory=list)
    last_id: str | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    _stop: bool = False

    @property
    def last(self) -> int:
        return self.received[-1][0] if self.received else 0

    def start(self) -> SseFollower:
        self.task = asyncio.create_task(self.run())
        return self

    async def run(self) -> None:
        url = f"{self.base}/v1/rooms/{self.room}/events"
        async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=30)) as h:
            while not self._stop:
                headers = {"Authorization": f"Bearer {self.token}"}
                if self.last_id is not None:
                    headers["Last-Event-ID"] = self.last_id
                try:
                    async with h.stream("GET", url, headers=headers) as resp:
                        if resp.status_code != 200:
                            self.refused.append(resp.status_code)
                        else:
                            await self._read(resp)
                            self.ends += 1
                except httpx.HTTPError:
                    self.refused.append(0)
                self.connected.clear()
                await asyncio.sleep(0.05 + 0.1 * random.random())

    async def _read(self, resp: httpx.Response) -> None:
        block: dict[str, str] = {}
        async for line in resp.aiter_lines():
            if self._stop:
                return
            if line == "":
                self._event(block)
                block = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                block[name] = block[name] + "\n" + value if name in block else value

    def _event(self, block: dict[str, str]) -> None:
        if "id" in block:
            self.last_id = block["id"]
            self.connected.set()
        event = block.get("event", "message")
        if event == "message" and "data" in block:
            frame = json.loads(block["data"])
            self.received.append((frame["offset"], frame["data"]["n"]))
        elif event == "hub.gap":
            self.gaps.append(json.loads(block["data"]))

    async def stop(self) -> None:
        self._stop = True
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def check_exactly_once(c: Resumer | SseFollower, acked: dict[int, int]) -> None:
    """Every acked publication arrived once, in offset order, with the right payload."""
    offsets = [o for o, _ in c.received]
    assert offsets == sorted(set(offsets)), f"duplicates or disorder: {offsets}"
    got = dict(c.received)
    missing = sorted(set(acked) - set(got))
    assert not missing, f"lost offsets {missing[:20]} (client saw {len(got)} messages)"
    for off, n in acked.items():
        assert got[off] == n, (off, got[off], n)
    assert not c.gaps, c.gaps
