"""Node faults behind nginx (hardening cases 39, 40; PROTOCOL.md §7): SIGTERM drains a node
mid-traffic, SIGKILL kills one; clients resume on the other node with nothing lost.

Two ``hubbub serve`` subprocesses on one private Redis, Debian's nginx in front (the
deploy/nginx.conf file), WebSocket clients that reconnect through nginx and resubscribe with
``since``, and a publisher publishing steadily over HTTP through nginx.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RedisProc, token
from tests.helpers import until
from tests.ops.harness import (
    Nginx,
    NodeProc,
    Publisher,
    Resumer,
    SseFollower,
    auth_headers,
    check_exactly_once,
    metric,
    nginx_cluster,
)
from tests.wsclient import WS

pytestmark = pytest.mark.timeout(90)

SHUTDOWN_TIMEOUT = 6.0
PRESENCE_TTL = 2.0
CLIENTS = 6
MESSAGES = 150


@pytest.fixture
async def cluster(
    redis_proc: RedisProc, tmp_path: Path
) -> AsyncIterator[tuple[Nginx, list[NodeProc]]]:
    async with nginx_cluster(
        tmp_path,
        redis_proc.url,
        HUB_SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
        HUB_PRESENCE_TTL=str(PRESENCE_TTL),
    ) as running:
        yield running


async def _connect_clients(nginx: Nginx, room: str, presence: bool) -> list[Resumer]:
    clients = [
        Resumer(nginx.ws_url, token(f"user{i}"), room, presence=presence) for i in range(CLIENTS)
    ]
    for c in clients:
        c.start()
    await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in clients)), 10)
    return clients


async def _settle(clients: list[Resumer | SseFollower], pub: Publisher, within: float = 15) -> None:
    """Wait until every client has seen the last acked offset."""
    head = max(pub.acked)
    try:
        await until(lambda: all(c.last >= head for c in clients), within, f"offset {head}")
    except AssertionError as exc:
        lags = [(c.last, len(c.received), c.closes) for c in clients]
        raise AssertionError(f"clients did not catch up to {head}: {lags}") from exc


async def _stop_clients(clients: list[Resumer]) -> None:
    for c in clients:
        await c.stop()
    await asyncio.gather(*(c.task for c in clients if c.task is not None))


async def test_sigterm_drains_mid_traffic_without_loss(
    cluster: tuple[Nginx, list[NodeProc]],
) -> None:
    nginx, nodes = cluster
    victim, survivor = nodes
    clients = await _connect_clients(nginx, "drain", presence=False)
    # Two EventSource-like followers too: their streams end on the drain and they resume
    # with Last-Event-ID through nginx.
    followers = [SseFollower(nginx.url, token(f"reader{i}"), "drain").start() for i in range(2)]
    await asyncio.wait_for(asyncio.gather(*(f.connected.wait() for f in followers)), 10)
    async with httpx.AsyncClient(timeout=5) as h:
        on_victim = await metric(h, victim.url, 'hubbub_connections{transport="ws"}')
        sse_on_victim = await metric(h, victim.url, 'hubbub_connections{transport="sse"}')
        assert on_victim >= 2, "least_conn should put clients on both nodes"

    pub = Publisher(nginx.url, "drain", interval=0.01)
    publishing = asyncio.create_task(pub.run(MESSAGES))
    await until(lambda: len(pub.acked) >= MESSAGES // 3, 30, "a third of the messages acked")

    # A keep-alive connection opened before SIGTERM watches the victim's readiness while it
    # drains (the listening socket closes at once, so new connections are refused).
    statuses: list[int] = []
    async with httpx.AsyncClient(
        timeout=2, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)
    ) as watch:
        assert (await watch.get(victim.url + "/health/ready")).status_code == 200

        async def poll_ready() -> None:
            while True:
                try:
                    statuses.append((await watch.get(victim.url + "/health/ready")).status_code)
                except httpx.HTTPError:
                    return
                await asyncio.sleep(0.01)

        poller = asyncio.create_task(poll_ready())
        await asyncio.sleep(0.05)
        sent = time.monotonic()
        victim.signal(signal.SIGTERM)
        rc = await victim.wait_exit(SHUTDOWN_TIMEOUT + 5)
        took = time.monotonic() - sent
        poller.cancel()
    assert rc == 0, victim.logs()[-3000:]
    assert took <= SHUTDOWN_TIMEOUT + 1.0, f"drain took {took:.1f}s"
    assert 503 in statuses, f"ready never turned 503 during the drain: {statuses}"

    await publishing
    await _settle([*clients, *followers], pub)
    await _stop_clients(clients)
    for f in followers:
        await f.stop()
        check_exactly_once(f, pub.acked)
    assert sum(f.ends for f in followers) >= sse_on_victim  # the drained node ended its streams

    moved = [c for c in clients if 4000 in c.closes]
    assert len(moved) == on_victim, [c.closes for c in clients]
    for c in moved:
        assert any(f["code"] == 4000 and f["reconnect"] is True for f in c.disconnect_frames), (
            c.disconnect_frames
        )
        assert len(c.sessions) >= 2  # reconnected (to the survivor) after the drain
    for c in clients:
        check_exactly_once(c, pub.acked)
    assert len(pub.acked) == MESSAGES
    assert survivor.proc is not None and survivor.proc.poll() is None


async def test_sigkill_mid_stream_resumes_and_presence_expires(
    cluster: tuple[Nginx, list[NodeProc]],
) -> None:
    nginx, nodes = cluster
    victim, survivor = nodes
    clients = await _connect_clients(nginx, "chat:kill", presence=True)
    async with httpx.AsyncClient(timeout=5) as h:
        on_victim = int(await metric(h, victim.url, 'hubbub_connections{transport="ws"}'))
        assert on_victim >= 2
        pres = (await h.get(f"{survivor.url}/v1/rooms/chat:kill/presence",
                            headers=auth_headers())).json()  # fmt: skip
        assert pres["sessions"] == CLIENTS, pres

        pub = Publisher(nginx.url, "chat:kill", interval=0.01)
        publishing = asyncio.create_task(pub.run(MESSAGES))
        await until(lambda: len(pub.acked) >= MESSAGES // 3, 30, "a third of the messages acked")
        before = {c.sessions[-1] for c in clients}
        victim.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await publishing
        await _settle(clients, pub)

        lost = [c for c in clients if len(c.sessions) >= 2]
        assert len(lost) == on_victim, [c.closes for c in clients]
        dead = {c.sessions[0] for c in lost}
        live = {c.sessions[-1] for c in clients}
        assert dead <= before
        # The killed node's presence entries vanish within the presence TTL (nobody removes
        # them: the node is gone); the reconnected sessions are members again.
        while True:
            pres = (await h.get(f"{survivor.url}/v1/rooms/chat:kill/presence",
                                headers=auth_headers())).json()  # fmt: skip
            sessions = {m["session"] for m in pres["members"]}
            if not sessions & dead:
                break
            assert time.monotonic() - killed_at < PRESENCE_TTL + 2.0, (sessions, dead)
            await asyncio.sleep(0.1)
        assert sessions == live, (sessions, live)
        # So do its room session counts (GET /v1/rooms): only the live sessions are counted.
        while True:
            r = await h.get(f"{survivor.url}/v1/rooms", params={"prefix": "chat:kill"},
                            headers=auth_headers())  # fmt: skip
            counts = {x["room"]: x["sessions"] for x in r.json()["rooms"]}
            if counts.get("chat:kill") == CLIENTS:
                break
            assert time.monotonic() - killed_at < PRESENCE_TTL + 2.0, counts
            await asyncio.sleep(0.1)
    await _stop_clients(clients)
    for c in clients:
        check_exactly_once(c, pub.acked)


async def test_sigterm_drains_every_worker(redis_proc: RedisProc, tmp_path: Path) -> None:
    """``hubbub serve --workers 2``: each worker drains like a single node (4000, not 1012)."""
    node = NodeProc(tmp_path, redis_proc.url,
                    {"HUB_WORKERS": "2", "HUB_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT)})  # fmt: skip
    node.start()
    try:
        await node.wait_live()
        clients = [await WS.connect(node.ws_url, token(f"w{i}")) for i in range(6)]
        for c in clients:
            await c.result({"type": "subscribe", "room": "workers"})
        sent = time.monotonic()
        node.signal(signal.SIGTERM)
        for c in clients:
            code, frames = await c.closed(SHUTDOWN_TIMEOUT + 2)
            assert code == 4000, (code, frames)
            assert frames[-1]["type"] == "disconnect" and frames[-1]["reconnect"] is True
        rc = await node.wait_exit(SHUTDOWN_TIMEOUT + 5)
        assert rc == 0, node.logs()[-3000:]
        assert time.monotonic() - sent <= SHUTDOWN_TIMEOUT + 1.0
    finally:
        node.stop()


async def test_sigterm_with_a_client_that_stopped_reading(tmp_path: Path) -> None:
    """A client that stopped reading (its close frame stuck behind megabytes of backlog) does
    not stretch the drain: the node still exits 0 within HUB_SHUTDOWN_TIMEOUT."""
    timeout = 3.0
    node = NodeProc(tmp_path, env={"HUB_SHUTDOWN_TIMEOUT": str(timeout),
                                   "HUB_MAX_QUEUE": "100000",
                                   "HUB_MAX_QUEUE_BYTES": "500000000"})  # fmt: skip
    node.start()
    try:
        await node.wait_live()
        stuck = await WS.connect(node.ws_url, token("stuck"), max_queue=1)
        await stuck.result({"type": "subscribe", "room": "big"})
        fine = await WS.connect(node.ws_url, token("fine"))
        big = "x" * 60_000
        async with httpx.AsyncClient(timeout=5) as h:
            for _ in range(200):  # ~12 MB for a client that reads nothing more
                r = await h.post(f"{node.url}/v1/rooms/big/messages", json={"data": big},
                                 headers=auth_headers())  # fmt: skip
                assert r.status_code == 201
        sent = time.monotonic()
        node.signal(signal.SIGTERM)
        code, _ = await fine.closed(timeout + 2)
        assert code == 4000
        rc = await node.wait_exit(2 * timeout + 5)
        took = time.monotonic() - sent
        assert rc == 0, node.logs()[-3000:]
        assert took <= timeout + 0.5, f"drain took {took:.2f}s with HUB_SHUTDOWN_TIMEOUT={timeout}"
        stuck.conn.transport.abort()  # type: ignore[attr-defined]
    finally:
        node.stop()
