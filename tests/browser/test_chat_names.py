"""The chat page names its user once: the header ("you are …"), the nickname box and the
online list show the same name, the one the hub knows for the session (``welcome.user``, or
the token's public ``name``) until the user picks a nickname, and that nickname afterwards.
Dev mode (no secret, anonymous guests), as ``make run`` serves it."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import watch
from tests.conftest import make_settings, start_node, token
from tests.helpers import until


async def names(page: Any) -> dict[str, Any]:
    """Every place the page shows its own user's name, and the hub's name for the session."""
    return await page.evaluate(  # type: ignore[no-any-return]
        """() => {
          const mine = [...document.querySelectorAll('#who li')]
            .find(li => li.querySelector('.me'));
          return {
            user: window.hubbubChat.client.user,
            header: document.getElementById('room-meta').textContent.replace(/^you are /, ''),
            headerShown: !document.getElementById('room-meta').hidden,
            box: document.getElementById('nick').value,
            list: mine ? mine.firstChild.textContent : null,
          };
        }"""
    )


async def settled(page: Any, want: str) -> dict[str, Any] | None:
    got = await names(page)
    ok = got["headerShown"] and got["header"] == got["box"] == got["list"] == want
    return got if ok else None


async def others(page: Any) -> list[str]:
    """The online list's names other than the page's own."""
    return await page.eval_on_selector_all(  # type: ignore[no-any-return]
        "#who li:not(:has(.me))", "els => els.map(e => e.firstChild.textContent)"
    )


async def open_page(browser: Any, url: str, logs: list[str], name: str) -> Any:
    ctx = await browser.new_context(viewport={"width": 1100, "height": 720})
    page = watch(await ctx.new_page(), logs, name)
    await page.goto(url)
    await page.wait_for_selector('#state[data-state="connected"]', timeout=10_000)
    return page


async def test_guest_sees_one_name_everywhere(browser: Any) -> None:
    node = await start_node(make_settings(jwt_secret=None, api_keys=()))
    logs: list[str] = []
    try:
        a = await open_page(browser, node.url + "/", logs, "a")
        user = await a.evaluate("window.hubbubChat.client.user")
        assert user.startswith("guest-"), user
        await until(lambda: settled(a, user), what=f"header, box and list all say {user}")

        b = await open_page(browser, node.url + "/", logs, "b")
        b_user = await b.evaluate("window.hubbubChat.client.user")
        await until(lambda: settled(b, b_user), what="b's own name")
        await until(lambda: _equals(others(a), [b_user]), what="a sees b by b's hub name")

        # A nickname replaces the name everywhere, here and for the others.
        await a.fill("#nick", "zed")
        await a.dispatch_event("#nick", "change")
        await until(lambda: settled(a, "zed"), what="the nickname everywhere")
        await until(lambda: _equals(others(b), ["zed"]), what="b sees the nickname")
        await a.fill("#text", "hello")
        await a.press("#text", "Enter")
        await until(
            lambda: _equals(b.eval_on_selector_all(
                "#messages li.msg:not(.pending) .nick", "els => els.map(e => e.textContent)"
            ), ["zed"]),
            what="the message carries the nickname",
        )  # fmt: skip

        # An emptied nickname goes back to the hub's name, for everyone.
        await a.fill("#nick", "")
        await a.dispatch_event("#nick", "change")
        await until(lambda: settled(a, user), what="back to the hub's name")
        await until(lambda: _equals(others(b), [user]), what="b sees the hub's name again")
        assert await a.evaluate("localStorage.getItem('hubbub.nick')") is None

        # A made-up name an earlier version kept in localStorage is not a nickname.
        await b.evaluate("localStorage.setItem('hubbub.nick', 'guest-ab12')")
        await b.reload()
        await b.wait_for_selector('#state[data-state="connected"]')
        b_user = await b.evaluate("window.hubbubChat.client.user")
        await until(lambda: settled(b, b_user), what="b's hub name after the reload")
        assert not [line for line in logs if "PAGE ERROR" in line], logs
    finally:
        await node.stop()


async def test_token_name_is_the_default(browser: Any) -> None:
    """With a token, the public name from the token (presence ``name``) is the default."""
    node = await start_node(make_settings())
    logs: list[str] = []
    try:
        page = await open_page(
            browser, f"{node.url}/#token={token('dora', name='Dora')}", logs, "d"
        )
        await until(lambda: settled(page, "Dora"), what="the token's name everywhere")
        assert await page.evaluate("window.hubbubChat.client.user") == "dora"
        assert await page.get_attribute("#room-meta strong", "title") == "user dora"
    finally:
        await node.stop()


async def _equals(got: Any, want: Any) -> bool:
    return bool(await got == want)
