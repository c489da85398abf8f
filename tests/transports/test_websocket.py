"""WebSocket transport over real uvicorn and real ``websockets`` clients (PROTOCOL.md §3)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
import pytest
import websockets

from tests.conftest import API_KEY, SECRET, Node, token
from tests.wsclient import WS


async def test_welcome_and_frame_round_trip(node: Node) -> None:
    ws = await WS.connect(node.ws_url, token("alice", name="Alice"))
    w = ws.welcome
    assert w["user"] == "alice" and w["version"] == "1"
    assert len(w["session"]) >= 16 and w["ping_interval"] == 25 and w["ping_timeout"] == 10
    assert 3500 < w["expires_in"] <= 3600
    sub = await ws.result({"type": "subscribe", "room": "lobby"})
    assert sub["room"] == "lobby" and sub["offset"] == 0 and sub["recovered"] is False
    assert isinstance(sub["epoch"], str) and isinstance(sub["cursor"], str)
    pub = await ws.result({"type": "publish", "room": "lobby", "data": {"t": 1}, "event": "chat"})
    assert pub["offset"] == 1 and pub["epoch"] == sub["epoch"]
    msg = await ws.next("message")
    assert msg["data"] == {"t": 1} and msg["event"] == "chat" and msg["offset"] == 1
    assert msg["from"] == {"user": "alice", "session": w["session"]}
    assert isinstance(msg["ts"], int)
    hist = await ws.result({"type": "history", "room": "lobby"})
    assert [m["offset"] for m in hist["messages"]] == [1] and hist["complete"] is True
    assert await ws.result({"type": "unsubscribe", "room": "lobby"}) == {}
    assert await ws.result({"type": "unsubscribe", "room": "lobby"}) == {}
    assert await ws.result({"type": "ping"}) == {}
    assert (await ws.next("pong"))["type"] == "pong"
    await ws.close()


@pytest.mark.parametrize("how", ["header", "cookie", "query", "frame"])
async def test_token_sources(node: Node, how: str) -> None:
    tok = token("bob")
    url, headers = node.ws_url, {}
    if how == "header":
        headers = {"Authorization": f"Bearer {tok}"}
    elif how == "cookie":
        headers = {"Cookie": f"hubbub_token={tok}"}
    elif how == "query":
        url += f"?token={tok}"
    conn = await websockets.connect(url, additional_headers=headers)
    ws = WS(conn)
    if how == "frame":
        await ws.send({"type": "auth", "token": tok})
    assert (await ws.recv())["type"] == "welcome"
    # auth after welcome is a bad request, not a disconnect
    err = await ws.call({"type": "auth", "token": tok})
    assert err["type"] == "error" and err["code"] == "bad_request"
    await ws.close()


@pytest.mark.parametrize(
    "first",
    [
        {"type": "auth", "token": "garbage"},
        {"type": "subscribe", "room": "x"},
        {"type": "auth", "token": jwt.encode({"sub": "a"}, SECRET, algorithm="HS256")},
        {"type": "auth", "token": jwt.encode({"sub": "a", "exp": 1}, SECRET, algorithm="HS256")},
        {"type": "auth", "token": jwt.encode({"sub": "a", "exp": 10**30}, SECRET)},
    ],
)
async def test_bad_first_frame_closes_4501(node: Node, first: dict[str, Any]) -> None:
    ws = WS(await websockets.connect(node.ws_url))
    await ws.send(first)
    code, _ = await ws.closed()
    assert code == 4501


async def test_alg_none_and_bad_query_token_close_4501(node: Node) -> None:
    none_tok = jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, None, algorithm="none")
    for tok in (none_tok, "a.b.c", "x" * 7000):
        ws = await WS.connect(node.ws_url, tok, welcome=False)
        code, frames = await ws.closed()
        assert code == 4501 and not frames
    # A request line beyond the handshake limit is refused at once (414), never left hanging.
    with pytest.raises(websockets.InvalidStatus) as exc:
        await websockets.connect(node.ws_url + "?token=" + "x" * 100_000, open_timeout=5)
    assert exc.value.response.status_code == 414


async def test_auth_deadline(node_factory: Any) -> None:
    n = await node_factory(auth_timeout=0.3)
    ws = WS(await websockets.connect(n.ws_url))
    code, _ = await ws.closed(timeout=5)
    assert code == 4501


async def test_api_key_connection_can_publish_anywhere(node: Node) -> None:
    conn = await websockets.connect(
        node.ws_url, additional_headers={"Authorization": f"Bearer {API_KEY}"}
    )
    ws = WS(conn)
    assert (await ws.recv())["type"] == "welcome"
    res = await ws.result({"type": "publish", "room": "user:carol", "data": 1})
    assert res["offset"] == 1
    await ws.close()


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "null", "https://127.0.0.1.evil.com", "file://"]
)
async def test_bad_origin_refused_at_handshake(node: Node, origin: str) -> None:
    with pytest.raises(websockets.InvalidStatus) as exc:
        await websockets.connect(node.ws_url + f"?token={token()}", origin=origin)  # type: ignore[arg-type]
    assert exc.value.response.status_code == 403


async def test_allowed_origins(node_factory: Any) -> None:
    n = await node_factory(allowed_origins=("https://*.example.com",))
    ok = await WS.connect(n.ws_url, token(), origin="https://app.example.com")  # type: ignore[arg-type]
    await ok.close()
    same = await WS.connect(n.ws_url, token(), origin=f"http://127.0.0.1:{n.port}")  # type: ignore[arg-type]
    await same.close()
    for bad in ("https://app.example.com.evil.com", "https://evil.com/app.example.com",
                "https://example.com.evil.com", "null"):  # fmt: skip
        with pytest.raises((websockets.InvalidStatus, ValueError)):
            await websockets.connect(n.ws_url + f"?token={token()}", origin=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "raw",
    ["not json", "[1,2]", "42", '{"no_type": 1}', '{"type": 5}', "[" * 50_000],
)
async def test_protocol_violations_close_4500(node: Node, raw: str) -> None:
    ws = await WS.connect(node.ws_url, token())
    await ws.send(raw)
    code, frames = await ws.closed()
    assert code == 4500
    assert frames and frames[-1]["type"] == "disconnect" and frames[-1]["reconnect"] is False
    assert await _ready(node)


async def test_binary_frame_closes_4500(node: Node) -> None:
    ws = await WS.connect(node.ws_url, token())
    await ws.conn.send(b"\x00" * 1024)
    code, _ = await ws.closed()
    assert code == 4500


async def test_oversize_frames_close_1009(node: Node) -> None:
    ws = await WS.connect(node.ws_url, token())
    await ws.send(json.dumps({"type": "publish", "room": "a", "data": "x" * (100 * 1024)}))
    code, _ = await ws.closed()
    assert code == 1009
    ws = await WS.connect(node.ws_url, token())
    await ws.conn.send(b"\x00" * (1024 * 1024))
    code, _ = await ws.closed()
    assert code == 1009
    assert await _ready(node)


async def test_invalid_utf8_closes_1007(node: Node) -> None:
    ws = await WS.connect(node.ws_url, token())
    # A text frame carrying invalid UTF-8 must be refused by the WebSocket layer.
    proto = ws.conn.protocol
    proto.send_frame(  # type: ignore[attr-defined]
        __import__("websockets").frames.Frame(
            __import__("websockets").frames.Opcode.TEXT, b'{"type":"ping","x":"\xff"}'
        )
    )
    ws.conn.send_data()  # type: ignore[attr-defined]
    code, _ = await ws.closed()
    assert code == 1007


async def test_errors_carry_ids_and_codes(node: Node) -> None:
    ws = await WS.connect(node.ws_url, token(hub={"subscribe": ["open"], "publish": []}))
    cases = [
        ({"type": "nope"}, "bad_request"),
        ({"type": "subscribe", "room": "bad room"}, "bad_request"),
        ({"type": "subscribe", "room": "x" * 129}, "bad_request"),
        ({"type": "subscribe", "room": "a\u0000b"}, "bad_request"),
        ({"type": "subscribe", "room": "secret"}, "forbidden"),
        ({"type": "subscribe", "room": "open", "presence": True}, "forbidden"),
        ({"type": "publish", "room": "open", "data": 1}, "forbidden"),
        ({"type": "publish", "room": "open"}, "bad_request"),
        ({"type": "publish", "room": "open", "data": 1, "event": "hub.x"}, "bad_request"),
        ({"type": "history", "room": "secret"}, "forbidden"),
        ({"type": "presence", "room": "open"}, "forbidden"),
        ({"type": "refresh", "token": "garbage"}, "forbidden"),
        ({"type": "refresh", "token": token("mallory")}, "forbidden"),
    ]
    for frame, code in cases:
        err = await ws.call(frame)
        assert err["type"] == "error" and err["code"] == code, (frame, err)
        assert isinstance(err["message"], str) and err["temporary"] is False
    await ws.result({"type": "subscribe", "room": "open"})
    err = await ws.call({"type": "subscribe", "room": "open"})
    assert err["code"] == "conflict"
    # an error for a frame without id comes back with id null
    await ws.send({"type": "nope"})
    err = await ws.next("error")
    assert err["id"] is None and err["code"] == "bad_request"
    await ws.close()


async def test_repeated_bad_frames_close_4500(node: Node) -> None:
    ws = await WS.connect(node.ws_url, token())
    for _ in range(12):
        await ws.send({"type": "nope"})
    code, _ = await ws.closed()
    assert code == 4500


async def test_data_limits_and_hostile_payloads(node_factory: Any) -> None:
    n = await node_factory(max_message_bytes=1024)
    ws = await WS.connect(n.ws_url, token())
    err = await ws.call({"type": "publish", "room": "a", "data": "x" * 2000})
    assert err["code"] == "too_large"
    deep: Any = 1
    for _ in range(200):
        deep = [deep]
    err = await ws.call({"type": "publish", "room": "a", "data": deep})
    assert err["code"] == "bad_request"
    await ws.send('{"type":"publish","id":9,"room":"a","data":' + "9" * 5000 + "}")
    code, _ = await ws.closed()
    assert code in (4500, 1009)
    assert await _ready(n)


async def test_publish_rate_limit(node_factory: Any) -> None:
    n = await node_factory(
        client_publish_rate=__import__("hubbub.hub.settings").hub.settings.Rate(1, 2),
        rate_limit_grace=0.5,
    )
    ws = await WS.connect(n.ws_url, token())
    codes = [(await ws.call({"type": "publish", "room": "a", "data": i})) for i in range(4)]
    assert [c["type"] for c in codes[:2]] == ["reply", "reply"]
    assert codes[2]["code"] == "rate_limited" and codes[2]["temporary"] is True
    assert "HUB_CLIENT_PUBLISH_RATE" in codes[2]["message"]
    # 33 frames/s: within HUB_CLIENT_COMMAND_RATE (50/s), over the publish rate
    code, reason, _ = await ws.flood({"type": "publish", "room": "a", "data": 0}, every=0.03)
    assert code == 4005 and "HUB_CLIENT_PUBLISH_RATE" in reason, reason


async def test_subscription_limit(node_factory: Any) -> None:
    n = await node_factory(max_subscriptions=3)
    ws = await WS.connect(n.ws_url, token())
    for i in range(3):
        await ws.result({"type": "subscribe", "room": f"r{i}"})
    err = await ws.call({"type": "subscribe", "room": "r9"})
    assert err["code"] == "forbidden" and "3" in err["message"]
    await ws.close()


async def test_heartbeat_timeout_4002(node_factory: Any) -> None:
    n = await node_factory(ping_interval=0.3, ping_timeout=0.3)
    quiet = await WS.connect(n.ws_url, token())
    lively = await WS.connect(n.ws_url, token())
    for _ in range(6):  # the lively one answers pings
        f = await lively.recv()
        if f["type"] == "ping":
            await lively.send({"type": "pong"})
    code, frames = await quiet.closed()
    assert code == 4002
    assert any(f["type"] == "ping" for f in frames)
    assert await lively.result({"type": "ping"}) == {}
    await lively.close()


async def test_token_expiry_warns_then_4004(node: Node) -> None:
    ws = await WS.connect(node.ws_url, token(ttl=1.5))
    await ws.result({"type": "subscribe", "room": "a"})
    expiring = await ws.next("expiring", timeout=5)
    assert 0 <= expiring["in"] <= 1.5
    code, frames = await ws.closed()
    assert code == 4004
    assert frames[-1] == {"type": "disconnect", "code": 4004, "reason": "token expired",
                          "reconnect": True}  # fmt: skip


async def test_refresh_replaces_token_and_withdraws_rooms(node: Node) -> None:
    ws = await WS.connect(node.ws_url, token("ann", ttl=2, hub={"subscribe": ["a", "b"]}))
    await ws.result({"type": "subscribe", "room": "a"})
    await ws.result({"type": "subscribe", "room": "b"})
    res = await ws.result({"type": "refresh", "token": token("ann", hub={"subscribe": ["a"]})})
    assert res["expires_in"] > 3000
    err = await ws.next("error")
    assert err["code"] == "forbidden" and err["details"]["room"] == "b"
    await asyncio.sleep(2.2)  # the old expiry is gone
    assert await ws.result({"type": "ping"}) == {}
    await ws.close()


async def test_resume_with_since_no_gap_no_duplicate(node: Node) -> None:
    pub = await WS.connect(node.ws_url, token("pub"))
    for i in range(5):
        await pub.result({"type": "publish", "room": "r", "data": i})
    sub = await WS.connect(node.ws_url, token("sub"))
    res = await sub.result({"type": "subscribe", "room": "r", "history": 2})
    assert [m["data"] for m in sub.inbox] == [3, 4] and res["offset"] == 5
    cursor = res["cursor"]
    await sub.close()

    async def publish_more() -> None:
        for i in range(5, 25):
            await pub.result({"type": "publish", "room": "r", "data": i})

    task = asyncio.create_task(publish_more())
    await asyncio.sleep(0.01)
    sub = await WS.connect(node.ws_url, token("sub"))
    res = await sub.result({"type": "subscribe", "room": "r", "since": cursor})
    assert res["recovered"] is True
    await task
    got = [m["data"] for m in await sub.messages(20)]  # the inbox first, then the socket
    assert got == list(range(5, 25))
    await sub.close()
    await pub.close()


async def test_gap_when_trimmed_and_epoch_mismatch(node_factory: Any) -> None:
    n = await node_factory(history_size=3)
    ws = await WS.connect(n.ws_url, token())
    for i in range(6):
        await ws.result({"type": "publish", "room": "g", "data": i})
    res = await ws.result({"type": "subscribe", "room": "g", "since": {"epoch": None, "offset": 1}})
    gap = ws.inbox[0]
    assert gap == {"type": "gap", "room": "g", "epoch": res["epoch"], "from": 2, "to": 3}
    assert [m["offset"] for m in ws.inbox[1:]] == [4, 5, 6] and res["recovered"] is False
    ws.inbox.clear()
    await ws.result({"type": "unsubscribe", "room": "g"})
    res = await ws.result(
        {"type": "subscribe", "room": "g", "since": {"epoch": "other", "offset": 5}}
    )
    assert ws.inbox[0]["type"] == "gap" and ws.inbox[0]["from"] == 1
    ws.inbox.clear()
    await ws.result({"type": "unsubscribe", "room": "g"})
    await ws.result({"type": "subscribe", "room": "g", "since": "!!garbage!!"})
    assert ws.inbox[0]["type"] == "gap" and ws.inbox[0]["from"] == 1
    await ws.close()


async def test_ephemeral_and_idempotent_publish(node: Node) -> None:
    ws = await WS.connect(node.ws_url, token())
    await ws.result({"type": "subscribe", "room": "e"})
    res = await ws.result({"type": "publish", "room": "e", "data": "typing", "ephemeral": True})
    assert res == {"room": "e", "ephemeral": True}
    m = await ws.next("message")
    assert "offset" not in m and m["data"] == "typing"
    a = await ws.result({"type": "publish", "room": "e", "data": 1, "key": "k1"})
    b = await ws.result({"type": "publish", "room": "e", "data": 1, "key": "k1"})
    assert a == b
    err = await ws.call({"type": "publish", "room": "e", "data": 2, "key": "k1"})
    assert err["code"] == "conflict"
    hist = await ws.result({"type": "history", "room": "e"})
    assert [m["data"] for m in hist["messages"]] == [1]
    await ws.close()


async def test_presence_join_leave(node: Node) -> None:
    a = await WS.connect(node.ws_url, token("amy", name="Amy", info={"avatar": "a.png"}))
    res = await a.result({"type": "subscribe", "room": "p", "presence": True})
    assert [m["user"] for m in res["presence"]] == ["amy"]
    b = await WS.connect(node.ws_url, token("ben"))
    res = await b.result({"type": "subscribe", "room": "p", "presence": True})
    assert sorted(m["user"] for m in res["presence"]) == ["amy", "ben"]
    amy = next(m for m in res["presence"] if m["user"] == "amy")
    assert amy["name"] == "Amy" and amy["info"] == {"avatar": "a.png"} and amy["transport"] == "ws"
    join = await a.next("join")
    assert join["user"] == "ben" and join["room"] == "p" and join["session"] == b.welcome["session"]
    pres = await a.result({"type": "presence", "room": "p"})
    assert pres["users"] == 2 and pres["sessions"] == 2
    await b.close()
    leave = await a.next("leave")
    assert leave["user"] == "ben"
    await a.close()


async def test_slow_consumer_4001_then_resume_loses_nothing(node_factory: Any) -> None:
    n = await node_factory(max_queue=50, max_queue_bytes=1 << 30)
    fast = await WS.connect(n.ws_url, token("fast"))
    await fast.result({"type": "subscribe", "room": "s"})
    slow = await WS.connect(n.ws_url, token("slow"), max_queue=1)
    res = await slow.result({"type": "subscribe", "room": "s"})
    slow.conn.transport.pause_reading()  # type: ignore[attr-defined]
    blob = "x" * 30000
    pub = await WS.connect(n.ws_url, API_KEY)
    reader = asyncio.create_task(fast.messages(400, timeout=20))
    for i in range(400):
        await pub.result({"type": "publish", "room": "s", "data": {"i": i, "b": blob}})
    got = [m["data"]["i"] for m in await reader]
    assert got == list(range(400))
    slow.conn.transport.resume_reading()  # type: ignore[attr-defined]
    code, _ = await slow.closed(timeout=20)
    assert code == 4001
    again = await WS.connect(n.ws_url, token("slow"))
    res2 = await again.result({"type": "subscribe", "room": "s", "since": res["cursor"]})
    assert res2["recovered"] is True
    offsets = [m["offset"] for m in again.inbox if m["type"] == "message"]
    assert offsets == list(range(1, 401))
    await fast.close()
    await again.close()
    await pub.close()


async def test_kick_4509_and_connection_limit_4510(node_factory: Any) -> None:
    n = await node_factory(max_connections_per_user=2)
    a1 = await WS.connect(n.ws_url, token("kim"))
    a2 = await WS.connect(n.ws_url, token("kim"))
    a3 = await WS.connect(n.ws_url, token("kim"), welcome=False)
    code, frames = await a3.closed()
    assert code == 4510 and frames[-1]["type"] == "disconnect"
    assert await n.hub.disconnect_user("kim", "bye") == 2
    for ws in (a1, a2):
        code, _ = await ws.closed()
        assert code == 4509


async def test_drain_closes_4000(node: Node) -> None:
    ws = await WS.connect(node.ws_url, token())
    await node.hub.drain(window=0.1)
    code, frames = await ws.closed()
    assert code == 4000 and frames[-1]["reconnect"] is True
    assert not await node.hub.ready()


async def test_sessions_cleaned_up(node: Node) -> None:
    clients = [await WS.connect(node.ws_url, token(f"u{i}")) for i in range(5)]
    for c in clients:
        await c.result({"type": "subscribe", "room": "z", "presence": True})
    for c in clients:
        await c.close()
    for _ in range(100):
        if not node.hub.sessions and not node.hub.rooms.rooms:
            break
        await asyncio.sleep(0.02)
    assert not node.hub.sessions and not node.hub.rooms.rooms


async def _ready(node: Node) -> bool:
    import httpx

    async with httpx.AsyncClient() as c:
        r = await c.get(node.url + "/health/ready")
    return r.status_code == 200


async def test_lone_surrogate_gets_an_error_frame(node: Node) -> None:
    ws = await WS.connect(node.ws_url, token())
    await ws.send('{"type":"publish","id":3,"room":"a","data":"\\ud800"}')
    err = await ws.next("error")
    assert err["code"] == "bad_request" and err["id"] is None
    assert await ws.result({"type": "ping"}) == {}  # the connection stays
    await ws.close()


async def test_auth_refusals_counted_by_reason(node: Node) -> None:
    import httpx

    expired = jwt.encode({"sub": "a", "exp": int(time.time()) - 10}, SECRET, algorithm="HS256")
    for tok in ("a.b.c", expired, jwt.encode({"sub": "a", "exp": 10**12}, "wrong-secret" * 3)):
        ws = await WS.connect(node.ws_url, tok, welcome=False)
        code, _ = await ws.closed()
        assert code == 4501
    async with httpx.AsyncClient() as c:
        text = (await c.get(node.url + "/metrics")).text
    assert 'hubbub_auth_refusals_total{reason="malformed"} 1' in text
    assert 'hubbub_auth_refusals_total{reason="expired"} 1' in text
    assert 'hubbub_auth_refusals_total{reason="signature"} 1' in text
