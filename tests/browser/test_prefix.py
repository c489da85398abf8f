"""Every page works when the app is mounted under a path prefix (``/hub``) and served with the
Content-Security-Policy the app sends itself (no inline script, no framing; hardening case 56):
chat (WebSocket), events (EventSource), admin (HTTP API, GET v1/stats) and call, in Debian's
Chromium. Nothing may be requested outside the prefix, and the browser must report no CSP
violation.

The parent app is a plain Starlette app that mounts ``create_app(settings)`` at ``/hub`` and
runs the inner app's lifespan from its own (mounted apps get no lifespan events).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from hubbub.app import create_app
from hubbub.hub.auth import Identity
from hubbub.hub.hub import Hub
from tests.browser.conftest import watch
from tests.conftest import API_KEY, make_settings, serve, token
from tests.helpers import until as eventually

pytestmark = pytest.mark.timeout(90)

PREFIX = "/hub"
BACKEND = Identity(sub="backend", api_key=True)
# Recorded before any page script runs (init scripts are not subject to the page's CSP).
CSP_WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""


@dataclass
class Mounted:
    hub: Hub
    url: str  # the prefix's URL, with a trailing slash


@pytest.fixture
async def mounted() -> AsyncIterator[Mounted]:
    settings = make_settings()
    inner = create_app(settings, handle_signals=False)
    # Mounted the obvious way, with no lifespan wiring: the hub starts on the first request.
    parent = Starlette(routes=[Mount(PREFIX, app=inner)])
    server, task, port = await serve(parent, settings)
    try:
        yield Mounted(inner.state.hub, f"http://127.0.0.1:{port}{PREFIX}/")
    finally:
        await inner.shutdown()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 15)


async def open_page(browser: Any, url: str, logs: list[str], name: str) -> Any:
    """A page in a fresh context that records CSP violations, page errors and every request
    that leaves the prefix or fails."""
    ctx = await browser.new_context(viewport={"width": 1200, "height": 760})
    await ctx.add_init_script(CSP_WATCH)
    page = watch(await ctx.new_page(), logs, name)

    def on_response(resp: Any) -> None:
        if resp.status >= 400:
            logs.append(f"{name} HTTP {resp.status} {resp.url}")

    def on_request(req: Any) -> None:
        if not req.url.startswith("data:") and f":{_port(url)}{PREFIX}/" not in req.url:
            logs.append(f"{name} OUTSIDE THE PREFIX {req.url}")

    page.on("response", on_response)
    page.on("request", on_request)
    response = await page.goto(url)
    assert response is not None
    headers = response.headers
    csp = headers["content-security-policy"]
    script_src = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
    assert "'unsafe-inline'" not in script_src and "frame-ancestors 'none'" in csp, csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    return page


def _port(url: str) -> str:
    return url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]


async def clean(page: Any, logs: list[str]) -> None:
    """No CSP violation, no page error, nothing outside the prefix, no failed request."""
    violations = await page.evaluate("window.__csp")
    assert violations == [], violations
    bad = [
        line
        for line in logs
        if any(k in line for k in ("PAGE ERROR", "OUTSIDE", "HTTP ", "Content Security"))
    ]
    assert not bad, "\n".join(logs[-40:])


async def test_pages_under_a_prefix_with_a_strict_csp(
    browser: Any, mounted: Mounted, artifacts: Path
) -> None:
    logs: list[str] = []
    base = mounted.url

    # ---- chat: two users over the WebSocket at /hub/v1/ws --------------------------------
    chats = []
    for nick in ("alice", "bob"):
        page = await open_page(browser, f"{base}#token={token(nick)}", logs, nick)
        await page.fill("#nick", nick)
        await page.dispatch_event("#nick", "change")
        await page.wait_for_selector('#state[data-state="connected"]', timeout=10_000)
        chats.append(page)
    alice, bob = chats
    assert (
        await alice.evaluate("window.hubbubChat.client.url.ws")
        == base.replace("http", "ws") + "v1/ws"
    )
    await alice.fill("#text", "hello under a prefix")
    await alice.press("#text", "Enter")

    async def bob_got() -> bool:
        texts = await bob.eval_on_selector_all(
            "#messages li.msg:not(.pending) .text", "els => els.map(e => e.textContent)"
        )
        return "hello under a prefix" in texts

    await eventually(bob_got, what="bob receives alice's message")
    await eventually(
        lambda: bob.eval_on_selector_all("#who li", "els => els.length >= 2"), what="presence"
    )
    await alice.screenshot(path=str(artifacts / "prefix-chat.png"))
    for page in chats:
        await clean(page, logs)

    # ---- events: the browser's EventSource at /hub/v1/events ------------------------------
    events = await open_page(
        browser, f"{base}events?rooms=news&connect=1#token={token('viewer')}", logs, "events"
    )
    await events.wait_for_selector('#state[data-state="open"]', timeout=10_000)
    await mounted.hub.publish(BACKEND, "news", {"headline": "mounted"})
    await events.wait_for_selector('#events li.ev[data-event="message"]', timeout=10_000)
    raw = await events.get_attribute('#events li.ev[data-event="message"] .data', "data-raw")
    assert raw is not None and '"headline":"mounted"' in raw.replace(" ", "")
    await events.screenshot(path=str(artifacts / "prefix-events.png"))
    await clean(events, logs)

    # ---- admin: GET /hub/v1/stats and /hub/v1/rooms with the API key ---------------------
    admin = await open_page(browser, f"{base}admin#key={API_KEY}", logs, "admin")
    await admin.wait_for_selector("#app:not([hidden])", timeout=10_000)
    await eventually(
        lambda: admin.evaluate("document.getElementById('s-ws').textContent === '2'"),
        what="two chat sessions in the admin page",
    )
    assert await admin.inner_text("#s-nodes") == "1"
    assert mounted.hub.node_id in await admin.inner_text("#nodes")
    await eventually(
        lambda: admin.evaluate("document.getElementById('rooms').textContent.includes('lobby')"),
        what="rooms listing",
    )
    await asyncio.sleep(1.5)  # a few chart samples
    await admin.screenshot(path=str(artifacts / "prefix-admin.png"), full_page=True)
    await clean(admin, logs)

    # ---- call: joins its room over /hub/v1/ws (no camera: media=none) --------------------
    call = await open_page(
        browser,
        f"{base}call?room=call:prefix&autojoin=1&media=none#token={token('carol')}",
        logs,
        "call",
    )
    await eventually(
        lambda: call.evaluate(
            "Boolean(window.hubbubCall && window.hubbubCall.sub && window.hubbubCall.sub.active)"
        ),
        what="the call page joined its room",
    )
    assert (await call.evaluate("window.hubbubCall.client.url.ws")).endswith("/hub/v1/ws")
    await call.screenshot(path=str(artifacts / "prefix-call.png"))
    await clean(call, logs)


async def test_inline_script_would_be_blocked(browser: Any, mounted: Mounted) -> None:
    """The policy is really in force: a script element with inline code does not run."""
    logs: list[str] = []
    page = await open_page(browser, f"{mounted.url}events", logs, "probe")
    await page.evaluate(
        """() => { const s = document.createElement("script");
                   s.textContent = "window.__inlineRan = true;";
                   document.body.append(s); }"""
    )
    await eventually(lambda: page.evaluate("window.__csp.length > 0"), what="a CSP violation")
    assert await page.evaluate("window.__inlineRan === undefined")


async def test_pages_cannot_be_framed(browser: Any, mounted: Mounted) -> None:
    """``frame-ancestors 'none'``: another origin's page (``localhost`` instead of
    ``127.0.0.1``) that frames the chat page gets an empty frame."""
    ctx = await browser.new_context()
    page = await ctx.new_page()
    other = mounted.url.replace("127.0.0.1", "localhost")
    # A page of the other origin: the hub's 404 JSON, replaced by a document with an iframe.
    await page.goto(other + "static/style.css")
    await page.set_content(f'<iframe id="f" src="{mounted.url}"></iframe>')
    await asyncio.sleep(1.0)
    frame = page.frame_locator("#f")
    assert await frame.locator("#nick").count() == 0
    await ctx.close()
