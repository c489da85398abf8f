"""SSE transport (PROTOCOL.md §4) against a real uvicorn node and an httpx streaming client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from hubbub.hub.auth import Identity
from hubbub.hub.envelope import Position, make_cursor, parse_cursor
from hubbub.hub.session import Session
from tests.conftest import API_KEY, Node, make_settings, start_node, token
from tests.helpers import until

BACKEND = Identity(sub="backend", api_key=True)


@dataclass
class Event:
    event: str = "message"
    data: str | None = None
    id: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        assert self.data is not None
        return json.loads(self.data)


class Stream:
    """Reads SSE blocks (WHATWG HTML §9.2 field parsing, enough for our server)."""

    def __init__(self, resp: httpx.Response) -> None:
        self.resp = resp
        self.lines = resp.aiter_lines()
        self.first = Event()  # the first block, once read by sse()

    async def block(self, within: float = 5.0) -> Event | None:
        """The next block (comments included), or None at the end of the stream."""
        ev = Event()
        seen = False
        while True:
            try:
                line = await asyncio.wait_for(anext(self.lines), within)
            except StopAsyncIteration:
                return ev if seen else None
            if line == "":
                if seen:
                    return ev
                continue
            seen = True
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                ev.comments.append(value)
            elif name == "event":
                ev.event = value
            elif name == "data":
                ev.data = value if ev.data is None else ev.data + "\n" + value
            elif name == "id":
                ev.id = value
            elif name == "retry":
                ev.retry = int(value)

    async def event(self, within: float = 5.0) -> Event | None:
        """The next block that is not only a comment."""
        while True:
            ev = await self.block(within)
            if ev is None or ev.data is not None or ev.id is not None or ev.retry is not None:
                return ev

    async def events(self, n: int, within: float = 5.0) -> list[Event]:
        out: list[Event] = []
        for _ in range(n):
            ev = await self.event(within)
            assert ev is not None, f"stream ended after {len(out)} of {n} events"
            out.append(ev)
        return out

    async def rest(self, within: float = 5.0) -> list[Event]:
        """Every event until the stream ends."""
        out: list[Event] = []
        while (ev := await self.event(within)) is not None:
            out.append(ev)
        return out


@contextlib.asynccontextmanager
async def sse(
    node: Node,
    path: str = "/v1/rooms/r/events",
    *,
    tok: str | None = None,
    headers: dict[str, str] | None = None,
    first: bool = True,
) -> AsyncIterator[tuple[httpx.Response, Stream]]:
    """Open a stream; with ``first``, check and consume the first block."""
    h = dict(headers or {})
    if tok is None:
        tok = token("alice")
    if tok:
        h["Authorization"] = f"Bearer {tok}"
    async with (
        httpx.AsyncClient(base_url=node.url, timeout=10) as client,
        client.stream("GET", path, headers=h) as resp,
    ):
        s = Stream(resp)
        if first and resp.status_code == 200:
            ev = await s.block()
            assert ev is not None and ev.retry is not None and ev.id and ev.data is None, ev
            s.first = ev
        yield resp, s


async def publish(node: Node, room: str, n: int = 1, **kw: Any) -> list[dict[str, Any]]:
    return [await node.hub.publish(BACKEND, room, {"n": i}, **kw) for i in range(n)]


async def wait_sessions(node: Node, n: int = 0, within: float = 3.0) -> None:
    await until(lambda: len(node.hub.sessions) == n, within, f"{n} sessions on the node")


async def _stream_that_stops_reading(node: Node) -> tuple[asyncio.StreamWriter, Session]:
    """A raw SSE stream of room ``r`` whose client reads nothing more once the stream is open
    (its transport paused, so the kernel buffers fill and the server's writes block)."""
    _, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(
        f"GET /v1/rooms/r/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\r\n"
        .encode()
    )  # fmt: skip
    await writer.drain()
    await wait_sessions(node, 1)
    transport = writer.transport
    assert isinstance(transport, asyncio.Transport)
    transport.pause_reading()
    return writer, next(iter(node.hub.sessions.values()))


def offsets(events: list[Event], room: str | None = None) -> list[int]:
    return [
        e.json["offset"]
        for e in events
        if e.event not in ("hub.gap",) and (room is None or e.json["room"] == room)
    ]


# ---- format -------------------------------------------------------------------------------
async def test_headers_first_block_and_event_format(node: Node) -> None:
    await publish(node, "r", 2)  # history before the stream: not replayed without since
    async with sse(node) as (resp, s):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] in ("no-cache", "no-store")
        assert resp.headers["x-accel-buffering"] == "no"
        first = s.first
        assert first.retry == 2000
        epoch, head = await node.hub.broker.position("r")
        assert head == 2
        assert first.id == make_cursor({"r": Position(epoch, 2)})  # the head: live room
        await node.hub.publish(BACKEND, "r", {"hello": "wörld"}, event="chat")
        await node.hub.publish(BACKEND, "r", [1, 2])
        a, b = await s.events(2)
        page = await node.hub.broker.history("r", after=2, limit=10)
        assert [a.data, b.data] == [p.text for p in page.publications]  # the WS bytes
        assert (a.event, b.event) == ("chat", "message")
        assert a.id == make_cursor({"r": Position(epoch, 3)})
        assert b.id == make_cursor({"r": Position(epoch, 4)})
        assert a.json["data"] == {"hello": "wörld"} and a.json["type"] == "message"


async def test_ephemeral_has_no_id(node: Node) -> None:
    async with sse(node) as (_, s):
        await node.hub.publish(BACKEND, "r", {"typing": True}, ephemeral=True)
        await publish(node, "r")
        eph, stored = await s.events(2)
        assert eph.id is None and "offset" not in eph.json
        assert stored.id is not None and stored.json["offset"] == 1


async def test_heartbeat_comment(node_factory: Any) -> None:
    node = await node_factory(sse_ping_interval=0.2)
    async with sse(node) as (_, s):
        ev = await s.block(within=2)
        assert ev is not None and ev.comments == ["ping"] and ev.data is None


async def test_head_opens_no_session(node: Node) -> None:
    async with httpx.AsyncClient(base_url=node.url) as c:
        r = await c.head("/v1/rooms/r/events", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert not node.hub.sessions


# ---- auth and validation --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "tok", "status", "code"),
    [
        ("/v1/rooms/r/events", "", 401, "unauthorized"),
        ("/v1/rooms/r/events", "not.a.jwt", 401, "unauthorized"),
        ("/v1/rooms/r/events", token("alice", ttl=-10), 401, "unauthorized"),
        ("/v1/rooms/r/events", token("alice", hub={"subscribe": ["other"]}), 403, "forbidden"),
        (
            "/v1/events?room=other&room=r",
            token("a", hub={"subscribe": ["other"]}),
            403,
            "forbidden",
        ),
        ("/v1/rooms/r/events?presence=1", token("a", hub={"subscribe": ["r"]}), 403, "forbidden"),
        ("/v1/rooms/..../events", None, 400, "bad_request"),
        ("/v1/events", None, 400, "bad_request"),
        ("/v1/events?" + "&".join(f"room=r{i}" for i in range(33)), None, 400, "bad_request"),
        ("/v1/events?room=a%0d%0ab", None, 400, "bad_request"),
        ("/v1/rooms/r/events?presence=maybe", None, 400, "bad_request"),
    ],
)
async def test_refusals_before_the_stream(
    node: Node, path: str, tok: str | None, status: int, code: str
) -> None:
    async with sse(node, path, tok=tok) as (resp, _):
        assert resp.status_code == status
        assert resp.headers["content-type"] == "application/json"
        body = json.loads(await resp.aread())
        assert body["error"]["code"] == code
        if status == 401:
            assert resp.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert not node.hub.sessions


async def test_credentials_cookie_query_and_duplicates(node: Node) -> None:
    tok = token("bob")
    async with (
        httpx.AsyncClient(base_url=node.url, cookies={"hubbub_token": tok}) as c,
        c.stream("GET", "/v1/events?room=a&room=a&room=b") as resp,
    ):
        assert resp.status_code == 200
        assert {s.identity.sub for s in node.hub.sessions.values()} == {"bob"}
        assert sorted(next(iter(node.hub.sessions.values())).subs) == ["a", "b"]
    async with (
        httpx.AsyncClient(base_url=node.url) as c,
        c.stream("GET", f"/v1/rooms/r/events?token={tok}") as resp,
    ):
        assert resp.status_code == 200


async def test_origin_checks(node_factory: Any) -> None:
    node = await node_factory(allowed_origins=("https://app.example.com",))
    bad = {"Origin": "https://app.example.com.evil.com"}
    async with sse(node, headers=bad) as (resp, _):
        assert resp.status_code == 403
        assert "access-control-allow-origin" not in resp.headers
    good = {"Origin": "https://app.example.com"}
    async with sse(node, headers=good) as (resp, _):
        assert resp.status_code == 200
        assert resp.headers["access-control-allow-origin"] == "https://app.example.com"
        assert resp.headers["access-control-allow-credentials"] == "true"


# ---- resume ----------------------------------------------------------------------------------
async def test_resume_one_room_no_gap_no_duplicate(node: Node) -> None:
    await publish(node, "r", 3)
    async with sse(node, "/v1/rooms/r/events?since=0") as (resp, s):
        assert resp.headers["hubbub-last-event-id"] != "earliest"
        got = await s.events(3)
        assert offsets(got) == [1, 2, 3]
        last = got[-1].id
    assert last is not None
    await publish(node, "r", 2)

    # Publish while the resumed stream subscribes: the seam has no gap and no duplicate.
    async def publisher() -> None:
        for _ in range(20):
            await publish(node, "r")
            await asyncio.sleep(0.002)

    task = asyncio.create_task(publisher())
    async with sse(node, headers={"Last-Event-ID": last}) as (_, s):
        assert s.first.id == last
        got = await s.events(22)
        await task
        assert offsets(got) == list(range(4, 26))
        assert all(e.event == "message" for e in got)


async def test_first_block_id_is_the_resume_position(node: Node) -> None:
    """A browser reconnecting right after the first block must still get the replay."""
    res = await publish(node, "r", 5)
    since = res[1]["cursor"]  # offset 2
    async with sse(node, headers={"Last-Event-ID": since}) as (_, s):
        first_id = s.first.id
        assert first_id is not None and first_id == since
    async with sse(node, headers={"Last-Event-ID": first_id}) as (_, s):
        assert offsets(await s.events(3)) == [3, 4, 5]


async def test_resume_several_rooms(node: Node) -> None:
    await publish(node, "a", 2)
    await publish(node, "b", 3)
    path = "/v1/events?room=a&room=b"
    async with sse(node, path + "&since=0") as (_, s):
        got = await s.events(5)
        assert sorted(offsets(got, "a")) == [1, 2] and offsets(got, "b") == [1, 2, 3]
        await publish(node, "a")
        (ev,) = await s.events(1)
        last = ev.id
    assert last is not None
    await publish(node, "a", 2)
    await publish(node, "b", 2)
    async with sse(node, path, headers={"Last-Event-ID": last}) as (_, s):
        got = await s.events(4)
        assert offsets(got, "a") == [4, 5] and offsets(got, "b") == [4, 5]
        await publish(node, "b")
        (ev,) = await s.events(1)
        assert ev.json["offset"] == 6 and ev.json["room"] == "b"
        epa, _ = await node.hub.broker.position("a")
        epb, _ = await node.hub.broker.position("b")
        assert ev.id == make_cursor({"a": Position(epa, 5), "b": Position(epb, 6)})


async def test_header_wins_over_since(node: Node) -> None:
    res = await publish(node, "r", 4)
    path = f"/v1/rooms/r/events?since={res[0]['cursor']}"
    async with sse(node, path, headers={"Last-Event-ID": res[2]["cursor"]}) as (_, s):
        assert offsets(await s.events(1)) == [4]


async def test_gap_when_history_was_trimmed(node_factory: Any) -> None:
    node = await node_factory(history_size=5)
    res = await publish(node, "r", 20)
    async with sse(node, headers={"Last-Event-ID": res[1]["cursor"]}) as (resp, s):
        assert resp.status_code == 200
        assert resp.headers["hubbub-last-event-id"] == "earliest"
        gap, *rest = await s.events(6)
        epoch = res[0]["epoch"]
        assert gap.event == "hub.gap"
        assert gap.json == {"type": "gap", "room": "r", "epoch": epoch, "from": 3, "to": 15}
        assert gap.id == make_cursor({"r": Position(epoch, 15)})
        assert offsets(rest) == [16, 17, 18, 19, 20]


@pytest.mark.parametrize(
    "since",
    ["!!garbage!!", "x" * 10_000, "abc.def", "%0D%0Aevent: evil"],
)
async def test_garbage_cursor_gives_gap_from_1_then_live(node: Node, since: str) -> None:
    await publish(node, "r", 2)
    async with sse(node, f"/v1/rooms/r/events?since={since}") as (resp, s):
        assert resp.status_code == 200
        (gap,) = await s.events(1)
        assert gap.event == "hub.gap" and gap.json["from"] == 1
        got = await s.events(2)  # what is still stored, then live
        assert offsets(got) == [1, 2]
        await publish(node, "r")
        assert offsets(await s.events(1)) == [3]


async def test_another_rooms_cursor_starts_live(node: Node) -> None:
    other = await publish(node, "other", 3)
    await publish(node, "r", 2)
    async with sse(node, headers={"Last-Event-ID": other[-1]["cursor"]}) as (_, s):
        epoch, _ = await node.hub.broker.position("r")
        assert s.first.id == make_cursor({"r": Position(epoch, 2)})
        await publish(node, "r")
        assert offsets(await s.events(1)) == [3]


async def test_resume_replays_only_rooms_the_token_may_read(node: Node) -> None:
    await publish(node, "a", 2)
    await publish(node, "secret", 2)
    cursor = make_cursor(
        {"a": Position((await node.hub.broker.position("a"))[0], 0),
         "secret": Position((await node.hub.broker.position("secret"))[0], 0)}
    )  # fmt: skip
    tok = token("eve", hub={"subscribe": ["a"]})
    async with sse(node, "/v1/events?room=a&room=secret", tok=tok,
                   headers={"Last-Event-ID": cursor}) as (resp, _):  # fmt: skip
        assert resp.status_code == 403
    async with sse(node, "/v1/events?room=a", tok=tok, headers={"Last-Event-ID": cursor}) as (
        _,
        s,
    ):
        got = await s.events(2)
        assert {e.json["room"] for e in got} == {"a"}


async def test_large_replay_streams_with_bounded_buffer(node_factory: Any) -> None:
    """Past HUB_MAX_REPLY_BYTES of replay the stream starts: the rest of the replay, and the
    later rooms', are written after the first block."""
    node = await node_factory(max_reply_bytes=4000)
    for room in ("a", "b", "c"):
        await publish(node, room, 40)
    async with sse(node, "/v1/events?room=a&room=b&room=c&since=0") as (_, s):
        got = await s.events(120)
        for room in ("a", "b", "c"):
            assert offsets(got, room) == list(range(1, 41))
        last = got[-1].id
        await publish(node, "b")
        assert offsets(await s.events(1), "b") == [41]
    assert last is not None
    async with sse(node, "/v1/events?room=a&room=b&room=c", headers={"Last-Event-ID": last}) as (
        _,
        s,
    ):
        assert offsets(await s.events(1)) == [41]


# ---- presence, expiry, endings --------------------------------------------------------------
async def test_presence_join_leave(node: Node) -> None:
    alice = token("alice", name="Alice")
    async with sse(node, "/v1/rooms/r/events?presence=1", tok=alice) as (_, a):
        (snap,) = await a.events(1)
        assert snap.event == "hub.presence" and snap.id is None
        assert [m["user"] for m in snap.json["members"]] == ["alice"]
        async with sse(node, "/v1/rooms/r/events?presence=1", tok=token("bob")) as (_, _b):
            (join,) = await a.events(1)
            assert join.event == "hub.join" and join.id is None
            assert join.json["user"] == "bob" and join.json["transport"] == "sse"
        (leave,) = await a.events(1)
        assert leave.event == "hub.leave" and leave.json["user"] == "bob"


async def test_token_expiry_ends_stream(node: Node) -> None:
    async with sse(node, tok=token("alice", ttl=1.5)) as (_, s):
        t0 = time.monotonic()
        rest = await s.rest(within=4)
        assert [e.event for e in rest] == ["hub.expired"]
        assert rest[0].id is None and rest[0].json["code"] == 4004
        assert time.monotonic() - t0 < 3
    await wait_sessions(node, 0)


async def test_client_disconnect_frees_the_session(node: Node) -> None:
    async with sse(node, "/v1/events?room=a&room=b&presence=1"):
        await wait_sessions(node, 1)
    await wait_sessions(node, 0)
    assert not list(node.hub.rooms)


async def test_drain_ends_streams_with_retry_hint(node: Node) -> None:
    async with sse(node) as (_, s):
        await node.hub.drain(window=0.1)
        rest = await s.rest()
        assert [e.event for e in rest] == ["hub.disconnect"]
        assert rest[0].retry is not None and rest[0].json["code"] == 4000
    await wait_sessions(node, 0)
    async with sse(node, first=False) as (resp, s):  # while draining: 200, a hint, the end
        assert resp.status_code == 200
        rest = await s.rest()
        assert len(rest) == 1 and rest[0].retry is not None and rest[0].id is None


async def test_slow_consumer_ends_stream_and_resume_loses_nothing(node_factory: Any) -> None:
    node = await node_factory(max_queue=5)
    n, blob = 400, "x" * 30_000  # 12 MB: more than the loopback socket buffers hold
    async with sse(node) as (_, s):
        await publish(node, "r")
        (ev,) = await s.events(1)
        for _ in range(n):  # the client reads nothing meanwhile: the socket fills, then the queue
            await node.hub.publish(BACKEND, "r", blob)
        rest = await s.rest()
        assert rest[-1].event == "hub.disconnect" and rest[-1].json["code"] in (4001,)
        got = [e for e in rest if e.event == "message"]
        assert len(got) < n
        last = got[-1].id if got else ev.id
    assert last is not None
    async with sse(node, headers={"Last-Event-ID": last}) as (_, s):
        seen = offsets(got) + offsets(await s.events(n - len(got)))
        assert seen == list(range(2, n + 2))


async def test_server_stop_ends_stream_promptly(node_factory: Any) -> None:
    node = await node_factory()
    async with sse(node) as (_, s):
        t0 = time.monotonic()
        stop = asyncio.create_task(node.stop())
        rest = await s.rest()
        assert rest and rest[-1].event == "hub.disconnect" and rest[-1].json["code"] == 4000
        await stop
        assert time.monotonic() - t0 < 5


async def test_broker_down_answers_200_with_retry(node: Node, monkeypatch: Any) -> None:
    from hubbub.hub.errors import BrokerError

    async def down(*_a: Any, **_k: Any) -> Any:
        raise BrokerError("down")

    monkeypatch.setattr(node.hub.broker, "subscribe", down)
    async with sse(node, first=False) as (resp, s):
        assert resp.status_code == 200
        (ev,) = await s.rest()
        assert ev.retry is not None and ev.event == "hub.disconnect"
        assert ev.json["code"] == 4003 and ev.json["reconnect"] is True
    monkeypatch.setattr(node.hub.state, "connection_add", down)
    async with sse(node, first=False) as (resp, s):
        assert resp.status_code == 200 and (await s.rest())[0].json["code"] == 4003
    assert not node.hub.sessions


async def test_connection_limit_is_a_refusal(node_factory: Any) -> None:
    node = await node_factory(max_connections_per_user=1)
    async with sse(node), sse(node, first=False) as (resp, _):
        assert resp.status_code == 403
        body = json.loads(await resp.aread())
        assert body["error"]["details"]["code"] == 4510


async def test_kick_ends_stream_without_reconnect_hint(node: Node) -> None:
    async with sse(node, tok=token("mallory")) as (_, s):
        assert await node.hub.disconnect_user("mallory", "bye") == 1
        (ev,) = await s.rest()
        assert ev.event == "hub.disconnect" and ev.retry is None
        assert ev.json == {"type": "disconnect", "code": 4509, "reason": "bye", "reconnect": False}


async def test_another_apps_shutdown_leaves_streams_alone(node_factory: Any) -> None:
    """Only this hub's drain ends its streams, not another server stopping in the process."""
    keep = await node_factory()
    stop = await node_factory()
    async with sse(keep) as (_, s):
        await stop.stop()
        await asyncio.sleep(0.7)
        await publish(keep, "r")
        (ev,) = await s.events(1)
        assert ev.json["offset"] == 1


@pytest.mark.parametrize("kind", ["future offset", "wrong epoch"])
async def test_forged_positions_give_gap_from_1(node: Node, kind: str) -> None:
    res = await publish(node, "r", 3)
    epoch = res[0]["epoch"]
    pos = Position(epoch, 99) if kind == "future offset" else Position("Zz9Zz9Zz", 2)
    async with sse(node, headers={"Last-Event-ID": make_cursor({"r": pos})}) as (resp, s):
        assert resp.headers["hubbub-last-event-id"] == "earliest"
        gap, *rest = await s.events(4)
        assert gap.event == "hub.gap" and gap.json["from"] == 1 and gap.json["epoch"] == epoch
        assert offsets(rest) == [1, 2, 3]


async def test_alg_none_token_is_refused(node: Node) -> None:
    import base64

    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    forged = b64({"alg": "none", "typ": "JWT"}) + "." + b64({"sub": "a", "exp": 2e9}) + "."
    async with sse(node, tok=forged) as (resp, _):
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_client_that_stops_reading_is_cut_off_others_get_everything(
    node_factory: Any,
) -> None:
    """Hardening case 27 for SSE: the stuck stream is closed (4001) and let go of within the farewell
    grace; a healthy stream of the same room receives every message."""
    node = await node_factory(max_queue_bytes=256 * 1024)
    writer, stuck = await _stream_that_stops_reading(node)
    blob = "x" * 6_000
    n = 3000  # ~18 MB: more than the loopback socket buffers hold
    try:
        async with sse(node) as (_, s):
            got = 0

            async def consume() -> None:
                nonlocal got
                while got < n:
                    ev = await s.event(within=10)
                    assert ev is not None and ev.event == "message", ev
                    assert ev.json["offset"] == got + 1
                    got += 1

            task = asyncio.create_task(consume())
            for i in range(n):
                await node.hub.publish(BACKEND, "r", blob)
                while got < i - 20:  # pace the publisher to the healthy reader, not the stuck one
                    await asyncio.sleep(0.001)
            await asyncio.wait_for(task, 30)
            assert stuck.closed is not None and stuck.closed.code == 4001
            await wait_sessions(node, 1, within=6)  # the stuck one is gone, the reader stays
    finally:
        writer.close()


async def test_resume_on_another_node_and_epoch_change_on_redis(
    node_factory: Any, redis_proc: Any
) -> None:
    import redis.asyncio as aioredis

    a = await node_factory(broker_url=redis_proc.url)
    b = await node_factory(broker_url=redis_proc.url)
    async with sse(a) as (_, s):
        await publish(a, "r", 5)
        got = await s.events(5)
        last = got[-1].id
    assert last is not None
    await publish(b, "r", 3)
    async with sse(b, headers={"Last-Event-ID": last}) as (_, s):
        got = await s.events(3)
        assert offsets(got) == [6, 7, 8]
        old_epoch = got[0].json["epoch"]
        client = aioredis.Redis.from_url(redis_proc.url)
        try:
            await client.flushall()  # Redis lost everything: the room starts a new epoch
        finally:
            await client.aclose()
        await publish(a, "r")
        gap, msg = await s.events(2)
        assert gap.event == "hub.gap" and gap.json["epoch"] != old_epoch
        assert gap.json["from"] == 1
        assert msg.json["epoch"] == gap.json["epoch"] and msg.json["offset"] == 1
        assert msg.id == make_cursor({"r": Position(gap.json["epoch"], 1)})


async def test_dev_mode_guest_without_token(node_factory: Any) -> None:
    node = await node_factory(jwt_secret=None, api_keys=())
    async with sse(node, tok="") as (resp, s):
        assert resp.status_code == 200
        assert next(iter(node.hub.sessions.values())).identity.guest
        await publish(node, "r")
        assert offsets(await s.events(1)) == [1]


# ---- the direct path and its fallbacks ------------------------------------------------------
async def test_fan_out_in_one_iteration_arrives_in_order(node: Node) -> None:
    """Publications fanned out in one loop iteration leave together (the direct path)."""
    async with sse(node) as (_, s), sse(node, "/v1/events?room=r&room=q") as (_, m):
        for i in range(50):  # the memory broker never yields: one iteration
            await node.hub.publish(BACKEND, "r", {"i": i})
        await node.hub.publish(BACKEND, "q", {"i": 50})
        got = await s.events(50)
        assert [e.json["data"]["i"] for e in got] == list(range(50))
        assert got[-1].id == make_cursor({"r": Position(got[-1].json["epoch"], 50)})
        both = await m.events(51)
        assert [e.json["data"]["i"] for e in both] == list(range(51))
        epoch_q = both[-1].json["epoch"]
        assert both[-1].id == make_cursor(
            {"r": Position(got[-1].json["epoch"], 50), "q": Position(epoch_q, 1)}
        )


async def test_other_methods_fall_through_to_the_app(node: Node) -> None:
    async with httpx.AsyncClient(base_url=node.url) as c:
        r = await c.post("/v1/rooms/r/events", headers={"Authorization": f"Bearer {API_KEY}"})
        assert r.status_code == 405 and r.json()["error"]["code"] == "bad_request"
        r = await c.get("/v1/rooms//events", headers={"Authorization": f"Bearer {API_KEY}"})
        assert r.status_code == 400


async def test_wildcard_origin_gets_star_without_credentials(node_factory: Any) -> None:
    node = await node_factory(allowed_origins=("*",))
    async with sse(node, headers={"Origin": "https://elsewhere.example"}) as (resp, _):
        assert resp.status_code == 200
        assert resp.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in resp.headers
    async with sse(node, tok="bad", headers={"Origin": "https://elsewhere.example"}) as (resp, _):
        assert resp.status_code == 401 and resp.headers["access-control-allow-origin"] == "*"


async def test_streams_through_plain_asgi_sends_on_another_server() -> None:
    """On uvicorn's h11 protocol (no direct path): events, ping, drain and disconnect work."""
    node = await start_node(make_settings(sse_ping_interval=0.3), http="h11")
    try:
        async with sse(node) as (_, s):
            await publish(node, "r", 3)
            assert offsets(await s.events(3)) == [1, 2, 3]
            ping = await s.block(within=2)
            assert ping is not None and ping.comments == ["ping"]
            await node.hub.drain(window=0.1)
            rest = await s.rest()
            assert [e.event for e in rest] == ["hub.disconnect"] and rest[0].retry is not None
        await wait_sessions(node, 0)
        node.hub.draining = False
        async with sse(node):
            await wait_sessions(node, 1)
        await wait_sessions(node, 0)  # the client went away: noticed through receive()
    finally:
        await node.stop()


async def test_http_1_0_client_is_served_without_the_direct_path(node: Node) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        writer.write(
            f"GET /v1/rooms/r/events HTTP/1.0\r\nAuthorization: Bearer {API_KEY}\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"retry: "), 5)
        assert head.startswith(b"HTTP/1.1 200")
        await publish(node, "r")
        data = await asyncio.wait_for(reader.readuntil(b'"offset":1'), 5)
        assert b"event: message" in data
    finally:
        writer.close()
    await wait_sessions(node, 0)


async def test_client_that_stops_reading_is_dropped_after_the_send_timeout(
    node_factory: Any, monkeypatch: Any
) -> None:
    """The queue stays under its limits, but a write waits for the client too long: 4001."""
    from hubbub.transports import sse as sse_module

    monkeypatch.setattr(sse_module, "SEND_TIMEOUT", 0.5)
    node = await node_factory(max_queue_bytes=64 * 1024 * 1024, sse_ping_interval=0.1)
    writer, stuck = await _stream_that_stops_reading(node)
    try:
        for _ in range(300):  # 9 MB: the socket fills, the queue takes the rest
            await node.hub.publish(BACKEND, "r", "x" * 30_000)
        await wait_sessions(node, 0, within=5)
        assert stuck.closed is not None and stuck.closed.code == 4001
        assert "stopped reading" in stuck.closed.reason
    finally:
        writer.close()


async def test_first_block_keeps_every_resumed_room_when_the_session_closes_while_subscribing() -> (
    None
):
    """A stream of several rooms resumed with a cursor, whose session is closed (here as a slow
    consumer) after its first room was subscribed: the first block's id still holds every
    room's resume position. It used to hold only the rooms subscribed before the close, so the
    next Last-Event-ID made the others start live from their head, silently skipping what was
    published meanwhile (found by hubbub soak, seed 61: a slow SSE client of three rooms)."""
    from hubbub.hub.hub import Hub
    from hubbub.transports.sse_stream import EventStream

    class ClosingAfterFirstRoom(EventStream):
        __slots__ = ()

        async def _subscribe_one(self, room: str) -> dict[str, Any]:
            result = await super()._subscribe_one(room)
            self.session.close(4001, "slow consumer: outbound queue full")
            return result

    hub = Hub(make_settings())
    await hub.start()
    try:
        rooms = ["a", "b", "c"]
        epochs: dict[str, str] = {}
        for r in rooms:
            for i in range(3):
                epochs[r] = (await hub.publish(BACKEND, r, {"i": i}))["epoch"]
        since = make_cursor({r: Position(epochs[r], 1) for r in rooms})
        session = await hub.open_session(Identity(sub="u", api_key=True), "sse")
        stream = ClosingAfterFirstRoom(hub, session, rooms, since, False)
        await stream.subscribe()
        assert session.closed is not None
        first = stream.first_block().decode()
        cursor = next(line[4:] for line in first.splitlines() if line.startswith("id: "))
        assert parse_cursor(cursor, rooms) == {r: Position(epochs[r], 1) for r in rooms}
        await stream.close()
    finally:
        await hub.stop()
