"""The admin page (static/admin.html, served at /admin) in Debian's headless Chromium:
API key from the fragment or the form, nodes, rooms, presence, live chart, publish, disconnect.
The screenshot lands in test-artifacts/admin.png."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright

from hubbub.hub.settings import Rate
from tests.conftest import API_KEY, CHROMIUM_ARGS, RedisProc, chromium_path, token
from tests.helpers import until
from tests.ops.harness import nginx_cluster
from tests.wsclient import WS

pytestmark = pytest.mark.timeout(60)

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Any]:
    exe = chromium_path()
    async with async_playwright() as pw:
        ctx = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh user-data dir per test
            executable_path=exe,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            p = ctx.pages[0] if ctx.pages else await ctx.new_page()
            p.errors = []
            p.on("pageerror", lambda e: p.errors.append(str(e)))
            p.on("console", lambda m: m.type == "error" and p.errors.append(m.text))
            yield p
        finally:
            await ctx.close()


async def test_admin_page_live(node_factory: Any, page: Any) -> None:
    node = await node_factory(api_rate=Rate(0.0, 0.0), client_publish_rate=Rate(0.0, 0.0))
    alice = await WS.connect(node.ws_url, token("alice", name="Alice"))
    bob = await WS.connect(node.ws_url, token("bob", name="Bob"))
    carol = await WS.connect(node.ws_url, token("carol"))
    for c in (alice, bob):
        await c.result({"type": "subscribe", "room": "chat:lobby", "presence": True})
    await carol.result({"type": "subscribe", "room": "news"})

    async def traffic() -> None:
        i = 0
        while True:
            i += 1
            await bob.send({"type": "publish", "room": "chat:lobby", "data": {"i": i}})
            await asyncio.sleep(0.05 if (i // 40) % 2 else 0.12)

    pumping = asyncio.create_task(traffic())
    # Clients that keep reading (a client that stops reading is a slow consumer, and its close
    # handshake would wait behind the unread frames).
    readers = [asyncio.create_task(_drain(bob))]
    try:
        await page.goto(f"{node.url}/admin#key={API_KEY}")
        await page.wait_for_selector("#app:not([hidden])")
        assert API_KEY not in page.url  # the key left the address bar
        await until(lambda: page.inner_text("#s-nodes"), what="nodes stat")
        assert await page.inner_text("#s-nodes") == "1"
        await until(
            lambda: page.locator("#nodes tr").first.inner_text(), what="nodes table", within=5
        )
        assert node.hub.node_id in await page.inner_text("#nodes")
        rooms = await until(
            lambda: _text_if(page, "#rooms", "chat:lobby"), what="rooms listing (GET /v1/rooms)"
        )
        assert "news" in rooms

        # Presence of a room: click its row.
        await page.locator("#rooms tr", has_text="chat:lobby").click()
        pres = await until(lambda: _text_if(page, "#presence", "alice"), what="presence")
        assert "bob" in pres and "Alice" in pres
        assert "2 user(s), 2 session(s)" in await page.inner_text("#presence-out")

        # Publish a test message: alice receives it.
        await page.fill("#publish-data", '{"text": "hello from admin"}')
        await page.fill("#publish-event", "notice")
        await page.click("#publish-form button")
        out = await until(lambda: _text_if(page, "#publish-out", "offset"), what="publish")
        assert "chat:lobby" in out
        while True:
            m = await alice.next("message")
            if m["data"] == {"text": "hello from admin"}:
                assert m["event"] == "notice" and "from" not in m  # an API-key publication
                break
        readers.append(asyncio.create_task(_drain(alice)))

        # Disconnect a user: carol's socket closes with 4509.
        await page.fill("#kick-user", "carol")
        await page.fill("#kick-reason", "maintenance")
        await page.click("#kick-form button")
        await until(lambda: _text_if(page, "#kick-out", "1 session(s)"), what="kick result")
        code, frames = await carol.closed()
        assert code == 4509
        assert frames[-1]["type"] == "disconnect" and frames[-1]["reason"] == "maintenance"

        # Let the chart collect a few seconds of rates, then check it is drawn.
        await asyncio.sleep(6)
        rate = float(await page.inner_text("#s-pub"))
        assert rate > 1, rate
        assert await page.inner_text("#s-ws") == "2"
        painted = await page.evaluate(
            """() => { const c = document.getElementById('chart');
                       const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                       let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
                       return n; }"""
        )
        assert painted > 5000, painted
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "admin.png"), full_page=True)
        assert not page.errors, page.errors

        # Without a key (none in the fragment, none kept in this tab) the page asks for one.
        await page.evaluate("sessionStorage.clear()")
        await page.reload()
        await page.wait_for_selector("#login:not([hidden])")
        assert await page.is_hidden("#app")
        await page.fill("#login-key", "wrong-key")
        await page.click("#login-form button")
        await until(lambda: _text_if(page, "#login-out", "refused"), what="refusal")
        assert await page.is_hidden("#app")
        await page.fill("#login-key", API_KEY)
        await page.click("#login-form button")
        await page.wait_for_selector("#app:not([hidden])")
        await page.reload()  # kept for this tab: a reload stays logged in
        await page.wait_for_selector("#app:not([hidden])")
        errors = [e for e in page.errors if "401" not in e]  # the refused probe logs a 401
        assert not errors, errors
    finally:
        for t in (pumping, *readers):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for c in (alice, bob):
            await c.close()


async def _drain(c: WS) -> None:
    with contextlib.suppress(Exception):
        async for _ in c.conn:
            pass


async def _text_if(page: Any, selector: str, needle: str) -> str | None:
    text: str = await page.inner_text(selector)
    return text if needle in text else None


async def test_admin_page_behind_nginx_shows_both_nodes(
    redis_proc: RedisProc, tmp_path: Path, page: Any
) -> None:
    """The deployment shape: the page behind deploy/nginx.conf, two nodes on Redis. Each
    /metrics scrape reaches one node; the page lists both and sums their connections."""
    clients: list[WS] = []
    async with nginx_cluster(tmp_path, redis_proc.url) as (nginx, _nodes):
        try:
            clients = [await WS.connect(nginx.ws_url, token(f"u{i}")) for i in range(5)]
            for i, c in enumerate(clients):
                await c.result({"type": "subscribe", "room": f"team:{i % 2}"})
            await page.goto(f"{nginx.url}/admin#key={API_KEY}")
            await page.wait_for_selector("#app:not([hidden])")
            await until(
                lambda: _text_if(page, "#s-nodes", "2"),
                what="both nodes in the admin page",
                within=15,
            )
            rows = await page.locator("#nodes tr").all_inner_texts()
            assert len(rows) == 2, rows
            await until(lambda: _text_if(page, "#s-ws", "5"), what="connections summed over nodes")
            await until(lambda: _text_if(page, "#rooms", "team:"), what="rooms from both nodes")
            # A POST from the page carries Origin: nginx forwards Host with its port, so the hub
            # sees its own origin.
            await page.fill("#publish-room", "team:0")
            await page.click("#publish-form button")
            await until(
                lambda: _text_if(page, "#publish-out", "offset 1"), what="publish via nginx"
            )
            for i, c in enumerate(clients):
                if i % 2 == 0:
                    m = await c.next("message")
                    assert m["data"] == {"text": "hello from the admin page"}
            await asyncio.sleep(2)
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "admin-cluster.png"), full_page=True)
            assert not page.errors, page.errors
        finally:
            for c in clients:
                await c.close()


async def test_admin_page_shows_webhook_deliveries(node_factory: Any, page: Any) -> None:
    from hubbub.hub.auth import Identity
    from hubbub.hub.webhooks.dispatch import endpoint_label
    from tests.hub.test_webhooks import fast
    from tests.hub.webhook_receiver import WEBHOOK_SECRET, Receiver

    receiver = await Receiver(answers=[500]).start()
    try:
        node = await node_factory(
            webhook_urls=(receiver.url,), webhook_secret=(WEBHOOK_SECRET,),
            webhook_events=("message.published",),
        )  # fmt: skip
        fast(node.hub)
        await node.hub.publish(Identity("svc", api_key=True), "r", 1)
        await until(lambda: receiver.delivered(), what="a delivery after one failure")
        await page.goto(f"{node.url}/admin#key={API_KEY}")
        await page.wait_for_selector("#webhooks-section:not([hidden])")
        row = await until(lambda: _text_if(page, "#webhooks", "\t"), what="webhook row")
        cells = row.split("\t")
        assert cells[:4] == [endpoint_label(receiver.url), "1", "1", "0"], cells
        assert page.errors == []
    finally:
        await receiver.stop()
