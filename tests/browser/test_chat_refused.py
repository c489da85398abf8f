"""The chat page on a hub that needs a token, when the connection is refused with 4501 right
after the upgrade (no token at all, an empty ``hubbub_token`` cookie, an expired token): the
token box shows at once, without waiting for the hub's 10 s ``auth`` deadline, and a pasted
token connects."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.browser.conftest import watch
from tests.conftest import make_settings, start_node, token


@pytest.mark.parametrize("how", ["no-token", "empty-cookie", "expired-token"])
async def test_chat_asks_for_a_token_on_4501(browser: Any, how: str) -> None:
    node = await start_node(make_settings())
    logs: list[str] = []
    try:
        ctx = await browser.new_context()
        url = node.url + "/"
        if how == "empty-cookie":
            await ctx.add_cookies([{"name": "hubbub_token", "value": "", "url": node.url}])
        elif how == "expired-token":
            url += "#token=" + token("dora", ttl=-60)
        page = watch(await ctx.new_page(), logs)
        t0 = time.monotonic()
        await page.goto(url)
        await page.wait_for_selector("#token-box:not([hidden])", timeout=5000)
        assert time.monotonic() - t0 < 5
        assert "unauthorized" in await page.inner_text("#state")
        assert "4501" in await page.inner_text("#messages")
        await page.fill("#token", token("dora"))
        await page.click("#token-box button")
        await page.wait_for_selector('#state[data-state="connected"]', timeout=10000)
    finally:
        await node.stop()
