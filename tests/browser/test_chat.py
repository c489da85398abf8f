"""The chat page and hubbub.js in real Chromium.

Two groups:

- ``test_chat_*``: the page at ``/`` of a real node (uvicorn on a socket): two browser contexts
  chat, presence shows both, and a node restart while one user keeps typing loses and repeats
  nothing (Redis broker; on memory:// the old history is gone, so a gap is shown instead).
- ``test_js_*``: hubbub.js alone against a scripted fake hub (a ``websockets`` server), to pin
  the client's protocol behaviour: reconnect after 4000 with ``since``, no reconnect after
  4501, dedupe by offset, gaps, heartbeat, publish queueing and resend, tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from tests.browser.conftest import watch
from tests.conftest import RedisProc, make_settings, start_node, token
from tests.helpers import until

STATIC = Path(__file__).resolve().parents[2] / "static"

# ---- helpers for the chat page ------------------------------------------------------------


async def open_chat(browser: Any, url: str, nick: str, logs: list[str]) -> Any:
    ctx = await browser.new_context(viewport={"width": 1100, "height": 720})
    page = watch(await ctx.new_page(), logs, nick)
    await page.goto(url)
    await page.fill("#nick", nick)
    await page.dispatch_event("#nick", "change")
    await page.wait_for_selector('#state[data-state="connected"]', timeout=10_000)
    return page


async def say(page: Any, text: str) -> None:
    await page.fill("#text", text)
    await page.press("#text", "Enter")


async def shown(page: Any) -> list[str]:
    """Texts of the messages the page shows as delivered (not the pending ones), in order."""
    return await page.eval_on_selector_all(  # type: ignore[no-any-return]
        "#messages li.msg:not(.pending) .text", "els => els.map(e => e.textContent)"
    )


async def online(page: Any) -> list[str]:
    return await page.eval_on_selector_all(  # type: ignore[no-any-return]
        "#who li", "els => els.map(e => e.dataset.user)"
    )


async def delivered(page: Any) -> list[dict[str, Any]]:
    """Every stored message hubbub.js handed to the page (before the page's own cid check)."""
    return await page.evaluate(  # type: ignore[no-any-return]
        "window.hubbubChat.delivered.filter(d => d.offset !== undefined)"
    )


def dump(logs: list[str]) -> str:
    return "\n".join(logs[-60:])


# ---- the chat page on a real node -------------------------------------------------------------


async def test_chat_two_users(browser: Any, artifacts: Path) -> None:
    """Dev mode (no secret: guests, no token): what `make run` serves."""
    settings = make_settings(jwt_secret=None, api_keys=())
    node = await start_node(settings)
    logs: list[str] = []
    try:
        alice = await open_chat(browser, node.url + "/", "alice", logs)
        bob = await open_chat(browser, node.url + "/", "bob", logs)
        await until(lambda: _both_online(alice, 2), what="alice sees 2 online")
        await until(lambda: _both_online(bob, 2), what="bob sees 2 online")
        await say(alice, "hello bob")
        await until(lambda: _has(bob, ["hello bob"]), what="bob gets hello")
        await say(bob, "hi alice <b>not bold</b>")
        want = ["hello bob", "hi alice <b>not bold</b>"]
        for page in (alice, bob):
            await until(lambda p=page: _has(p, want), what="both messages")
        await asyncio.sleep(0.3)  # anything extra (a duplicate) would show up now
        assert await shown(alice) == want, dump(logs)
        assert await shown(bob) == want, dump(logs)
        assert await alice.locator("#messages b").count() == 0  # text, never HTML
        # Nicknames travel in the data; the online list learns them from "nick" announcements.
        who = await alice.inner_text("#who")
        assert "alice" in who and "bob" in who, who
        await alice.screenshot(path=str(artifacts / "chat.png"))
        await bob.screenshot(path=str(artifacts / "chat-bob.png"))

        # History on load: a third visitor sees both messages, once, in order.
        carol = await open_chat(browser, node.url + "/", "carol", logs)
        await until(lambda: _has(carol, want), what="carol gets the history")
        assert await shown(carol) == want
        await until(lambda: _both_online(alice, 3), what="alice sees carol join")

        # Another room: bob joins #dev and writes; alice (not in #dev) sees nothing of it.
        await bob.fill("#new-room", "dev")
        await bob.press("#new-room", "Enter")
        await until(lambda: bob.inner_text("#room-title"), what="title")
        assert await bob.inner_text("#room-title") == "#dev"
        await until(lambda: _both_online(bob, 1), what="bob alone in #dev")
        await say(bob, "anyone in dev?")
        await until(lambda: _has(bob, ["anyone in dev?"]), what="dev message")
        await bob.click('#rooms button[data-room="lobby"]')
        assert await shown(bob) == want
        assert await shown(alice) == want
        # The nickname and the joined rooms survive a reload (localStorage).
        await bob.reload()
        await bob.wait_for_selector('#state[data-state="connected"]')
        assert await bob.input_value("#nick") == "bob"
        assert await bob.eval_on_selector_all(
            "#rooms button", "bs => bs.map(b => b.dataset.room)"
        ) == ["lobby", "dev"]
        assert not [line for line in logs if "PAGE ERROR" in line], dump(logs)
    finally:
        await node.stop()


async def _both_online(page: Any, n: int) -> bool:
    return len(await online(page)) == n


async def _has(page: Any, want: list[str]) -> bool:
    return await shown(page) == want


async def test_chat_across_two_nodes(browser: Any, redis_proc: Any) -> None:
    """Alice on node 1, bob on node 2, one Redis: messages and presence cross nodes."""
    settings = make_settings(broker_url=redis_proc.url)
    n1, n2 = await start_node(settings), await start_node(settings)
    logs: list[str] = []
    try:
        alice = await open_chat(browser, f"{n1.url}/#token={token('alice')}", "alice", logs)
        bob = await open_chat(browser, f"{n2.url}/#token={token('bob')}", "bob", logs)
        await until(lambda: _both_online(alice, 2), what="alice sees bob (other node)")
        await until(lambda: _both_online(bob, 2), what="bob sees alice (other node)")
        await say(alice, "from node 1")
        await until(lambda: _has(bob, ["from node 1"]), what="bob gets it")
        await say(bob, "from node 2")
        want = ["from node 1", "from node 2"]
        for page in (alice, bob):
            await until(lambda p=page: _has(p, want), what="both")
        await asyncio.sleep(0.3)
        assert await shown(alice) == await shown(bob) == want, dump(logs)
    finally:
        await n1.stop()
        await n2.stop()


async def test_chat_asks_for_a_token(browser: Any, artifacts: Path) -> None:
    """A hub that needs a token: without one the page shows the refusal (4501, no retry loop)
    and a token box; a pasted token connects. The #token=… fragment leaves the address bar."""
    node = await start_node(make_settings())
    logs: list[str] = []
    try:
        ctx = await browser.new_context(viewport={"width": 1100, "height": 720})
        page = watch(await ctx.new_page(), logs)
        await page.goto(node.url + "/")
        await page.wait_for_selector('#state[data-state="closed"]')
        assert await page.is_visible("#token-box")
        assert "unauthorized" in await page.inner_text("#state")
        await page.screenshot(path=str(artifacts / "chat-token.png"))
        await page.fill("#token", token("dora", name="Dora"))
        await page.click("#token-box button")
        await page.wait_for_selector('#state[data-state="connected"]')
        assert not await page.is_visible("#token-box")
        await until(lambda: online(page), what="presence")
        assert (await page.inner_text("#who li")).split() == ["Dora", "(you)"]  # public name

        other = watch(await ctx.new_page(), logs)
        await other.goto(f"{node.url}/#token={token('erin')}")
        await other.wait_for_selector('#state[data-state="connected"]')
        assert "token" not in other.url
    finally:
        await node.stop()


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_chat_survives_restart(
    browser: Any, artifacts: Path, request: pytest.FixtureRequest, broker: str
) -> None:
    """Restart the node while alice keeps typing: both pages end with every message exactly
    once, in order. With Redis nothing is lost; with memory:// the old history is gone (a new
    epoch), which the pages must show as a gap, yet nobody sees anything twice."""
    if broker == "redis":
        redis_proc = request.getfixturevalue("redis_proc")
        settings = make_settings(broker_url=redis_proc.url, shutdown_timeout=2)
    else:
        settings = make_settings(shutdown_timeout=2)
    node = await start_node(settings)
    port = node.port
    logs: list[str] = []
    try:
        alice = await open_chat(browser, f"{node.url}/#token={token('alice')}", "alice", logs)
        bob = await open_chat(browser, f"{node.url}/#token={token('bob')}", "bob", logs)
        await until(lambda: _both_online(bob, 2), what="bob sees 2 online")
        await say(alice, "a0")
        await say(bob, "b0")
        await until(lambda: _has(alice, ["a0", "b0"]), what="a0 b0")

        typed: list[str] = []

        async def keep_typing() -> None:
            for i in range(1, 25):
                typed.append(f"a{i}")
                await say(alice, f"a{i}")
                await asyncio.sleep(0.15)

        typing = asyncio.create_task(keep_typing())
        await asyncio.sleep(0.6)
        await node.stop()
        await until(
            lambda: bob.evaluate("document.getElementById('state').dataset.state !== 'connected'"),
            what="bob notices the restart",
        )
        await alice.screenshot(path=str(artifacts / f"chat-restart-{broker}-during.png"))
        await asyncio.sleep(0.5)
        node = await start_node(settings, port=port)
        await typing
        await say(bob, "b1")
        want = ["a0", "b0", *typed, "b1"]
        for page in (alice, bob):
            await until(lambda p=page: _has(p, want), within=30, what=f"all of {want}")
        await asyncio.sleep(0.5)
        await alice.screenshot(path=str(artifacts / f"chat-restart-{broker}-alice.png"))
        await bob.screenshot(path=str(artifacts / f"chat-restart-{broker}-bob.png"))
        for page in (alice, bob):
            assert await shown(page) == want, dump(logs)
            assert await page.get_attribute("#state", "data-state") == "connected"
        gaps = await bob.locator("#messages li.system.gap").count()
        if broker == "redis":
            assert gaps == 0, "Redis keeps history across a node restart: no gap expected"
            # And at the protocol level: no message reached the page twice (by cid).
            for page in (alice, bob):
                cids = [d["cid"] for d in await delivered(page) if d["cid"]]
                assert len(cids) == len(set(cids)), cids
        else:
            assert gaps >= 1, "memory:// loses the room's epoch on restart: a gap must be shown"
        assert not [line for line in logs if "PAGE ERROR" in line], dump(logs)
    finally:
        await node.stop()


# ---- hubbub.js against a scripted fake hub ----------------------------------------------------

Script = Callable[["FakeHub", ServerConnection, int], Awaitable[None]]


class FakeHub:
    """A websockets server that runs ``script(hub, conn, n)`` for its n-th connection and
    records every frame it receives, per connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.frames: list[list[dict[str, Any]]] = []
        self.errors: list[BaseException] = []

    async def __aenter__(self) -> FakeHub:
        self.server = await serve(self._handle, "127.0.0.1", 0, process_request=self._http,
                                  ping_interval=None, compression=None)  # fmt: skip
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 5)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    @staticmethod
    def _http(conn: ServerConnection, request: Request) -> Response | None:
        """Plain HTTP on the same port: a blank page and /static/* (so the page is same-origin
        with the fake hub; Chromium blocks other origins from loopback). Anything else is 404,
        which also makes the SSE fallback fail fast. The WebSocket path may carry a query (a
        client without a token sends an empty ``?token=``)."""
        if request.path.split("?", 1)[0] == "/v1/ws":
            return None
        if request.path == "/":
            body, ctype, status = b"<!doctype html><title>js</title>", "text/html", 200
        elif request.path.startswith("/static/") and ".." not in request.path:
            body, ctype, status = (STATIC / request.path[8:]).read_bytes(), "text/javascript", 200
        else:
            body, ctype, status = b"not found", "text/plain", 404
        headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(body))),
                           ("Connection", "close")])  # fmt: skip
        return Response(status, "OK" if status == 200 else "Not Found", headers, body)

    async def _handle(self, conn: ServerConnection) -> None:
        n = len(self.frames)
        self.frames.append([])
        try:
            await self.script(self, conn, n)
        except Exception as exc:  # a failed expectation inside the script
            if (
                not isinstance(exc, ConnectionError)
                and "ConnectionClosed" not in type(exc).__name__
            ):
                self.errors.append(exc)

    async def recv(self, conn: ServerConnection, n: int, want: str | None = None) -> dict[str, Any]:
        """The next client frame (of type ``want``, skipping pongs when another is wanted)."""
        while True:
            f = json.loads(await asyncio.wait_for(conn.recv(), 10))
            self.frames[n].append(f)
            if want is None or f.get("type") == want:
                return f  # type: ignore[no-any-return]
            if f.get("type") != "pong":
                raise AssertionError(f"expected {want}, got {f}")

    @staticmethod
    async def send(conn: ServerConnection, **frame: Any) -> None:
        await conn.send(json.dumps(frame))

    @staticmethod
    async def welcome(conn: ServerConnection, n: int, **kw: Any) -> None:
        await FakeHub.send(conn, type="welcome", session=f"session-{n:012d}", user="u",
                           ping_interval=kw.pop("ping_interval", 25),
                           ping_timeout=kw.pop("ping_timeout", 10), version="1", **kw)  # fmt: skip

    async def idle(self, conn: ServerConnection, n: int) -> None:
        """Keep the connection open, recording frames, until the client goes."""
        with contextlib.suppress(Exception):
            while True:
                self.frames[n].append(json.loads(await conn.recv()))


HARNESS = """
async ([url, useToken]) => {
  const { connect } = await import("/static/hubbub.js");
  const T = (window.T = { msgs: [], gaps: [], states: [], errors: [], tokens: 0, results: [],
                          delays: [] });
  window.client = connect(url, {
    backoff: { base: 50, max: 200 },
    getToken: useToken ? async () => `tok-${++T.tokens}` : undefined,
    onState: (s) => T.states.push(s),
    onError: (e) => T.errors.push({ code: e.code, closeCode: e.closeCode, message: e.message }),
  });
  client.on("retry", (r) => T.delays.push(r.delay));
  window.sub = client.subscribe("r", {
    onMessage: (m) => T.msgs.push([m.epoch, m.offset, m.data]),
    onGap: (g) => T.gaps.push(g),
  });
}
"""


async def js_page(browser: Any, hub: FakeHub, logs: list[str], *, use_token: bool = False) -> Any:
    """A blank page served by the fake hub itself that imports hubbub.js and connects."""
    ctx = await browser.new_context()
    page = watch(await ctx.new_page(), logs)
    await page.goto(f"http://127.0.0.1:{hub.port}/")
    await page.evaluate(HARNESS, [hub.url, use_token])
    return page


async def T(page: Any, key: str) -> Any:
    return await page.evaluate(f"window.T.{key}")


async def test_js_reconnect_after_4000_resumes_and_dedupes(browser: Any) -> None:
    async def script(hub: FakeHub, conn: ServerConnection, n: int) -> None:
        await hub.welcome(conn, n)
        sub = await hub.recv(conn, n, "subscribe")
        if n == 0:
            assert "since" not in sub, sub
            await hub.send(conn, type="reply", id=sub["id"], result={
                "room": "r", "epoch": "e1", "offset": 0, "recovered": False, "cursor": "c0"})  # fmt: skip
            for off in (1, 2):
                await hub.send(
                    conn, type="message", room="r", epoch="e1", offset=off, data=off, ts=1
                )
            await hub.send(conn, type="disconnect", code=4000, reason="draining", reconnect=True)
            await conn.close(4000, "draining")
            return
        # Resubscribe from the last message seen (the c0 cursor is stale, so a position).
        assert sub["since"] == {"epoch": "e1", "offset": 2}, sub
        for off in (1, 2, 3):  # a sloppy hub repeats 1 and 2: the client must drop them
            await hub.send(conn, type="message", room="r", epoch="e1", offset=off, data=off, ts=1)
        await hub.send(conn, type="reply", id=sub["id"], result={
            "room": "r", "epoch": "e1", "offset": 3, "recovered": True, "cursor": "c3"})  # fmt: skip
        for off in (3, 4):
            await hub.send(conn, type="message", room="r", epoch="e1", offset=off, data=off, ts=1)
        await hub.idle(conn, n)

    logs: list[str] = []
    async with FakeHub(script) as hub:
        page = await js_page(browser, hub, logs)
        try:
            await until(lambda: T(page, "msgs.length >= 4"), what="4 messages")
        except AssertionError:
            raise AssertionError(
                f"{hub.errors} {hub.frames} {await T(page, 'msgs')} "
                f"{await T(page, 'states')} {dump(logs)}"
            ) from None
        await asyncio.sleep(0.2)
        assert [m[1] for m in await T(page, "msgs")] == [1, 2, 3, 4], dump(logs)
        states = await T(page, "states")
        assert states[:3] == ["connecting", "connected", "reconnecting"], states
        assert states[-1] == "connected", states
        assert await page.evaluate("sub.position") == {"epoch": "e1", "offset": 4}
        assert len(hub.frames) == 2 and not hub.errors, hub.errors
        assert await T(page, "gaps") == []


async def test_js_no_reconnect_after_4501(browser: Any) -> None:
    async def script(hub: FakeHub, conn: ServerConnection, n: int) -> None:
        await conn.close(4501, "unauthorized")

    logs: list[str] = []
    async with FakeHub(script) as hub:
        page = await js_page(browser, hub, logs)
        await until(lambda: T(page, "states.includes('closed')"), what="closed")
        await asyncio.sleep(1.0)  # backoff base is 50 ms: a retry would have happened by now
        assert len(hub.frames) == 1, "the client reconnected after a terminal close code"
        errors = await T(page, "errors")
        assert errors[0]["closeCode"] == 4501 and errors[0]["code"] == "unauthorized", errors
        assert await T(page, "states") == ["connecting", "closed"]
        err = await page.evaluate(
            "client.publish('r', 1).then(() => null, e => [e.code, e.temporary])"
        )
        assert err == ["closed", False]


async def test_js_backoff_is_exponential_with_full_jitter(browser: Any) -> None:
    """A hub that drops every connection with 4000 before `welcome`: the attempts go on, each
    delay drawn from [0, min(max, base * 2^attempt)) (base 50 ms, max 200 ms here)."""

    async def script(hub: FakeHub, conn: ServerConnection, n: int) -> None:
        await conn.close(4000, "draining")

    logs: list[str] = []
    async with FakeHub(script) as hub:
        page = await js_page(browser, hub, logs)
        await until(lambda: T(page, "delays.length >= 12"), what="12 attempts")
        await page.evaluate("client.close()")
        delays = await T(page, "delays")
        for i, d in enumerate(delays[:12]):
            assert 0 <= d < min(200, 50 * 2**i), (i, delays)
        assert len({round(d) for d in delays[4:12]}) > 1, delays  # jittered, not constant
        assert await T(page, "states.at(-1)") == "closed"
        n = len(hub.frames)
        await asyncio.sleep(0.5)
        assert len(hub.frames) == n, "close() must stop reconnecting"


async def test_js_gap_epoch_change_and_heartbeat(browser: Any) -> None:
    async def script(hub: FakeHub, conn: ServerConnection, n: int) -> None:
        if n == 0:
            await hub.welcome(conn, n, ping_interval=1, ping_timeout=1)
            sub = await hub.recv(conn, n, "subscribe")
            await hub.send(conn, type="reply", id=sub["id"], result={
                "room": "r", "epoch": "e1", "offset": 5, "recovered": False, "cursor": "c5"})  # fmt: skip
            await hub.send(conn, type="message", room="r", epoch="e1", offset=6, data=6, ts=1)
            # The broker lost the room: a new epoch, announced by a gap.
            await hub.send(conn, type="gap", room="r", epoch="e2", to=0, **{"from": 1})
            await hub.send(conn, type="message", room="r", epoch="e2", offset=1, data=1, ts=1)
            for off in (1, 3):  # a repeat (dropped), then a hole (reported, never hidden)
                await hub.send(
                    conn, type="message", room="r", epoch="e2", offset=off, data=off, ts=1
                )
            await hub.send(conn, type="ping")
            await hub.recv(conn, n, "pong")
            # Now silence: after ping_interval + ping_timeout the client must give up on us.
            await hub.idle(conn, n)
            return
        await hub.welcome(conn, n)
        sub = await hub.recv(conn, n, "subscribe")
        assert sub["since"] == {"epoch": "e2", "offset": 3}, sub
        await hub.idle(conn, n)

    logs: list[str] = []
    async with FakeHub(script) as hub:
        page = await js_page(browser, hub, logs)
        await until(lambda: T(page, "msgs.length >= 3"), what="3 messages")
        await until(lambda: len(hub.frames) >= 2, within=8,
                         what="reconnect after a silent server")  # fmt: skip
        msgs = await T(page, "msgs")
        assert [(m[0], m[1]) for m in msgs] == [("e1", 6), ("e2", 1), ("e2", 3)], msgs
        gaps = await T(page, "gaps")
        assert gaps == [
            {"room": "r", "epoch": "e2", "from": 1, "to": 0},
            {"room": "r", "epoch": "e2", "from": 2, "to": 2, "synthetic": True},
        ], gaps
        assert {"type": "pong"} in hub.frames[0]
        await until(lambda: len(hub.frames[1]) >= 1, what="resubscribe")
        assert not hub.errors, hub.errors


async def test_js_publish_queue_resend_and_tokens(browser: Any) -> None:
    """A publish in flight when the connection drops is resent with the same key; one made
    while reconnecting is queued and sent after the resubscribe; getToken feeds every connect,
    every `expiring`, and the reconnect after 4004."""
    seen: dict[str, Any] = {}

    async def script(hub: FakeHub, conn: ServerConnection, n: int) -> None:
        auth = await hub.recv(conn, n, "auth")
        assert auth["token"] == f"tok-{[1, 2, 4][n]}", auth
        if n == 1:
            await asyncio.sleep(0.4)  # the page publishes "p2" meanwhile
        await hub.welcome(conn, n)
        sub = await hub.recv(conn, n, "subscribe")
        await hub.send(conn, type="reply", id=sub["id"], result={
            "room": "r", "epoch": "e", "offset": 0, "recovered": False, "cursor": "c"})  # fmt: skip
        if n == 0:
            p1 = await hub.recv(conn, n, "publish")
            seen["p1"] = p1
            await conn.close(4000)  # no reply: the outcome is unknown to the client
            return
        if n == 1:
            again = await hub.recv(conn, n, "publish")
            assert again["data"] == "p1" and again["key"] == seen["p1"]["key"], again
            p2 = await hub.recv(conn, n, "publish")
            assert p2["data"] == "p2", p2
            for i, f in enumerate((again, p2), 1):
                await hub.send(conn, type="reply", id=f["id"],
                               result={"room": "r", "epoch": "e", "offset": i, "cursor": f"c{i}"})  # fmt: skip
            await hub.send(conn, type="expiring", **{"in": 30})
            ref = await hub.recv(conn, n, "refresh")
            assert ref["token"] == "tok-3", ref
            await hub.send(conn, type="reply", id=ref["id"], result={"expires_in": 60})
            await hub.send(
                conn, type="disconnect", code=4004, reason="token expired", reconnect=True
            )
            await conn.close(4004, "token expired")
            return
        await hub.idle(conn, n)

    logs: list[str] = []
    async with FakeHub(script) as hub:
        page = await js_page(browser, hub, logs, use_token=True)
        await page.evaluate("""() => {
            client.publish("r", "p1").then((r) => T.results.push(["p1", r.offset]));
            const off = client.on("state", (s) => {
              if (s !== "reconnecting") return;
              off();
              client.publish("r", "p2").then((r) => T.results.push(["p2", r.offset]));
            });
        }""")
        await until(lambda: len(hub.frames) >= 3, what="3rd connection")
        await until(lambda: T(page, "results.length >= 2"), what="both publishes resolved")
        assert await T(page, "results") == [["p1", 1], ["p2", 2]]
        types = [f["type"] for f in hub.frames[1]]
        assert types[:4] == ["auth", "subscribe", "publish", "publish"], types
        assert not hub.errors, hub.errors
        assert await T(page, "tokens") == 4
        assert await T(page, "errors") == [], dump(logs)


# ---- hubbub.js against a real node: token modes and the SSE + HTTP fallback -------------------

NODE_HARNESS = """
async ([opts]) => {
  const { connect } = await import("/static/hubbub.js");
  const T = (window.T = { msgs: [], gaps: [], states: [], errors: [], members: [] });
  window.client = connect("/v1/ws", {
    ...opts,
    backoff: { base: 100, max: 500 },
    onState: (s) => T.states.push(s),
    onError: (e) => T.errors.push({ code: e.code, closeCode: e.closeCode, message: e.message }),
  });
  window.sub = client.subscribe("room1", {
    history: 10,
    presence: true,
    onMessage: (m) => T.msgs.push([m.offset, m.data]),
    onGap: (g) => T.gaps.push(g),
    onPresence: (members) => (T.members = members.map((m) => m.user)),
  });
}
"""


async def node_page(browser: Any, url: str, logs: list[str], **opts: Any) -> Any:
    page = watch(await (await browser.new_context()).new_page(), logs)
    await page.goto(url + "/static/style.css")  # any document of the hub's origin will do
    await page.evaluate(NODE_HARNESS, [opts])
    return page


async def test_js_token_on_a_hub_that_admits_guests(browser: Any) -> None:
    """With anonymous access on, the hub welcomes a token-less connection at once and refuses
    a later auth frame; the client notices (error for its auth frame's id) and reconnects with
    the token in the query, so it is alice, not a guest."""
    node = await start_node(make_settings(allow_anonymous=True))
    logs: list[str] = []
    try:
        page = await node_page(browser, node.url, logs, token=token("alice"))
        await until(lambda: page.evaluate("client.state === 'connected'"), what="connected")
        assert await page.evaluate("client.user") == "alice", dump(logs)
        await until(lambda: T(page, "members.length === 1"), what="presence")
        assert await T(page, "members") == ["alice"]
        res = await page.evaluate("client.publish('room1', 'hi')")
        assert res["offset"] == 1
        await until(lambda: T(page, "msgs.length === 1"), what="own message")
        # And without a token it is a guest.
        guest = await node_page(browser, node.url, logs)
        await until(lambda: guest.evaluate("client.state === 'connected'"), what="guest")
        assert (await guest.evaluate("client.user")).startswith("guest-")
        assert await T(guest, "msgs") == [[1, "hi"]]  # history: 10
        # history, presence, unsubscribe over the WebSocket
        hist = await guest.evaluate("client.history('room1', {limit: 5})")
        assert [m["data"] for m in hist["messages"]] == ["hi"] and hist["complete"] is True
        pres = await guest.evaluate("client.presence('room1')")
        assert pres["sessions"] == 2, pres
        await guest.evaluate("sub.unsubscribe()")
        await until(lambda: T(page, "members.length === 1"), what="guest left")
        await page.evaluate("client.publish('room1', 'after')")
        await until(lambda: T(page, "msgs.length === 2"), what="alice gets 'after'")
        await asyncio.sleep(0.3)
        assert await T(guest, "msgs") == [[1, "hi"]]
        err = await page.evaluate(
            "client.publish('bad room!', 1).then(() => null, e => [e.code, e.temporary])"
        )
        assert err == ["bad_request", False]
    finally:
        await node.stop()


async def test_js_sse_fallback_with_http_publish(browser: Any, redis_proc: RedisProc) -> None:
    """transport: "sse": the stream for the rooms, publishes over HTTP, presence from the
    stream, and resume with the last event id across a node restart."""
    settings = make_settings(broker_url=redis_proc.url, shutdown_timeout=2)
    node = await start_node(settings)
    port = node.port
    logs: list[str] = []
    try:
        a = await node_page(browser, node.url, logs, token=token("alice"), transport="sse")
        b = await node_page(browser, node.url, logs, token=token("bob"), transport="sse")
        for page in (a, b):
            await until(lambda p=page: p.evaluate("client.state === 'connected'"), what="up")
            assert await page.evaluate("client.transport") == "sse"
        await until(lambda: T(a, "members.length === 2"), what="presence of both")
        r1 = await a.evaluate("client.publish('room1', 'one')")
        assert r1["offset"] == 1 and r1["cursor"]
        await until(lambda: T(b, "msgs.length === 1"), what="bob gets one")
        await node.stop()
        await until(lambda: b.evaluate("client.state !== 'connected'"), what="b notices")
        await until(lambda: a.evaluate("client.state !== 'connected'"), what="a notices")
        pending = asyncio.ensure_future(
            a.evaluate("client.publish('room1', 'two').then(r => r.offset)")  # queued
        )
        await asyncio.sleep(0.3)
        assert not pending.done()
        node = await start_node(settings, port=port)
        assert await pending == 2  # Redis kept the room across the restart
        await a.evaluate("client.publish('room1', 'three')")
        want = ["one", "two", "three"]
        for page in (a, b):
            await until(lambda p=page: T(p, "msgs.length >= 3"), within=20, what="3 msgs")
            await asyncio.sleep(0.2)
            assert [m[1] for m in await T(page, "msgs")] == want, dump(logs)
            assert not await T(page, "gaps.length")
        # Kicked by the server API (4509): terminal on SSE too.
        import httpx

        from tests.conftest import API_KEY

        async with httpx.AsyncClient(base_url=node.url) as http:
            r = await http.post(
                "/v1/users/bob/disconnect", json={}, headers={"Authorization": f"Bearer {API_KEY}"}
            )
            assert r.status_code == 200, r.text
        await until(lambda: b.evaluate("client.state === 'closed'"), what="bob kicked")
        assert (await T(b, "errors"))[-1]["closeCode"] == 4509
        assert await a.evaluate("client.state") == "connected"
        assert not [line for line in logs if "PAGE ERROR" in line], dump(logs)
    finally:
        await node.stop()


class NoWebSocketProxy:
    """A TCP proxy in front of a node that refuses WebSocket upgrades (403), like some
    corporate proxies do, and passes everything else through."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.refused = 0

    async def __aenter__(self) -> NoWebSocketProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"upgrade: websocket" in head.lower():
                self.refused += 1
                writer.write(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
            up_writer.write(head)

            async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                with contextlib.suppress(Exception):
                    while chunk := await r.read(65536):
                        w.write(chunk)
                        await w.drain()
                with contextlib.suppress(Exception):
                    w.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


async def test_js_auto_falls_back_to_sse_behind_a_proxy(browser: Any) -> None:
    """transport "auto" (the default): when the WebSocket never opens, the client switches to
    SSE + HTTP and the app does not notice."""
    node = await start_node(make_settings())
    logs: list[str] = []
    try:
        async with NoWebSocketProxy(node.port) as proxy:
            url = f"http://127.0.0.1:{proxy.port}"
            a = await node_page(browser, url, logs, token=token("alice"))
            await until(lambda: a.evaluate("client.state === 'connected'"), what="up")
            assert await a.evaluate("client.transport") == "sse"
            assert proxy.refused >= 3
            res = await a.evaluate("client.publish('room1', 'via http')")
            assert res["offset"] == 1
            await until(lambda: T(a, "msgs.length === 1"), what="own message via SSE")
            assert await T(a, "msgs") == [[1, "via http"]]
    finally:
        await node.stop()


async def test_js_token_refresh_on_a_real_node(browser: Any) -> None:
    """Short-lived tokens from getToken: the hub sends `expiring`, the client refreshes, and the
    session outlives the first token. With a static token the hub closes with 4004 at `exp`;
    the reconnect presents the same, now expired token: 4501, terminal."""
    node = await start_node(make_settings())
    logs: list[str] = []
    try:
        page = watch(await (await browser.new_context()).new_page(), logs)
        await page.goto(node.url + "/static/style.css")
        issued: list[float] = []

        def fresh_token() -> str:
            issued.append(asyncio.get_running_loop().time())
            return token("alice", ttl=5)

        await page.expose_function("freshToken", fresh_token)
        await page.evaluate(
            NODE_HARNESS.replace("...opts,", "...opts, getToken: () => window.freshToken(),"), [{}]
        )
        await until(lambda: page.evaluate("client.state === 'connected'"), what="up")
        session = await page.evaluate("client.session")
        await asyncio.sleep(6.5)  # longer than the first token lived
        assert await page.evaluate("[client.state, client.session]") == ["connected", session]
        assert await T(page, "errors") == [], dump(logs)
        # The hub says "expiring" at once for tokens living < 60 s; no refresh storm.
        assert len(issued) <= 8, [round(t - issued[0], 2) for t in issued]

        # ttl 6: long enough to connect on a loaded machine (else it is a plain 4501 at once)
        static = await node_page(browser, node.url, logs, token=token("bob", ttl=6))
        await until(lambda: static.evaluate("T.states.includes('connected')"), what="up")
        await until(lambda: static.evaluate("client.state === 'closed'"), within=15, what="4501")
        errors = await T(static, "errors")
        assert errors[-1]["closeCode"] == 4501, errors
        assert "reconnecting" in await T(static, "states")
    finally:
        await node.stop()


async def test_js_offline_and_back(browser: Any) -> None:
    """The network goes away (DevTools offline): the heartbeat notices, the state says
    offline, a publish waits in the queue; back online, the client reconnects at once and
    catches up with what others published meanwhile, once and in order."""
    import httpx

    from tests.conftest import API_KEY

    node = await start_node(make_settings(ping_interval=1, ping_timeout=1))
    logs: list[str] = []
    try:
        ctx = await browser.new_context()
        page = watch(await ctx.new_page(), logs)
        await page.goto(node.url + "/static/style.css")
        await page.evaluate(NODE_HARNESS, [{"token": token("alice")}])
        await until(lambda: page.evaluate("client.state === 'connected'"), what="up")
        await page.evaluate("client.publish('room1', 'before')")
        await ctx.set_offline(True)
        await until(lambda: page.evaluate("client.state === 'offline'"), what="offline")
        queued = asyncio.ensure_future(page.evaluate("client.publish('room1', 'mine')"))
        async with httpx.AsyncClient(base_url=node.url) as http:
            for text in ("x", "y"):
                r = await http.post(
                    "/v1/rooms/room1/messages",
                    json={"data": text},
                    headers={"Authorization": f"Bearer {API_KEY}"},
                )
                assert r.status_code == 201, r.text
        await asyncio.sleep(1.5)
        assert await page.evaluate("client.state") == "offline"
        assert not queued.done()
        await ctx.set_offline(False)
        assert (await queued)["offset"] == 4
        await until(lambda: T(page, "msgs.length >= 4"), what="caught up")
        await asyncio.sleep(0.3)
        assert await T(page, "msgs") == [[1, "before"], [2, "x"], [3, "y"], [4, "mine"]]
        assert await T(page, "gaps") == []
        states = await T(page, "states")
        assert states[-3:] == ["offline", "reconnecting", "connected"], states
    finally:
        await node.stop()
