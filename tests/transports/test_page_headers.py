"""The pages' security headers (hardening case 56): ``/``, ``/events``, ``/call`` and ``/admin``
send a Content-Security-Policy with no inline script and no framing, ``X-Content-Type-Options:
nosniff`` and ``Referrer-Policy: no-referrer``, on GET and HEAD; and the pages really carry no
inline script or event handler attribute the policy would block (tests/browser/test_prefix.py
runs them under it in Chromium)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from hubbub.app import PAGES, STATIC

PATHS = ["/", "/events", "/call", "/admin"]


def directives(csp: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in csp.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_pages_send_security_headers(node: Any, method: str) -> None:
    assert sorted(PAGES) == sorted(PATHS)
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        for path in PATHS:
            r = await http.request(method, path)
            assert r.status_code == 200, path
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
            csp = directives(r.headers["content-security-policy"])
            assert csp["script-src"] == ["'self'"], csp
            assert csp["frame-ancestors"] == ["'none'"]
            assert csp["default-src"] == ["'none'"]
            assert csp["object-src"] == ["'none'"] and csp["base-uri"] == ["'none'"]
            assert "'self'" in csp["connect-src"]  # fetch, EventSource, same-origin ws/wss


def test_pages_have_no_inline_script() -> None:
    for name in PAGES.values():
        html = (STATIC / name).read_text()
        for tag in re.findall(r"<script\b[^>]*>", html, re.IGNORECASE):
            assert "src=" in tag, (name, tag)
        assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html, re.IGNORECASE), name
        assert not re.search(r"\son[a-z]+\s*=", html, re.IGNORECASE), name
        assert "javascript:" not in html.lower(), name
