"""The admin page when the hub refuses its stats request: instead of "connecting…" forever it
says that an API key is needed, shows the refusal and the field to enter a key.

A hub with API keys answers 401 without a key and for a wrong one. A dev-mode hub (no secret,
no API key: what ``make run`` serves) answers a loopback page without a key, and the page says
it is in dev mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.browser.conftest import watch
from tests.conftest import API_KEY, make_settings, start_node
from tests.helpers import until
from tests.wsclient import WS


async def status(page: Any) -> str:
    return await page.inner_text("#conn-text")  # type: ignore[no-any-return]


async def test_dev_mode_admin_page_works_on_loopback(browser: Any, artifacts: Path) -> None:
    """What ``make run`` serves: the page opens without a key, shows its figures and says it
    is dev mode."""
    node = await start_node(make_settings(jwt_secret=None, api_keys=()))
    logs: list[str] = []
    guest = await WS.connect(node.ws_url, None)
    try:
        await guest.result({"type": "subscribe", "room": "chat:lobby", "presence": True})
        page = watch(await (await browser.new_context()).new_page(), logs)
        await page.goto(node.url + "/admin")
        await page.wait_for_selector("#app:not([hidden])")
        assert await page.is_hidden("#login")
        note = page.locator("#dev-note")
        assert await note.is_visible()
        assert await note.inner_text() == "dev mode: no API key needed on loopback"
        await until(lambda: _has(page, "#conn-text", "live"), what="live stats")
        await until(lambda: _has(page, "#s-nodes", "1"), what="nodes stat")
        assert await page.inner_text("#s-ws") == "1"
        await until(lambda: _has(page, "#rooms", "chat:lobby"), what="rooms listing")
        await page.locator("#rooms tr", has_text="chat:lobby").click()
        await until(lambda: _has(page, "#presence", "guest-"), what="presence")
        await page.screenshot(path=str(artifacts / "admin-dev-mode.png"))
        assert not [line for line in logs if "PAGE ERROR" in line], logs
    finally:
        await guest.close()
        await node.stop()


async def test_keyed_hub_refusals(browser: Any) -> None:
    node = await start_node(make_settings())
    logs: list[str] = []
    try:
        page = watch(await (await browser.new_context()).new_page(), logs)
        await page.goto(node.url + "/admin")
        await until(lambda: page.is_visible("#login"), what="the API key form")
        assert await status(page) == "API key needed"
        assert "401" in await page.inner_text("#login-out")

        await page.fill("#login-key", "wrong-key")
        await page.click("#login-form button")
        await until(lambda: _has(page, "#login-out", "That API key was refused"), what="refusal")
        assert await status(page) == "API key refused"

        await page.fill("#login-key", API_KEY)
        await page.click("#login-form button")
        await page.wait_for_selector("#app:not([hidden])")
        await until(lambda: _has(page, "#conn-text", "live"), what="live stats")
        assert await page.is_hidden("#dev-note")
        assert not [line for line in logs if "PAGE ERROR" in line], logs
    finally:
        await node.stop()


async def _has(page: Any, selector: str, needle: str) -> bool:
    return needle in await page.inner_text(selector)
