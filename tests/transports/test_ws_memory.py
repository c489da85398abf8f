"""What keeps an idle WebSocket connection small (bench/idle-memory.md), and that the behaviour
around it holds: the protocol's list-based inbox and flag, one task per idle connection (the
writer task only while frames wait, a task handling client frames only while some wait), a
close interrupting what is being handled, ``/v1/ws`` past
Starlette's router. Real uvicorn and real ``websockets`` clients."""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets

from hubbub.hub.auth import Identity
from hubbub.hub.clock import wheel
from hubbub.hub.session import Session
from hubbub.transports.flow import Flag
from hubbub.transports.websocket import _Link
from hubbub.transports.wsconn import WSConnection
from tests.conftest import Node, token
from tests.helpers import until
from tests.wsclient import WS

DEADLINE = 5.0


# ---- flag ------------------------------------------------------------------------------


async def test_flag_waits_until_set() -> None:
    flag = Flag()
    assert flag.is_set()
    await asyncio.wait_for(flag.wait(), DEADLINE)
    flag.clear()
    waiter = asyncio.create_task(flag.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    flag.set()
    await asyncio.wait_for(waiter, DEADLINE)
    assert flag._waiters is None


# ---- session ---------------------------------------------------------------------------------------


async def test_one_loop_timer_for_every_deadline() -> None:
    s = Session(Identity(sub="a", grants={}, exp=time.time() + 3600), "ws")
    assert s._queue is None and s._waiter is None  # nothing allocated before it is needed
    s.start_heartbeat(25, 10, client_pongs=True)
    w = wheel()
    first = s._tick
    assert s in w.buckets[first]
    s.arm_expiry(lambda left: None)
    assert set(s.deadlines) == {"ping", "dead", "expiring", "expired"}
    assert s._tick == first  # the ping is still the earliest deadline
    assert sum(s in b for b in w.buckets.values()) == 1  # one wheel entry, whatever is pending
    s.close(1000, "done")
    assert s._tick == 0 and not s.deadlines and first not in w.buckets


# ---- connections -----------------------------------------------------------------------------------


def _links(node: Node) -> list[_Link]:
    links = []
    for s in node.hub.sessions.values():
        waker = s.waker
        assert waker is not None
        links.append(waker.__self__)  # type: ignore[attr-defined]
    return links


async def test_idle_connection_runs_no_writer_task(node: Node) -> None:
    clients = [await WS.connect(node.ws_url, token(f"u{i}")) for i in range(3)]
    for c in clients:
        await c.result({"type": "subscribe", "room": "idle"})
    links = _links(node)
    assert len(links) == 3
    await until(lambda: all(link.writer is None for link in links))
    for link in links:
        proto = link.proto
        assert isinstance(proto, WSConnection)
        assert isinstance(proto.inbox, list) and isinstance(proto.writable, Flag)
        assert proto.request is None and proto.http is None  # the handshake is let go
        assert proto.scope["headers"] == []  # let go once the client is authenticated
        # No task or coroutine while idle: the ASGI call returned holding the connection; a
        # task handles client frames only while some wait.
        assert proto.held and proto.listener == link.heard
        assert link.reader is None and link.worker is None and link.ending is None
    # Fan-out still reaches everyone, in order, without a writer task.
    for i in range(5):
        await node.hub.publish(Identity(sub="svc", grants={"publish": ("*",)}), "idle", i)
    for c in clients:
        assert [m["data"] for m in await c.messages(5)] == [0, 1, 2, 3, 4]
    assert all(link.writer is None for link in links)
    for c in clients:
        await c.close()


async def test_writer_task_runs_while_frames_wait_and_keeps_order(node: Node) -> None:
    ws = await WS.connect(node.ws_url, token("alice"))
    await ws.result({"type": "subscribe", "room": "flow"})
    (link,) = _links(node)
    proto = link.proto
    assert proto is not None
    publisher = Identity(sub="svc", grants={"publish": ("*",)})
    await node.hub.publish(publisher, "flow", 0)  # written directly
    proto.writable.clear()  # as if the socket were over its high-water mark
    for i in range(1, 4):
        await node.hub.publish(publisher, "flow", i)  # queued: the writer task waits
    assert link.writer is not None and not link.writer.done()
    proto.writable.set()
    await until(lambda: link.writer is None)
    await node.hub.publish(publisher, "flow", 4)  # direct again
    assert [m["data"] for m in await ws.messages(5)] == [0, 1, 2, 3, 4]
    await ws.close()


async def test_close_ends_an_idle_connection(node: Node) -> None:
    ws = await WS.connect(node.ws_url, token("bob"))
    (link,) = _links(node)
    assert link.ending is None
    await node.hub.disconnect_user("bob", "go away")
    code, frames = await ws.closed()
    assert code == 4509
    assert frames[-1]["type"] == "disconnect" and frames[-1]["code"] == 4509
    await until(lambda: not node.hub.sessions)
    ending = link.ending
    assert ending is not None
    await until(ending.done)
    assert link.worker is None and link.proto is not None and link.proto.listener is None


async def test_client_going_away_closes_the_session(node: Node) -> None:
    ws = await WS.connect(node.ws_url, token("erin"))
    await ws.result({"type": "subscribe", "room": "gone"})
    (link,) = _links(node)
    await ws.close()
    await until(lambda: not node.hub.sessions)
    assert link.session.closed is not None and link.session.closed.code == 1000
    ending = link.ending
    assert ending is not None
    await until(ending.done)


async def test_frames_handled_by_a_task_only_while_they_wait(node: Node) -> None:
    ws = await WS.connect(node.ws_url, token("carol"))
    (link,) = _links(node)
    for i in range(20):  # back to back: handled in order by one task, which then ends
        await ws.send({"type": "subscribe", "room": f"r{i}", "id": i + 1})
    ids: list[int] = []
    while len(ids) < 20:
        frame = await ws.recv()
        assert frame["type"] in ("reply", "ping"), frame
        if frame["type"] == "reply":
            ids.append(frame["id"])
    assert ids == list(range(1, 21))
    await until(lambda: link.worker is None)
    assert link.session.subs.keys() == {f"r{i}" for i in range(20)}
    await ws.close()
    await until(lambda: not node.hub.sessions)


async def test_close_interrupts_a_frame_being_handled(node: Node) -> None:
    ws = await WS.connect(node.ws_url, token("dave"))
    (link,) = _links(node)
    session = link.session
    started = asyncio.Event()
    cancelled = asyncio.Event()
    handler = link.handler
    assert handler is not None

    async def slow(frame: dict[str, object]) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    handler.handle = slow  # type: ignore[method-assign]
    await ws.send({"type": "subscribe", "room": "slow", "id": 1})
    await asyncio.wait_for(started.wait(), 5)
    session.close(4000, "draining")
    await asyncio.wait_for(cancelled.wait(), 5)
    code, _frames = await ws.closed()
    assert code == 4000
    await until(lambda: not node.hub.sessions)


async def test_other_websocket_paths_still_go_through_starlette(node: Node) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(node.ws_url.replace("/v1/ws", "/v1/wsx"))
    assert info.value.response.status_code == 403  # no such WebSocket route
    ws = await WS.connect(node.ws_url + "?x=1", token("carol"))
    assert ws.welcome["user"] == "carol"
    await ws.close()
