"""static/events.html in real Chromium: the browser's own EventSource resumes across a node
restart with Last-Event-ID (PROTOCOL.md §4), with the Redis broker keeping history and offsets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hubbub.hub.auth import Identity
from hubbub.hub.hub import Hub
from tests.browser.conftest import watch
from tests.conftest import RedisProc, free_port, make_settings, start_node, token
from tests.helpers import until

BACKEND = Identity(sub="backend", api_key=True)


async def shown(page: Any, name: str = "message") -> list[dict[str, Any]]:
    raw = await page.eval_on_selector_all(
        f'#events li.ev[data-event="{name}"] .data', "els => els.map(e => e.dataset.raw)"
    )
    return [json.loads(r) for r in raw]


async def state(page: Any) -> str:
    return await page.get_attribute("#state", "data-state")  # type: ignore[no-any-return]


async def test_events_page_resumes_across_node_restart(
    browser: Any, redis_proc: RedisProc, artifacts: Path
) -> None:
    port = free_port()
    settings = make_settings(broker_url=redis_proc.url, sse_retry_ms=300, shutdown_timeout=5)
    logs: list[str] = []
    node = await start_node(settings, port)
    other: Hub | None = None
    try:
        ctx = await browser.new_context(viewport={"width": 1200, "height": 800})
        page = watch(await ctx.new_page(), logs)
        await page.goto(f"{node.url}/events?rooms=news&connect=1#token={token('viewer')}")
        await page.wait_for_selector('#state[data-state="open"]', timeout=10_000)
        assert "token=" not in page.url  # the fragment is wiped from the address bar

        for i in range(1, 11):
            await node.hub.publish(BACKEND, "news", {"n": i})
        await until(lambda: _count(page, 10), what="10 events on the page")

        # Stop the node: the stream ends with a retry hint; EventSource keeps retrying.
        await node.stop()
        await until(lambda: _is(page, "reconnecting"), what="reconnecting state")

        # Published while no node serves HTTP: through another hub on the same Redis.
        other = Hub(settings)
        await other.start()
        for i in range(11, 16):
            await other.publish(BACKEND, "news", {"n": i})
        await other.stop()
        other = None

        node = await start_node(settings, port)  # a new node on the same port
        await until(lambda: _is(page, "open"), what="open again")
        for i in range(16, 21):
            await node.hub.publish(BACKEND, "news", {"n": i})
        await until(lambda: _count(page, 20), what="20 events on the page")

        got = await shown(page)
        assert [m["data"]["n"] for m in got] == list(range(1, 21)), logs
        assert [m["offset"] for m in got] == list(range(1, 21))
        assert not await shown(page, "hub.gap")
        await page.screenshot(path=str(artifacts / "events.png"), full_page=True)
        assert not [line for line in logs if "PAGE ERROR" in line], logs
    finally:
        if other is not None:
            await other.stop()
        await node.stop()


async def test_events_page_shows_refusal_and_expiry(browser: Any, node_factory: Any) -> None:
    node = await node_factory()
    logs: list[str] = []
    ctx = await browser.new_context()
    page = watch(await ctx.new_page(), logs)
    # A bad token: 401 before the stream, EventSource gives up: the page says closed.
    await page.goto(f"{node.url}/events?rooms=a&connect=1#token=bad")
    await until(lambda: _is(page, "closed"), what="closed after 401")
    assert "refused" in (await page.text_content("#state") or "")
    # A short token: hub.expired is shown, the page closes and keeps the last id for resume.
    await page.fill("#token", token("viewer", ttl=2))
    await page.click("#connect")
    await page.wait_for_selector('#state[data-state="open"]', timeout=10_000)
    await node.hub.publish(BACKEND, "a", {"hello": "<b>not html</b>"})
    await until(lambda: _count(page, 1), what="one event")
    assert await page.query_selector("#events li.ev .data b") is None  # text, never markup
    await until(lambda: _has(page, "hub.expired"), within=6, what="hub.expired")
    assert await state(page) == "closed"
    assert await page.input_value("#since") == await page.text_content("#last-id")
    assert not [line for line in logs if "PAGE ERROR" in line], logs


async def _count(page: Any, n: int) -> bool:
    return len(await shown(page)) >= n


async def _is(page: Any, want: str) -> bool:
    return await state(page) == want


async def _has(page: Any, name: str) -> bool:
    return bool(await shown(page, name))
