"""Browser fixtures: Debian Chromium driven by Playwright (never ``playwright install``).

``browser`` launches /usr/bin/chromium headless with a fresh profile per test; in CI a missing
chromium fails the test, locally it skips (``need_tool``). ``watch(page, logs)`` collects console
lines and page errors so a failing test can show what the page said. Screenshots go to
``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright

from tests.conftest import CHROMIUM_ARGS, chromium_path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium; every ``new_context()`` is an isolated profile (own storage)."""
    exe = chromium_path()
    async with async_playwright() as pw:
        # Plain launch: Playwright gives the browser a fresh temporary user-data dir and
        # removes it on close.
        b = await pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def watch(page: Any, logs: list[str], name: str = "page") -> Any:
    """Collect ``page``'s console messages and uncaught errors into ``logs``."""
    page.on("console", lambda m: logs.append(f"{name} console.{m.type}: {m.text}"))
    page.on("pageerror", lambda e: logs.append(f"{name} PAGE ERROR: {e}"))
    return page
