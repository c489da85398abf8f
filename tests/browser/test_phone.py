"""Every demo page at phone width (390 x 844) and at desktop width (1280 x 800): the page body
never scrolls sideways, and the page's main controls are visible, inside the screen and clear
of each other (their boxes do not overlap, and nothing else covers them). Screenshots of each
page at both widths go to test-artifacts/phone-*.png and desktop-*.png.

Chat, events and call run against a node in dev mode (no secret, guests), as ``make run``
serves them; the admin page against a node with an API key (a dev-mode hub refuses its
requests: see test_admin_refused.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hubbub.hub.auth import Identity
from tests.browser.conftest import watch
from tests.conftest import API_KEY, Node, make_settings, start_node
from tests.helpers import until

pytestmark = pytest.mark.timeout(60)

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
SIZES = {"phone": PHONE, "desktop": DESKTOP}
BACKEND = Identity(sub="backend", api_key=True)

# Where each control's box is and whether it is the topmost element at its own centre.
BOXES = """(selectors) => selectors.map((sel) => {
  const el = document.querySelector(sel);
  if (!el) return { sel, missing: true };
  const r = el.getBoundingClientRect();
  const hit = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
  return { sel, x: r.x, y: r.y, w: r.width, h: r.height,
           covered: !(hit && (hit === el || el.contains(hit) || hit.contains(el))) };
})"""


def overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True when the two boxes share more than a hairline (1 px: borders may touch)."""
    dx = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
    dy = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
    return dx > 1 and dy > 1


async def layout_problems(page: Any, controls: list[str], *, scroll: bool = False) -> list[str]:
    """What is wrong with the page's layout, in words (empty: nothing). ``scroll``: the page
    may scroll vertically (admin): each control is brought into view before it is checked;
    otherwise every control must be on the first screen."""
    problems: list[str] = []
    width, inner = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    if width > inner:
        problems.append(f"the page scrolls sideways: scrollWidth {width} > innerWidth {inner}")
    height = await page.evaluate("window.innerHeight")
    boxes = []
    for sel in controls:
        if not await page.is_visible(sel):
            problems.append(f"{sel} is not visible")
            continue
        if scroll:
            await page.locator(sel).scroll_into_view_if_needed()
        (box,) = await page.evaluate(BOXES, [sel])
        if box.get("missing"):
            problems.append(f"{sel} is missing")
            continue
        if box["x"] < 0 or box["x"] + box["w"] > inner + 0.5:
            problems.append(
                f"{sel} sticks out sideways: x {box['x']:.0f}..{box['x'] + box['w']:.0f}"
            )
        if box["y"] < 0 or box["y"] + box["h"] > height + 0.5:
            problems.append(
                f"{sel} is outside the screen: y {box['y']:.0f}..{box['y'] + box['h']:.0f}"
            )
        elif box["covered"]:
            problems.append(f"{sel} is covered by another element")
        if scroll:  # compare boxes in page coordinates
            box["y"] += await page.evaluate("window.scrollY")
        boxes.append(box)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            if overlap(a, b):
                problems.append(f"{a['sel']} and {b['sel']} overlap")
    return problems


@pytest.fixture
async def dev_node() -> AsyncIterator[Node]:
    node = await start_node(make_settings(jwt_secret=None, api_keys=()))
    try:
        yield node
    finally:
        await node.stop()


async def open_at(browser: Any, size: str, url: str, logs: list[str]) -> Any:
    ctx = await browser.new_context(viewport=SIZES[size])
    page = watch(await ctx.new_page(), logs, size)
    await page.goto(url)
    return page


def page_errors(logs: list[str]) -> list[str]:
    return [line for line in logs if "PAGE ERROR" in line]


@pytest.mark.parametrize("size", ["phone", "desktop"])
async def test_chat_page_fits(browser: Any, dev_node: Node, artifacts: Path, size: str) -> None:
    logs: list[str] = []
    page = await open_at(browser, size, dev_node.url + "/", logs)
    await page.wait_for_selector('#state[data-state="connected"]', timeout=10_000)
    await page.fill("#text", "hello from a small screen, with a rather long line of text in it")
    await page.press("#text", "Enter")
    await page.wait_for_selector("#messages li.msg:not(.pending)")
    await until(lambda: page.locator("#who li").count(), what="the online list")
    controls = ["#nick", "#state", "#rooms", "#who", "#messages", "#text", "#send"]
    assert await layout_problems(page, controls) == []
    await page.screenshot(path=str(artifacts / f"{size}-chat.png"))
    assert not page_errors(logs), logs


@pytest.mark.parametrize("size", ["phone", "desktop"])
async def test_events_page_fits(browser: Any, dev_node: Node, artifacts: Path, size: str) -> None:
    logs: list[str] = []
    page = await open_at(browser, size, dev_node.url + "/events?rooms=news", logs)
    await page.click("#connect")
    await page.wait_for_selector('#state[data-state="open"]', timeout=10_000)
    for i in range(3):
        await dev_node.hub.publish(BACKEND, "news", {"headline": f"item {i}", "body": "x " * 40})
    await until(lambda: page.locator("#events li.ev").count(), what="events on the page")
    controls = ["#rooms", "#token", "#presence", "#connect", "#disconnect", "#clear", "#events"]
    assert await layout_problems(page, controls) == []
    await page.screenshot(path=str(artifacts / f"{size}-events.png"))
    assert not page_errors(logs), logs


@pytest.mark.parametrize("size", ["phone", "desktop"])
async def test_call_page_fits(browser: Any, dev_node: Node, artifacts: Path, size: str) -> None:
    """Before joining (the hint fills the stage) and after (no camera: media=none)."""
    logs: list[str] = []
    page = await open_at(browser, size, dev_node.url + "/call?media=none", logs)
    controls = ["#hint", "#join", "#mic", "#cam", "#hangup", "#say"]
    assert await layout_problems(page, controls) == []
    await page.screenshot(path=str(artifacts / f"{size}-call.png"))
    await page.click("#join")
    await until(
        lambda: page.evaluate("Boolean(window.hubbubCall && window.hubbubCall.sub?.active)"),
        what="joined",
    )
    await page.wait_for_selector(".tile.me")
    controls = [".tile.me", "#join", "#hangup", "#say", "#log"]
    assert await layout_problems(page, controls) == []
    await page.screenshot(path=str(artifacts / f"{size}-call-joined.png"))
    assert not page_errors(logs), logs


@pytest.mark.parametrize("size", ["phone", "desktop"])
async def test_admin_page_fits(browser: Any, artifacts: Path, size: str) -> None:
    node = await start_node(make_settings())
    try:
        await node.hub.publish(BACKEND, "news", {"n": 1})
        logs: list[str] = []
        page = await open_at(browser, size, f"{node.url}/admin#key={API_KEY}", logs)
        await page.wait_for_selector("#app:not([hidden])")
        await until(lambda: page.locator("#nodes tr td").count(), what="the nodes table")
        # The first screen shows the cluster numbers; the rest is below, one scroll away.
        assert await layout_problems(page, ["#conn-text", "#s-nodes", "#s-ws"]) == []
        controls = [
            "#chart", "#nodes", "#rooms-prefix", "#rooms-form button", "#presence-room",
            "#presence-form button", "#publish-room", "#publish-data", "#publish-form button",
            "#kick-user", "#kick-form button",
        ]  # fmt: skip
        assert await layout_problems(page, controls, scroll=True) == []
        await page.evaluate("window.scrollTo(0, 0)")
        await page.screenshot(path=str(artifacts / f"{size}-admin.png"), full_page=True)
        assert not page_errors(logs), logs
    finally:
        await node.stop()
