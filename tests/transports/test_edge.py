"""Origin checks and redaction at the edge (hardening cases 13-15, 43)."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from hubbub.logs import scrub
from hubbub.transports.edge import origin_allowed, redact
from tests.conftest import make_settings


def _req(origin: str | None, host: str = "hub.example.com") -> Request:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode("utf-8")))
    return Request({"type": "http", "scheme": "https", "headers": headers, "path": "/",
                    "query_string": b"", "method": "GET"})  # fmt: skip


@pytest.mark.parametrize(
    ("origin", "ok"),
    [
        (None, True),
        ("https://hub.example.com", True),
        ("https://app.example.com", True),
        ("https://app.example.com.evil.com", False),
        ("https://evil.com/app.example.com", False),
        ("https://\u0430pp.example.com", False),  # Cyrillic а
        ("null", False),
        ("file://", False),
        ("http://app.example.com", False),
        ("https://app.example.com:444", False),
    ],
)
def test_origin_allowed(origin: str | None, ok: bool) -> None:
    settings = make_settings(allowed_origins=("https://app.example.com",))
    assert origin_allowed(_req(origin), settings) is ok


def test_redaction() -> None:
    assert redact("GET /v1/ws?token=abc.def&x=1") == "GET /v1/ws?token=[redacted]&x=1"
    assert "sekrit" not in scrub("Authorization: Bearer sekrit")
    assert "sekrit" not in scrub("/v1/events?room=a&token=sekrit")
