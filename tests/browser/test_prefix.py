"""Every page works when the app is mounted under a path prefix (``/hub``) and served with a
Content-Security-Policy that allows no inline script: chat (WebSocket), events (EventSource),
admin (HTTP API, GET v1/stats) and call, in Debian's Chromium. Nothing may be requested outside
the prefix, and the browser must report no CSP violation.

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
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hubbub.app import create_app
from hubbub.hub.auth import Identity
from hubbub.hub.hub import Hub
from hubbub.transports.server import server_options
from tests.browser.conftest import watch
from tests.conftest import API_KEY, make_settings, token
from tests.helpers import until as eventually

pytestmark = pytest.mark.timeout(90)

PREFIX = "/hub"
CSP = (
    "default-src 'self'; script-src 'self'; connect-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; base-uri 'self'"
)
BACKEND = Identity(sub="backend", api_key=True)
# Recorded before any page script runs (init scripts are not subject to the page's CSP).
CSP_WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""


class ContentSecurityPolicy:
    """ASGI middleware: ``Content-Security-Policy`` on every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_csp(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"content-security-policy", CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_csp)


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
    app = ContentSecurityPolicy(parent)
    config = uvicorn.Config(app, **{**server_options(settings), "port": 0, "log_level": "warning"})
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server stopped during start-up")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
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
    await page.goto(url)
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
