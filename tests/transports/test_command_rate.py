"""Every client frame metered (PROTOCOL.md §8, hardening case 48): every parsed frame but
``ping``/``pong`` draws on the session's ``HUB_CLIENT_COMMAND_RATE`` bucket, and ``publish`` and
``signal`` also on ``HUB_CLIENT_PUBLISH_RATE``; over budget a frame is answered ``error
rate_limited`` (temporary, naming the limit) and nothing is served. A session refused without a
pause of a second for ``HUB_RATE_LIMIT_GRACE`` (10 s) is closed with 4005. API-key sessions are
not metered, and a presence join/leave flood reaches other members at most once per served frame,
coalesced in the queue of a member that does not read."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import httpx
import pytest

from hubbub.hub.settings import Rate
from tests.conftest import API_KEY, RedisProc, token
from tests.helpers import until
from tests.wsclient import WS

RATE = Rate(20.0, 40.0)


async def burst(c: WS, frames: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
    """Send ``frames`` (ids 1..n) in one go, without waiting; return the n answers by id and
    the seconds the node took (tokens refill meanwhile)."""
    t0 = time.monotonic()
    for i, f in enumerate(frames, 1):
        await c.conn.send(json.dumps({**f, "id": i}))
    answers: dict[int, dict[str, Any]] = {}
    while len(answers) < len(frames):
        f = await c.recv()
        if f.get("type") in ("reply", "error") and isinstance(f.get("id"), int):
            answers[f["id"]] = f
    return [answers[i] for i in range(1, len(frames) + 1)], time.monotonic() - t0


def served(answers: list[dict[str, Any]], limit: str = "HUB_CLIENT_COMMAND_RATE") -> int:
    """How many of ``answers`` are replies; every other one must be a temporary
    ``rate_limited`` naming ``limit``."""
    refused = [a for a in answers if a["type"] == "error"]
    assert all(a["code"] == "rate_limited" and a["temporary"] is True for a in refused), refused
    assert all(limit in a["message"] for a in refused), refused[:1]
    return len(answers) - len(refused)


async def test_history_flood_is_served_up_to_the_budget(node_factory: Any) -> None:
    node = await node_factory(client_command_rate=RATE)
    c = await WS.open(node.ws_url, "alice")
    answers, took = await burst(c, [{"type": "history", "room": "news"}] * 55)
    n = served(answers)
    assert 40 <= n <= 40 + int(RATE.rate * took) + 1, (n, took)
    assert answers[-1]["type"] == "error"  # the tail of the burst was refused
    # ping stays free, and the budget comes back with time
    assert (await c.call({"type": "ping"}))["type"] == "reply"
    await asyncio.sleep(0.2)
    assert (await c.call({"type": "history", "room": "news"}))["type"] == "reply"
    assert node.hub.metrics.rate_limited == len(answers) - n


async def test_a_refused_subscribe_subscribes_nothing(node_factory: Any) -> None:
    node = await node_factory(client_command_rate=Rate(1.0, 4.0))
    c = await WS.open(node.ws_url, "alice")
    frames = [{"type": "subscribe", "room": "a"}, {"type": "unsubscribe", "room": "a"},
              {"type": "presence", "room": "a"}, {"type": "history", "room": "a"},
              {"type": "subscribe", "room": "b"}]  # fmt: skip
    answers, _ = await burst(c, frames)
    assert [a["type"] for a in answers] == ["reply"] * 4 + ["error"]
    assert answers[-1]["code"] == "rate_limited"
    async with httpx.AsyncClient(base_url=node.url) as http:
        r = await http.post("/v1/rooms/b/messages", json={"data": "x"},
                            headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
        assert r.status_code == 201, r.text
    await c.nothing("message", 0.3)
    assert not node.hub.sessions[c.session].subs


async def test_api_key_sessions_are_not_metered(node_factory: Any) -> None:
    node = await node_factory(client_command_rate=RATE)
    c = await WS.connect(node.ws_url, additional_headers={"Authorization": f"Bearer {API_KEY}"})
    answers, _ = await burst(c, [{"type": "history", "room": "news"}] * 60)
    assert served(answers) == 60


async def test_presence_flood_reaches_members_at_the_budget(node_factory: Any) -> None:
    node = await node_factory(client_command_rate=RATE, max_queue=200)
    watcher = await WS.open(node.ws_url, "wendy")
    await watcher.join("call:room")
    flooder = await WS.open(node.ws_url, "fred")
    pair = [{"type": "subscribe", "room": "call:room", "presence": True},
            {"type": "unsubscribe", "room": "call:room"}]  # fmt: skip
    answers, took = await burst(flooder, pair * 30)  # 60 frames, 40 of budget
    n = served(answers)
    assert 40 <= n <= 40 + int(RATE.rate * took) + 1, (n, took)
    # the watcher saw at most one join or leave per served frame and is still connected
    seen: list[dict[str, Any]] = []
    try:
        while True:
            seen.append(await watcher.recv(0.5))
    except TimeoutError:
        pass
    assert 0 < sum(f["type"] in ("join", "leave") for f in seen) <= n
    assert (await watcher.call({"type": "ping"}))["type"] == "reply"


# ---- 400 frames at once (hardening case 48), every kind of frame, memory:// and redis:// ------
KINDS = ["history", "subscribe", "presence", "publish", "signal", "refresh"]


def frames_of(kind: str, n: int, target: str) -> list[dict[str, Any]]:
    """``n`` frames of ``kind`` that are all served when within budget (subscribe: pairs of
    subscribe and unsubscribe of one room each)."""
    if kind == "subscribe":
        return [f for i in range(n // 2) for f in (
            {"type": "subscribe", "room": f"churn:{i}", "presence": True},
            {"type": "unsubscribe", "room": f"churn:{i}"})]  # fmt: skip
    one = {
        "history": {"type": "history", "room": "news"},
        "presence": {"type": "presence", "room": "news"},
        "publish": {"type": "publish", "room": "news", "data": {"n": 1}},
        "signal": {"type": "signal", "room": "call:m", "to": target, "data": {"kind": "bye"}},
        "refresh": {"type": "refresh", "token": token("alice")},
    }[kind]
    return [one] * n


@pytest.mark.parametrize("broker", ["memory", "redis"])
@pytest.mark.parametrize("kind", KINDS)
async def test_400_frames_at_once_are_served_up_to_the_budget(
    node_factory: Any, shared_redis: RedisProc, kind: str, broker: str
) -> None:
    """``HUB_CLIENT_COMMAND_RATE=20/s:40`` and 400 frames sent at once: 40 (plus what refills
    meanwhile) are served, the rest refused with ``rate_limited`` and nothing done for them.
    The publish rate is set high so that only the frame rate speaks."""
    kw: dict[str, Any] = {"client_command_rate": RATE, "client_publish_rate": Rate(1e4, 1e4),
                          "user_publish_rate": Rate(1e4, 1e4)}  # fmt: skip
    if broker == "redis":
        kw.update(broker_url=shared_redis.url, redis_prefix=f"m{secrets.token_hex(3)}:")
    node = await node_factory(**kw)
    c = await WS.open(node.ws_url, "alice")
    peer = await WS.open(node.ws_url, "bob")
    if kind == "signal":  # both are members of a call room: a served signal reaches bob
        await c.join("call:m")
        await peer.join("call:m")
    await asyncio.sleep(1.0 / RATE.rate * 3)  # the joins' tokens are back (at most 3 used)
    answers, took = await burst(c, frames_of(kind, 400, peer.session))
    n = served(answers)
    assert 40 <= n <= 40 + int(RATE.rate * took) + 3, (n, took)
    assert node.hub.metrics.rate_limited >= 400 - n
    # nothing was done for a refused frame
    if kind == "publish":
        async with httpx.AsyncClient(base_url=node.url) as http:
            r = await http.get("/v1/rooms/news/messages?limit=1000",
                               headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
        assert len(r.json()["messages"]) == n
    elif kind == "signal":
        got = 0
        try:
            while True:
                got += (await peer.recv(0.5))["type"] == "signal"
        except TimeoutError:
            pass
        assert got == n
    elif kind == "subscribe":  # subscribed where the subscribe was served, not the unsubscribe
        kept = {f"churn:{i // 2}" for i in range(0, 400, 2)
                if answers[i]["type"] == "reply" and answers[i + 1]["type"] == "error"}  # fmt: skip
        assert set(node.hub.sessions[c.session].subs) == kept


async def test_unknown_and_repeated_auth_frames_draw_tokens_ping_and_pong_do_not(
    node_factory: Any,
) -> None:
    node = await node_factory(client_command_rate=Rate(0.01, 3.0))
    c = await WS.open(node.ws_url, "alice")
    assert await c.error({"type": "nope"}) == "bad_request"
    assert await c.error({"type": "auth", "token": token("alice")}) == "bad_request"
    for _ in range(20):
        assert (await c.call({"type": "ping"}))["type"] == "reply"
        assert (await c.call({"type": "pong"}))["type"] == "reply"
    assert (await c.call({"type": "history", "room": "a"}))["type"] == "reply"
    refused = await c.call({"type": "history", "room": "a"})
    assert refused["code"] == "rate_limited" and "HUB_CLIENT_COMMAND_RATE" in refused["message"]
    # refused before it is even looked at: no bad_request counted for an unknown type now
    assert (await c.call({"type": "nope"}))["code"] == "rate_limited"
    assert node.hub.sessions[c.session].bad_frames == 2


# ---- 4005: refused for HUB_RATE_LIMIT_GRACE ----------------------------------------------------
async def test_a_session_refused_for_10_s_is_closed_with_4005(node_factory: Any) -> None:
    """The default grace, measured: a flood of 200 frames/s against ``20/s:40`` is served as the
    bucket refills (which does not end the run) and is closed 10 s after its first refusal,
    with a ``disconnect`` frame naming the limit."""
    node = await node_factory(client_command_rate=RATE)
    assert node.hub.settings.rate_limit_grace == 10.0
    c = await WS.open(node.ws_url, "alice")
    code, reason, seen = await c.flood({"type": "history", "id": 1, "room": "a"}, every=0.005)
    assert code == 4005 and reason == "rate limited for 10 s (HUB_CLIENT_COMMAND_RATE)"
    refusals = [f["_at"] for f in seen if f["type"] == "error"]
    replies = [f["_at"] for f in seen if f["type"] == "reply"]
    assert all(f["code"] == "rate_limited" for f in seen if f["type"] == "error")
    first = refusals[0]
    assert sum(t > first for t in replies) >= 10 * RATE.rate * 0.8  # served as it refilled
    last = seen[-1]
    assert last["type"] == "disconnect" and last["code"] == 4005 and last["reconnect"] is True
    # closed no earlier than 10 s after the first refusal (less a few ms of latency), and at
    # the first refusal after that (one every 5 ms): well within a second
    assert 9.95 <= last["_at"] - first < 11.0, last["_at"] - first
    assert node.hub.metrics.disconnects[4005] == 1


async def test_a_pause_of_a_second_ends_the_run(node_factory: Any) -> None:
    """Floods shorter than the grace, each followed by a pause of more than a second, are
    refused again and again over more than the grace, and never closed."""
    node = await node_factory(client_command_rate=RATE, rate_limit_grace=1.5)
    c = await WS.open(node.ws_url, "alice")
    refused = 0
    for _ in range(3):
        answers, _ = await burst(c, [{"type": "history", "room": "a"}] * 60)
        refused += len(answers) - served(answers)
        await asyncio.sleep(1.2)
    assert refused >= 3 * 10
    assert node.hub.sessions[c.session].closed is None
    assert (await c.call({"type": "history", "room": "a"}))["type"] == "reply"


async def test_user_budget_refusals_count_towards_4005(node_factory: Any) -> None:
    node = await node_factory(user_publish_rate=Rate(5.0, 5.0), rate_limit_grace=0.5)
    c = await WS.open(node.ws_url, "alice")
    code, reason, seen = await c.flood({"type": "publish", "id": 1, "room": "a", "data": 1},
                                       every=0.03)  # fmt: skip
    assert code == 4005 and "HUB_USER_PUBLISH_RATE" in reason, reason
    assert all("HUB_USER_PUBLISH_RATE" in f["message"] for f in seen if f["type"] == "error")


# ---- a presence flood against a member that does not read (hardening case 48) ------------------
ROOM = "chat:presence"


@pytest.mark.parametrize("reader", ["stopped", "slow"])
@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_presence_churn_never_pushes_a_slow_member_into_4001(
    node_factory: Any, shared_redis: RedisProc, broker: str, reader: str
) -> None:
    """A member whose socket is full (``HUB_MAX_QUEUE=20``) while three connections of one user
    churn 600 joins and leaves (a frame budget raised so that all are served) is not closed:
    its queue holds at most one presence change per member. ``stopped``: its client reads
    nothing during the churn, and once it reads again it receives at most one change per
    churning connection. ``slow``: its client reads a frame every 10 ms throughout, and
    receives at most one change per served frame. Either way the members it then knows are
    exactly the room's. With Redis the churn comes from another node."""
    home_kw: dict[str, Any] = {"max_queue": 20}
    churn_kw: dict[str, Any] = {"client_command_rate": Rate(1e4, 1e4)}
    if broker == "redis":
        shared = {"broker_url": shared_redis.url, "redis_prefix": f"p{secrets.token_hex(3)}:"}
        home = await node_factory(**home_kw, **shared)
        other = await node_factory(**churn_kw, **shared)
    else:
        home = other = await node_factory(**home_kw, **churn_kw)
    watcher = await WS.connect(home.ws_url, token("wendy"), max_queue=4)
    joined = await watcher.join(ROOM)
    session = home.hub.sessions[watcher.session]
    # The client reads no more: 60 KB messages fill its socket until the node queues for it.
    published = 0
    async with httpx.AsyncClient(base_url=home.url,
                                 headers={"Authorization": f"Bearer {API_KEY}"}) as http:  # fmt: skip
        while not session.queued_frames and published < 500:
            r = await http.post(f"/v1/rooms/{ROOM}/messages", json={"data": "x" * 60_000})
            assert r.status_code == 201, r.text
            published += 1
    assert session.queued_frames, "the socket never filled"
    backlog = session.queued_frames
    seen: list[dict[str, Any]] = []

    async def read(pause: float) -> None:
        """Read until the join of ``sam`` (the last member to join), ``pause`` s per frame."""
        while True:
            f = await watcher.recv(20)
            seen.append(f)
            if f["type"] == "join" and f["user"] == "sam":
                return
            await asyncio.sleep(pause)

    reading = asyncio.get_running_loop().create_task(read(0.01)) if reader == "slow" else None
    churners = [await WS.open(other.ws_url, "fred") for _ in range(3)]
    pairs = [{"type": "subscribe", "room": ROOM, "presence": True},
             {"type": "unsubscribe", "room": ROOM}] * 100  # fmt: skip
    for answers, _ in await asyncio.gather(*(burst(c, pairs) for c in churners)):
        assert served(answers) == 200
    # A member joining last, from the churners' node: its join follows every change above.
    sam = await WS.open(other.ws_url, "sam")
    await sam.join(ROOM)
    if reading is None:
        await until(lambda: session.closed is not None or any(
            getattr(i, "member", None) == sam.session for i in session.queue),
            what="sam's join queued for the watcher")  # fmt: skip
        assert session.closed is None, session.closed
        assert session.queued_frames <= backlog + 1  # the churn left nothing queued behind it
        await read(0.0)  # it reads again
    else:
        await reading
    assert session.closed is None and home.hub.metrics.disconnects[4001] == 0, session.closed
    view = {m["session"] for m in joined["presence"]}
    changes = 0
    for f in seen:
        if f["type"] in ("join", "leave"):
            changes += f["user"] == "fred"
            (view.add if f["type"] == "join" else view.discard)(f["session"])
    assert sum(f["type"] == "message" for f in seen) == published
    bound = len(churners) if reader == "stopped" else 3 * 200
    assert changes <= bound, (changes, bound)
    print(f"{reader} reader on {broker}: {changes} of 600 changes received (bound {bound})")
    now = await watcher.result({"type": "presence", "room": ROOM})
    assert view == {m["session"] for m in now["members"]} == {watcher.session, sam.session}
