"""Signaling relay rules over real WebSockets (PROTOCOL.md §6, hardening case 44)."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import httpx
import pytest
import websockets

from hubbub.hub.settings import Rate
from hubbub.probe.negotiation import (
    Negotiator,
    candidate_line,
    is_loopback_candidate,
    is_polite,
    same_certificate,
)
from tests.conftest import API_KEY
from tests.wsclient import WS

ROOM = "call:relay"
SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
CAND = {
    "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
    "usernameFragment": "abcd",
}


async def pair(url_a: str, url_b: str | None = None, room: str = ROOM) -> tuple[WS, WS]:
    a = await WS.open(url_a, "alice")
    b = await WS.open(url_b or url_a, "bob")
    await a.join(room)
    await b.join(room)
    return a, b


async def test_all_kinds_are_relayed_with_from_set_by_the_server(node: Any) -> None:
    a, b = await pair(node.ws_url)
    cases = [
        {"kind": "offer", "sdp": SDP},
        {"kind": "answer", "sdp": SDP},
        {"kind": "candidate", "candidate": CAND},
        {"kind": "candidate", "candidate": None},  # end of candidates
        {"kind": "bye"},
    ]
    for data in cases:
        assert (await a.signal(ROOM, b.session, data))["type"] == "reply"
        got = await b.next("signal")
        assert got == {
            "type": "signal",
            "room": ROOM,
            "from": {"user": "alice", "session": a.session},
            "data": data,
        }
    # and back
    assert (await b.signal(ROOM, a.session, {"kind": "answer", "sdp": SDP}))["type"] == "reply"
    assert (await a.next("signal"))["from"] == {"user": "bob", "session": b.session}


async def test_spoofed_from_and_extra_fields_are_replaced(node: Any) -> None:
    a, b = await pair(node.ws_url)
    forged = {"user": "mallory", "session": "x" * 22}
    f = await a.call({"type": "signal", "room": ROOM, "to": b.session, "from": forged,
                      "session": forged["session"],
                      "data": {"kind": "offer", "sdp": SDP, "from": forged, "src": "mallory",
                               "extra": {"x": 1}}})  # fmt: skip
    assert f["type"] == "reply", f
    got = await b.next("signal")
    assert got["from"] == {"user": "alice", "session": a.session}
    assert got["data"] == {"kind": "offer", "sdp": SDP}


async def test_only_the_target_receives_it(node: Any) -> None:
    a, b = await pair(node.ws_url)
    c = await WS.open(node.ws_url, "carol")
    await c.join(ROOM)
    assert (await a.signal(ROOM, b.session, {"kind": "bye"}))["type"] == "reply"
    await b.next("signal")
    await c.nothing("signal")


async def test_target_outside_the_room_is_not_found(node: Any) -> None:
    a, b = await pair(node.ws_url)
    other = await WS.open(node.ws_url, "eve")
    await other.join("call:elsewhere")  # a presence member of another call room
    watcher = await WS.open(node.ws_url, "walt")
    await watcher.join(ROOM, presence=False)  # in the room, but not a presence member
    for to in (other.session, watcher.session, secrets.token_urlsafe(16)):
        f = await a.signal(ROOM, to, {"kind": "offer", "sdp": SDP})
        assert f["type"] == "error" and f["code"] == "not_found", f
    await other.nothing("signal")
    await watcher.nothing("signal")
    # a member that left is gone too
    await b.result({"type": "unsubscribe", "room": ROOM})
    assert (await a.signal(ROOM, b.session, {"kind": "bye"}))["code"] == "not_found"


async def test_sender_must_be_a_presence_member_with_the_signal_grant(node: Any) -> None:
    a = await WS.open(node.ws_url, "alice")
    await a.join(ROOM)
    # not subscribed at all
    x = await WS.open(node.ws_url, "xavier")
    assert (await x.signal(ROOM, a.session, {"kind": "bye"}))["code"] == "forbidden"
    # subscribed without presence
    await x.join(ROOM, presence=False)
    assert (await x.signal(ROOM, a.session, {"kind": "bye"}))["code"] == "forbidden"
    # presence member without the signal grant
    grants = {"subscribe": ["call:*"], "presence": ["call:*"], "publish": [], "signal": []}
    n = await WS.open(node.ws_url, "nosig", hub=grants)
    await n.join(ROOM)
    assert (await n.signal(ROOM, a.session, {"kind": "offer", "sdp": SDP}))["code"] == "forbidden"
    # a signal grant for other rooms only
    grants2 = {**grants, "signal": ["call:other-*"]}
    m = await WS.open(node.ws_url, "narrow", hub=grants2)
    await m.join(ROOM)
    assert (await m.signal(ROOM, a.session, {"kind": "bye"}))["code"] == "forbidden"
    await a.nothing("signal")


async def test_non_call_room_is_forbidden(node: Any) -> None:
    a = await WS.open(node.ws_url, "alice")
    b = await WS.open(node.ws_url, "bob")
    await a.join("lobby")
    await b.join("lobby")
    f = await a.signal("lobby", b.session, {"kind": "offer", "sdp": SDP})
    assert f["code"] == "forbidden", f
    await b.nothing("signal")


BAD_SHAPES: list[Any] = [
    None,
    "offer",
    [],
    {},
    {"kind": "hello"},
    {"kind": "offer"},
    {"kind": "offer", "sdp": ""},
    {"kind": "offer", "sdp": 5},
    {"kind": "answer", "sdp": {"a": 1}},
    {"kind": "candidate"},
    {"kind": "candidate", "candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host"},
    {"kind": "candidate", "candidate": {"sdpMid": "0"}},
    {"kind": "candidate", "candidate": {**CAND, "sdpMLineIndex": "0"}},
    {"kind": "candidate", "candidate": {**CAND, "sdpMLineIndex": -1}},
    {"kind": "candidate", "candidate": {**CAND, "sdpMLineIndex": True}},
    {"kind": "candidate", "candidate": {**CAND, "sdpMid": 7}},
    {"kind": "candidate", "candidate": {**CAND, "candidate": "c" * 5000}},
    {"kind": "offer", "sdp": "v" * (64 * 1024 + 1)},
    {"kind": "answer", "sdp": "é" * (32 * 1024 + 1)},  # 64 KiB + 2 bytes of UTF-8
]


async def test_bad_shapes_are_bad_request(node: Any) -> None:
    b = await WS.open(node.ws_url, "bob")
    await b.join(ROOM)
    a: WS | None = None
    for i, data in enumerate(BAD_SHAPES):
        if i % 8 == 0:  # 10 bad frames close the connection with 4500: use a fresh one
            if a is not None:
                await a.close()
            a = await WS.open(node.ws_url, f"alice{i}")
            await a.join(ROOM)
        assert a is not None
        f = await a.signal(ROOM, b.session, data)
        assert f["type"] == "error" and f["code"] == "bad_request", (data, f)
    await b.nothing("signal", 0.1)


async def test_sdp_of_exactly_64_kib_passes(node: Any) -> None:
    a, b = await pair(node.ws_url)
    sdp = "v" * (64 * 1024)
    assert (await a.signal(ROOM, b.session, {"kind": "offer", "sdp": sdp}))["type"] == "reply"
    assert (await b.next("signal"))["data"]["sdp"] == sdp


async def test_bad_room_and_target(node: Any) -> None:
    a, b = await pair(node.ws_url)
    for room in (None, "", "call:../x", "call:\x00", "c" * 200):
        f = await a.signal(room, b.session, {"kind": "bye"})  # type: ignore[arg-type]
        assert f["code"] == "bad_request", f
    a, b = await pair(node.ws_url, room="call:relay2")  # fresh: 10 bad frames close with 4500
    for to in (None, 5, "", "s" * 100, ["x"]):
        f = await a.call(
            {"type": "signal", "room": "call:relay2", "to": to, "data": {"kind": "bye"}}
        )
        assert f["code"] in ("bad_request", "not_found"), f


async def test_room_full_at_max_peers(node_factory: Any) -> None:
    node = await node_factory(signal_max_peers=2)
    _a, b = await pair(node.ws_url)
    c = await WS.open(node.ws_url, "carol")
    f = await c.call({"type": "subscribe", "room": ROOM, "presence": True})
    assert f["type"] == "error" and f["code"] == "room_full", f
    # watching without presence is not joining the call
    await c.join(ROOM, presence=False)
    # a seat frees up when someone leaves
    await b.result({"type": "unsubscribe", "room": ROOM})
    d = await WS.open(node.ws_url, "dave")
    members = (await d.join(ROOM))["presence"]
    assert {m["user"] for m in members} == {"alice", "dave"}
    # other rooms are not call rooms: no limit there
    for who in ("p1", "p2", "p3"):
        await (await WS.open(node.ws_url, who)).join("lobby")


async def test_signals_are_never_stored(node: Any) -> None:
    a, b = await pair(node.ws_url)
    for _ in range(3):
        await a.signal(ROOM, b.session, {"kind": "offer", "sdp": SDP})
    hist = await a.result({"type": "history", "room": ROOM})
    assert hist["messages"] == []
    async with httpx.AsyncClient(base_url=node.url) as http:
        r = await http.get(
            f"/v1/rooms/{ROOM}/messages", headers={"Authorization": f"Bearer {API_KEY}"}
        )
    assert r.status_code == 200 and r.json()["messages"] == []
    # a late subscriber replays nothing from the call
    late = await WS.open(node.ws_url, "late")
    await late.result({"type": "subscribe", "room": ROOM, "since": {"epoch": "x", "offset": 0}})
    await late.nothing("message")
    await late.nothing("signal", 0.05)


async def test_signals_count_against_the_publish_rate(node_factory: Any) -> None:
    node = await node_factory(client_publish_rate=Rate.parse("0.2/s:3"))
    a, b = await pair(node.ws_url)
    codes = [
        (await a.signal(ROOM, b.session, {"kind": "candidate", "candidate": CAND}))["type"]
        for _ in range(5)
    ]
    assert codes[:3] == ["reply"] * 3
    f = await a.signal(ROOM, b.session, {"kind": "bye"})
    assert f["type"] == "error" and f["code"] == "rate_limited" and f["temporary"] is True
    # the budget is shared with publish
    assert (await a.call({"type": "publish", "room": "x", "data": 1}))["code"] == "rate_limited"


async def test_relay_across_two_nodes_on_one_redis(node_factory: Any, redis_proc: Any) -> None:
    prefix = "sigtest:"
    n1 = await node_factory(broker_url=redis_proc.url, redis_prefix=prefix)
    n2 = await node_factory(broker_url=redis_proc.url, redis_prefix=prefix)
    a, b = await pair(n1.ws_url, n2.ws_url)
    for data in ({"kind": "offer", "sdp": SDP}, {"kind": "candidate", "candidate": CAND}):
        assert (await a.signal(ROOM, b.session, data))["type"] == "reply"
        got = await b.next("signal")
        assert got["from"] == {"user": "alice", "session": a.session} and got["data"] == data
    assert (await b.signal(ROOM, a.session, {"kind": "answer", "sdp": SDP}))["type"] == "reply"
    assert (await a.next("signal"))["from"]["session"] == b.session
    # a session on the other node that is not in the room
    stranger = await WS.open(n2.ws_url, "stranger")
    await stranger.join("call:other")
    assert (await a.signal(ROOM, stranger.session, {"kind": "bye"}))["code"] == "not_found"
    await stranger.nothing("signal")
    # room_full counts members on every node
    n3 = await node_factory(broker_url=redis_proc.url, redis_prefix=prefix, signal_max_peers=2)
    c = await WS.open(n3.ws_url, "carol")
    assert (await c.call({"type": "subscribe", "room": ROOM, "presence": True}))["code"] == (
        "room_full"
    )
    # after b leaves on node 2, node 1 refuses signals to it
    await b.close()
    for _ in range(50):  # the leave crosses nodes through Redis; stay under the publish rate
        f = await a.signal(ROOM, b.session, {"kind": "bye"})
        if f["type"] == "error":
            break
        await asyncio.sleep(0.1)
    assert f["code"] == "not_found"


def test_roles_and_helpers() -> None:
    assert is_polite("AAA", "AAB") and not is_polite("AAB", "AAA")
    assert is_polite("Z", "a")  # bytewise: uppercase sorts before lowercase
    assert is_polite("-x", "_x")  # '-' 0x2d < '_' 0x5f
    n = Negotiator(polite=True)
    assert n.on_description("offer", "stable") == "accept"
    assert n.on_description("offer", "have-local-offer") == "rollback"
    n.making_offer = True
    assert n.on_description("offer", "stable") == "rollback"
    imp = Negotiator(polite=False, making_offer=True)
    assert imp.on_description("offer", "stable") == "ignore" and imp.ignore_offer
    assert imp.on_description("answer", "have-local-offer") == "accept"
    assert candidate_line(CAND).startswith("1 1 udp")
    assert is_loopback_candidate(CAND, ("127.0.0.1",))
    assert not is_loopback_candidate({**CAND, "candidate": CAND["candidate"].replace(
        "127.0.0.1", "192.0.2.2")}, ("127.0.0.1",))  # fmt: skip
    assert is_loopback_candidate(None, ("127.0.0.1",))


async def test_huge_sdp_and_candidate_flood_close_the_sender_only(node_factory: Any) -> None:
    """Hardening case 44: a 1 MB SDP closes with 1009; a candidate flood gets rate_limited errors
    and then close 4005 (once refused for ``HUB_RATE_LIMIT_GRACE``); the target and the node
    are unharmed."""
    node = await node_factory(rate_limit_grace=1.0)
    a, b = await pair(node.ws_url)
    await a.conn.send(
        json.dumps({"type": "signal", "room": ROOM, "to": b.session,
                    "data": {"kind": "offer", "sdp": "v" * 1_000_000}})
    )  # fmt: skip
    with pytest.raises(websockets.ConnectionClosed) as exc:
        while True:
            await a.recv()
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 1009
    flooder = await WS.open(node.ws_url, "flood")
    await flooder.join(ROOM)
    frame = {"type": "signal", "id": 1, "room": ROOM, "to": b.session,
             "data": {"kind": "candidate", "candidate": CAND}}  # fmt: skip
    code, reason, seen = await flooder.flood(frame, every=0.03)  # under the frame rate
    assert code == 4005 and "HUB_CLIENT_PUBLISH_RATE" in reason, reason
    codes = [f["code"] for f in seen if f["type"] == "error"]
    assert "rate_limited" in codes
    got = 0
    while True:
        try:
            f = await b.recv(0.5)
        except TimeoutError:
            break
        got += f["type"] == "signal"
    replies = sum(f["type"] == "reply" for f in seen)
    assert 0 < got <= replies  # what was served went through, nothing refused did
    async with httpx.AsyncClient(base_url=node.url) as http:
        assert (await http.get("/health/ready")).status_code == 200
    c = await WS.open(node.ws_url, "canary")
    await c.join(ROOM)
    assert (await c.signal(ROOM, b.session, {"kind": "bye"}))["type"] == "reply"


async def test_room_full_holds_under_concurrent_joins(node_factory: Any, redis_proc: Any) -> None:
    """Concurrent joins on two nodes never overfill a call room (the member count is checked
    and the member added in one atomic broker step)."""
    kw = {"broker_url": redis_proc.url, "redis_prefix": "race:", "signal_max_peers": 2}
    n1 = await node_factory(**kw)
    n2 = await node_factory(**kw)
    clients = [await WS.open((n1, n2)[i % 2].ws_url, f"u{i}") for i in range(6)]
    frames = await asyncio.gather(
        *(c.call({"type": "subscribe", "room": "call:race", "presence": True}) for c in clients)
    )
    assert sum(f["type"] == "reply" for f in frames) == 2


def test_same_certificate_compares_fingerprint_sets() -> None:
    aiortc = "v=0\r\na=fingerprint:sha-256 AA:BB\r\na=fingerprint:sha-384 CC:DD\r\n"
    chrome_view = "v=0\r\na=fingerprint:sha-384 cc:dd\r\na=fingerprint:sha-256 aa:bb\r\n"
    other = "v=0\r\na=fingerprint:sha-256 EE:FF\r\n"
    assert same_certificate(aiortc, chrome_view) is True  # re-ordered, other case
    assert same_certificate(aiortc, other) is False
    assert same_certificate(aiortc, "v=0\r\n") is None
