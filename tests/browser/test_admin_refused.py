"""The admin page when the hub refuses its stats request: instead of "connecting…" forever it
says that an API key is needed, shows the refusal and the field to enter a key.

A dev-mode hub (no secret, no API key: what ``make run`` serves) answers 403; a hub with API
keys answers 401 without a key and for a wrong one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.browser.conftest import watch
from tests.conftest import API_KEY, make_settings, start_node
from tests.helpers import until


async def status(page: Any) -> str:
    return await page.inner_text("#conn-text")  # type: ignore[no-any-return]


async def test_dev_mode_admin_page_says_a_key_is_needed(browser: Any, artifacts: Path) -> None:
    node = await start_node(make_settings(jwt_secret=None, api_keys=()))
    logs: list[str] = []
    try:
        page = watch(await (await browser.new_context()).new_page(), logs)
        await page.goto(node.url + "/admin")
        await until(lambda: page.is_visible("#login"), what="the API key form")
        assert await status(page) == "API key needed"
        out = await page.inner_text("#login-out")
        assert "403" in out and "needs an API key" in out and "HUB_API_KEYS" in out, out
        assert await page.is_visible("#login-key") and await page.is_hidden("#app")
        await page.screenshot(path=str(artifacts / "admin-dev-mode.png"))
        # It stays that way: no polling behind the form, no "connecting…" coming back.
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        await page.wait_for_timeout(1500)
        assert requests == [] and await status(page) == "API key needed"
        assert not [line for line in logs if "PAGE ERROR" in line], logs
    finally:
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
        assert not [line for line in logs if "PAGE ERROR" in line], logs
    finally:
        await node.stop()


async def _has(page: Any, selector: str, needle: str) -> bool:
    return needle in await page.inner_text(selector)
