"""What every transport does the same way at the edge: the admission of a client (origin,
credential, rate, authentication: :func:`admit`), error bodies, and redaction of secrets in
anything that gets logged."""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any

import orjson
from starlette.requests import HTTPConnection
from starlette.responses import Response

from hubbub.hub.auth import Identity
from hubbub.hub.errors import (
    BrokerError,
    Forbidden,
    HubError,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from hubbub.hub.hub import Hub
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


# ---- admission ----------------------------------------------------------------------------------
async def admit(
    hub: Hub,
    conn: HTTPConnection,
    *,
    rate: dict[str, str] | None = None,
    accepted: Callable[[], Awaitable[None]] | None = None,
    late: Callable[[], Awaitable[str | None]] | None = None,
) -> Identity:
    """Who the client of ``conn`` is, after the checks every transport runs before serving it,
    the cheapest refusal first:

    1. Origin (:func:`origin_allowed`): refused with Forbidden ``origin not allowed``, the
       only Forbidden raised here, always before ``accepted`` is awaited. Credentials may ride
       on a cookie, so a cross-site page must not get a session or an answer at all.
    2. ``accepted()``, when given (the WebSocket completes its upgrade here, so that later
       refusals are close codes a browser can see).
    3. The credential (:func:`credential`); a malformed ``Authorization`` raises Unauthorized,
       after the rate check when there is one.
    4. With ``rate`` (the HTTP API): ``HUB_API_RATE`` per API key, else per client IP, through
       ``hub.state`` (the bucket is cluster-wide on Redis); the ``RateLimit-*`` headers are
       added to ``rate``. Raises RateLimited (with ``Retry-After``) or Unavailable.
    5. No credential, no anonymous access and ``late`` given: ``await late()`` for one (the
       WebSocket's first ``auth`` frame; it raises Unauthorized for anything else).
    6. Authentication (``hub.auth``): Unauthorized.

    Every Unauthorized counts in ``hubbub_auth_failures_total``."""
    if not origin_allowed(conn, hub.settings):
        raise Forbidden("origin not allowed")
    if accepted is not None:
        await accepted()
    bad: Unauthorized | None = None
    try:
        bearer = credential(conn)
    except Unauthorized as exc:
        bearer, bad = None, exc
    if rate is not None:
        await _take_rate(hub, conn, bearer, rate)
    try:
        if bad is not None:
            raise bad
        if bearer is None and late is not None and not hub.settings.anonymous:
            bearer = await late()
        return hub.auth.authenticate(bearer)
    except Unauthorized:
        hub.metrics.auth_failures += 1
        raise


async def _take_rate(
    hub: Hub, conn: HTTPConnection, bearer: str | None, headers: dict[str, str]
) -> None:
    """One request against ``HUB_API_RATE`` (per API key, else per client IP)."""
    rate = hub.settings.api_rate
    if not rate.enabled:
        return
    key_ident = hub.auth.api_key_identity(bearer) if bearer else None
    if key_ident is not None:
        bucket = "http:" + key_ident.scope
    else:
        bucket = "http:ip:" + (conn.client.host if conn.client else "unknown")
    try:
        allowed, remaining, reset = await hub.state.take(bucket, rate.rate, rate.burst)
    except BrokerError:
        raise Unavailable("broker unavailable", retry_after=1.0) from None
    headers["RateLimit-Limit"] = str(int(rate.burst))
    headers["RateLimit-Remaining"] = str(max(0, math.floor(remaining)))
    headers["RateLimit-Reset"] = str(max(0, math.ceil(reset)))
    if not allowed:
        hub.metrics.rate_limited += 1
        wait = max(1, math.ceil((1.0 - remaining) / rate.rate))
        raise RateLimited(
            f"over the API rate limit of {rate.rate:g}/s (burst {rate.burst:g})",
            retry_after=float(wait),
            details={"retry_after": wait},
        )


# ---- answers -------------------------------------------------------------------------------------
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
