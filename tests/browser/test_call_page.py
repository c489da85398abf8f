"""What the call page (/call) tells people: before joining, a hint in the empty video area
(what the page does, which room, the Join button); during a call, a log that names peers by
their public name or user id, never by session id (those stay in the lines' tooltips).

Two pages with a fake microphone (``media=audio``: no video to encode on a small machine) call
each other over loopback ICE; one of them sends a message, loses its hub connection (new
session id) and hangs up, so the other page's log has a line for each of those."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright

from tests.browser.conftest import watch
from tests.conftest import CHROMIUM_ARGS, chromium_path, token
from tests.helpers import until

pytestmark = pytest.mark.timeout(90)

# Chromium offers its local addresses (here: loopback) to WebRTC only once the page may use
# a camera or microphone: hence the fake devices, always granted.
MEDIA_ARGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


@pytest.fixture
async def media_browser() -> AsyncIterator[Any]:
    """Chromium with a fake microphone whose WebRTC may use 127.0.0.1."""
    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS + MEDIA_ARGS
        )
        try:
            yield b
        finally:
            await b.close()


async def log_lines(page: Any) -> list[dict[str, str]]:
    """The call log: each line's text and tooltip."""
    return await page.eval_on_selector_all(  # type: ignore[no-any-return]
        "#log li", "els => els.map(e => ({text: e.textContent, title: e.title}))"
    )


async def logged(page: Any, needle: str) -> bool:
    return any(needle in line["text"] for line in await log_lines(page))


async def session(page: Any) -> str | None:
    return await page.evaluate(  # type: ignore[no-any-return]
        "() => { const c = window.hubbubCall;"
        " return c && c.client && c.client.state === 'connected' ? c.session : null; }"
    )


async def channel_open(page: Any) -> bool:
    return await page.evaluate(  # type: ignore[no-any-return]
        "() => Boolean(window.hubbubCall) && window.hubbubCall.stats().peers"
        ".some(p => p.channel === 'open' && !p.left)"
    )


async def test_call_page_hint_and_names_in_the_log(
    node: Any, media_browser: Any, artifacts: Path
) -> None:
    room = "call:names"
    url = f"{node.url}/call?room={room}&ice=loopback&media=audio"
    logs: list[str] = []
    ctx_a = await media_browser.new_context(viewport={"width": 1000, "height": 700})
    ctx_b = await media_browser.new_context(viewport={"width": 1000, "height": 700})
    a = watch(await ctx_a.new_page(), logs, "A")
    b = watch(await ctx_b.new_page(), logs, "B")
    try:
        # Before joining: the video area explains the page, names the room and the button.
        await a.goto(f"{url}#token={token('alice', name='Alice')}")
        assert await a.is_visible("#hint")
        hint = await a.inner_text("#hint")
        assert room in hint and "Join call" in hint, hint
        assert f"?room={room}" in hint  # the address to invite others with
        await a.screenshot(path=str(artifacts / "call-hint.png"))

        await a.click("#join")
        sa = await until(lambda: session(a), what="A joined")
        assert await a.is_hidden("#hint")
        await b.goto(f"{url}&autojoin=1#token={token('bob', name='Bob')}")
        sb = await until(lambda: session(b), what="B joined")
        await until(lambda: channel_open(a), 20, "data channel A-B")
        await until(lambda: channel_open(b), 20, "data channel B-A")

        await b.fill("#say", "hello alice")
        await b.press("#say", "Enter")
        await until(lambda: logged(a, "Bob: hello alice"), what="B's message in A's log")

        # B loses its hub connection: a new session id, which A's log must not show either.
        await b.evaluate("() => window.hubbubCall.client.reconnect()")
        sb2 = await until(
            lambda: b.evaluate(
                f"() => {{ const c = window.hubbubCall; return c.client.state === 'connected'"
                f" && c.session !== '{sb}' && c.session; }}"
            ),
            15, "B reconnected",
        )  # fmt: skip
        await until(lambda: logged(a, "Bob reconnected"), 15, "A rebound B's new session")
        await b.click("#hangup")
        await until(lambda: logged(a, "Bob left the call"), 15, "B left")
        await until(lambda: b.is_visible("#hint"), what="B's empty stage shows the hint again")

        lines = await log_lines(a)
        texts = [line["text"] for line in lines]
        assert any(re.search(rf"joined {room} as Alice$", t) for t in texts), texts
        assert any(t.endswith("Bob joined") for t in texts), texts
        for sid in (sa, sb, sb2):
            assert not [t for t in texts if sid in t], (sid, texts)
        # The ids stay available, as tooltips.
        titles = " ".join(line["title"] for line in lines)
        assert sa in titles and sb in titles and sb2 in titles, lines
        b_texts = [line["text"] for line in await log_lines(b)]
        assert any(t.endswith(f"joined {room} as Bob") for t in b_texts), b_texts
        await a.screenshot(path=str(artifacts / "call-log.png"))
        assert not [line for line in logs if "PAGE ERROR" in line], logs
    except BaseException:
        print("\n".join(logs[-60:]))
        raise
