"""What every transport does the same way at the edge: credentials, origins, error bodies,
and redaction of secrets in anything that gets logged."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import orjson
from starlette.requests import HTTPConnection
from starlette.responses import Response

from hubbub.hub.errors import HubError, Unauthorized
from hubbub.hub.settings import Settings

TOKEN_COOKIE = "hubbub_token"
_REDACT_RE = re.compile(r"((?:^|[?&])(?:token|access_token|key)=)[^&\s]*", re.IGNORECASE)


def route_path(scope: Any) -> str:
    """The request path below the app's mount point: ``scope["path"]`` without the
    ``root_path`` prefix (ASGI: ``path`` includes ``root_path``; a server's ``--root-path``
    and a Starlette ``Mount`` both set it). Paths outside the prefix are returned whole."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    rest = path[len(root) :]
    return rest if not rest or rest[0] == "/" else path


def redact(text: str) -> str:
    """Replace the values of ``token=``/``access_token=``/``key=`` query parameters."""
    return _REDACT_RE.sub(r"\1[redacted]", text)


def credential(conn: HTTPConnection) -> str | None:
    """The first present of the ``Authorization: Bearer`` header, the ``hubbub_token`` cookie and
    the ``token`` query parameter (PROTOCOL.md §3 "Connecting"). A malformed Authorization
    header raises Unauthorized."""
    header = conn.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized()
        return value.strip()
    cookie = conn.cookies.get(TOKEN_COOKIE)
    if cookie:
        return cookie
    token = conn.query_params.get("token")
    if token:
        return token
    return None


@lru_cache(maxsize=256)
def _origin_pattern(pattern: str) -> re.Pattern[str]:
    # ``*`` stands for host characters only: it never crosses ``/``, ``:``, ``@`` or ``?``, so
    # ``https://*.example.com`` cannot match ``https://evil.com/x.example.com`` or
    # ``https://app.example.com.evil.com``.
    return re.compile(
        "".join("[A-Za-z0-9.-]*" if c == "*" else re.escape(c) for c in pattern.lower())
    )


def own_origin(conn: HTTPConnection) -> str | None:
    host = conn.headers.get("host")
    if not host:
        return None
    scheme = {"ws": "http", "wss": "https"}.get(conn.url.scheme, conn.url.scheme)
    return f"{scheme}://{host}".lower()


def origin_allowed(conn: HTTPConnection, settings: Settings) -> bool:
    """Requests without ``Origin`` (non-browser clients) pass; others must be the hub's own
    origin or match ``HUB_ALLOWED_ORIGINS`` (exact origins or globs)."""
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    if not origin.isascii() or len(origin) > 512:
        return False
    origin = origin.lower().rstrip("/")
    if origin == own_origin(conn):
        return True
    for pattern in settings.allowed_origins:
        if pattern == "*" or _origin_pattern(pattern.rstrip("/")).fullmatch(origin):
            return True
    return False


def error_response(exc: HubError, headers: dict[str, str] | None = None) -> Response:
    """The JSON error body of PROTOCOL.md §5 with the error's status."""
    h = dict(headers or {})
    if exc.retry_after is not None or exc.status in (429, 503):
        h.setdefault("Retry-After", str(max(1, round(exc.retry_after or 1))))
    if exc.status == 401:
        h.setdefault("WWW-Authenticate", 'Bearer error="invalid_token"')
    return Response(orjson.dumps(exc.body()), status_code=exc.status, headers=h,
                    media_type="application/json")  # fmt: skip


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers,
                    media_type="application/json")  # fmt: skip
