"""What every transport does the same way at the edge: the admission of a client (origin,
credential, rate, authentication: :func:`admit`), the dev-mode ``Host`` guard
(:func:`refuse_foreign_host`), error bodies, and redaction of secrets in anything that gets
logged."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus

import orjson
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

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
from hubbub.hub.values import host_header_is_loopback, is_loopback_host

log = logging.getLogger("hubbub.edge")

TOKEN_COOKIE = "hubbub_token"
REDACTED_PARAMS = frozenset({"token", "access_token", "key"})
# A query parameter: its name (maybe percent-encoded) and its value, up to ``&``, a blank or a
# double quote (the access log quotes the request target, ``"WebSocket /v1/ws?token=…"``; a
# token or key in a URL never holds a raw ").
_PARAM_RE = re.compile(r'(^|[?&])([^=&?\s]+)=([^&\s"]*)')


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
    """Replace the values of ``token=``/``access_token=``/``key=`` query parameters, however
    their names are spelled: any case, percent-encoded (``%74oken=``) or with ``+``."""
    if "=" not in text:
        return text
    return _PARAM_RE.sub(_redact_param, text)


def _redact_param(m: re.Match[str]) -> str:
    name = unquote_plus(m.group(2)).strip().lower()
    if name in REDACTED_PARAMS:
        return f"{m.group(1)}{m.group(2)}=[redacted]"
    return m.group(0)


def credential(conn: HTTPConnection, anonymous: bool = False) -> str | None:
    """The first non-empty of the ``Authorization: Bearer`` header, the ``hubbub_token`` cookie
    and the ``token`` query parameter (PROTOCOL.md §3 "Connecting"). An Authorization header
    of another scheme raises Unauthorized (reason ``malformed``).

    When one was given but all given are empty (``Bearer`` with nothing, ``hubbub_token=``,
    ``?token=``), that is a mistake, not a missing credential: Unauthorized (reason ``empty``)
    at once, so a WebSocket is not left waiting for an ``auth`` frame. With ``anonymous``
    (guests allowed) an empty one counts as none."""
    empty = False
    header = conn.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthorized(reason="malformed")
        if value.strip():
            return value.strip()
        empty = True
    for given in (conn.cookies.get(TOKEN_COOKIE), conn.query_params.get("token")):
        if given:
            return given
        empty = empty or given is not None
    if empty and not anonymous:
        raise Unauthorized(reason="empty")
    return None


def is_loopback(conn: HTTPConnection) -> bool:
    """Whether the client's address (the TCP peer) is a loopback address (127.0.0.0/8, ::1)."""
    return is_loopback_host(conn.client.host) if conn.client else False


def _shown(text: str) -> str:
    """``text`` safe for one log line: escaped (no control characters), at most 200 characters."""
    return ascii(text[:200])


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


def _hosts(scope: Scope) -> list[str]:
    return [bytes(v).decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == b"host"]


def foreign_host(scope: Scope, settings: Settings) -> bool:
    """Whether a dev-mode node must refuse this HTTP or WebSocket request: its ``Host``
    does not name loopback (``localhost``, ``127.0.0.1``, ``[::1]``, any port). A dev-mode
    node lets anyone use every room, so a page on another site that resolves its own name to
    127.0.0.1 (DNS rebinding) must not reach it. No ``Host``, or several of which one is
    foreign, is refused too. Outside dev mode every ``Host`` passes."""
    if not settings.dev_mode or scope["type"] not in ("http", "websocket"):
        return False
    hosts = _hosts(scope)
    return not hosts or not all(host_header_is_loopback(h) for h in hosts)


async def refuse_foreign_host(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a request :func:`foreign_host` refused: HTTP ``403`` with the JSON error body
    (code ``forbidden``); a WebSocket handshake is refused with 403 before the upgrade."""
    log.info(
        "dev mode: refused a request for Host %s (only loopback names are served in dev mode)",
        _shown(", ".join(_hosts(scope))),
    )
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    exc = Forbidden("dev mode answers only requests for localhost, 127.0.0.1 or [::1]")
    await error_response(exc)(scope, receive, send)


def cross_site_cookie(conn: HTTPConnection) -> bool:
    """Whether ``conn`` is a cross-site request (``Sec-Fetch-Site: cross-site``) that would be
    authenticated by the ``hubbub_token`` cookie: the cookie is set and no ``Authorization``
    header carries a credential (:func:`credential` prefers the header, then the cookie). Such a
    request comes from a page on another site (an ``<img>``, a ``<script>``, an
    ``EventSource``, a WebSocket) that the browser lends the user's cookie to."""
    if conn.headers.get("sec-fetch-site", "").strip().lower() != "cross-site":
        return False
    if not conn.cookies.get(TOKEN_COOKIE):
        return False
    _scheme, _, value = conn.headers.get("authorization", "").strip().partition(" ")
    return not value.strip()


# ---- admission ----------------------------------------------------------------------------------
async def admit(
    hub: Hub,
    conn: HTTPConnection,
    *,
    rate: dict[str, str] | None = None,
    accepted: Callable[[], Awaitable[None]] | None = None,
    late: Callable[[], Awaitable[str | None]] | None = None,
    transport: str = "http",
) -> Identity:
    """Who the client of ``conn`` is, after the checks every transport runs before serving it,
    the cheapest refusal first:

    1. Origin (:func:`origin_allowed`): refused with Forbidden ``origin not allowed``, the
       only Forbidden raised here (with the next), always before ``accepted`` is awaited. Credentials may ride
       on a cookie, so a cross-site page must not get a session or an answer at all. A
       cross-site request authenticated by the cookie (:func:`cross_site_cookie`) must also
       carry an allowed ``Origin``: without one it gets the same Forbidden (browsers send no
       ``Origin`` for an ``<img>`` or a ``<script>``).
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

    Every Unauthorized counts in ``hubbub_auth_failures_total``. Refusals are logged at info
    level on ``hubbub.edge``, naming ``transport`` and the reason (expired, signature,
    malformed, ttl, unknown_key, missing, empty…) or the refused origin; the client's answer
    never says why."""
    if not origin_allowed(conn, hub.settings):
        log.info(
            "%s: origin refused: %s is neither this hub's origin nor in HUB_ALLOWED_ORIGINS",
            transport,
            _shown(conn.headers.get("origin", "")),
        )
        raise Forbidden("origin not allowed")
    if cross_site_cookie(conn) and "origin" not in conn.headers:
        log.info("%s: refused a cross-site request authenticated by the %s cookie without an "
                 "Origin", transport, TOKEN_COOKIE)  # fmt: skip
        raise Forbidden("a cross-site request authenticated by cookie needs an allowed Origin")
    if accepted is not None:
        await accepted()
    anonymous = hub.settings.anonymous
    bad: Unauthorized | None = None
    try:
        bearer = credential(conn, anonymous)
    except Unauthorized as exc:
        bearer, bad = None, exc
    if rate is not None:
        await _take_rate(hub, conn, bearer, rate)
    try:
        try:
            if bad is not None:
                raise bad
            if bearer is None and late is not None and not anonymous:
                bearer = await late()
        except Unauthorized as exc:  # refused before authentication: count its reason too
            hub.auth.failures[exc.reason] += 1
            raise
        return hub.auth.authenticate(bearer)  # counts its own reasons
    except Unauthorized as exc:
        hub.metrics.auth_failures += 1
        # The reason is for the operator only: the client's answer is the same for every one.
        log.info("%s: login refused: %s", transport, exc.reason)
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
            f"over the API rate limit of {rate.rate:g}/s (burst {rate.burst:g}) (HUB_API_RATE)",
            limit="HUB_API_RATE",
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
