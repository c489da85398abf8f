"""The HTTP edge shared by the /v1 API: JSON bodies (415/413/400), integer parameters, CORS
(PROTOCOL.md §5, hardening cases 15 and 23) and JSON error bodies for Starlette's own 404/405 and for
unexpected exceptions (500 ``internal``, never a traceback)."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hubbub.hub.errors import (
    BadRequest,
    Forbidden,
    HubError,
    Internal,
    NotFound,
    TooLarge,
    UnsupportedMediaType,
)
from hubbub.hub.settings import Settings
from hubbub.transports.edge import error_response, origin_allowed

log = logging.getLogger("hubbub.http")

MAX_LIMIT = 1000
MAX_BODY = 1024 * 1024  # PROTOCOL.md §5: request bodies of at most 1 MiB
BODY_TIMEOUT = 30.0
_DRAIN_LIMIT = 16 * MAX_BODY  # read (and drop) this much of an oversize body before answering
_CORS_ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID"
_CORS_EXPOSE_HEADERS = (
    "RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Retry-After, WWW-Authenticate"
)
_EMPTY_NAME = re.compile(r"^/v1/(rooms//(messages|presence|events)|users//disconnect)/?$")
_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
                 429: "rate_limited", 503: "unavailable"}  # fmt: skip


# ---- request bodies and parameters ---------------------------------------------------------
def _is_json_type(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        return False
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


async def read_json(request: Request, *, optional: bool = False) -> Any:
    """The request body as JSON. Raises UnsupportedMediaType (415), TooLarge (413, counted while
    reading: Content-Length is only a hint) or BadRequest (400). With ``optional`` an empty body
    without a Content-Type reads as ``{}``."""
    ctype = request.headers.get("content-type")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or len(length) > 18):
        raise BadRequest("malformed Content-Length")
    if ctype is None and optional and (length == "0" or length is None):
        body = await _read_body(request)
        if not body:
            return {}
        raise UnsupportedMediaType("request bodies must be application/json")
    if not _is_json_type(ctype):
        raise UnsupportedMediaType("request bodies must be application/json")
    if length is not None and int(length) > MAX_BODY:
        if "100-continue" not in request.headers.get("expect", "").lower():
            await _drain(request)  # with 100-continue the client has not sent it: don't ask
        raise TooLarge(f"request body over {MAX_BODY} bytes", details={"limit": MAX_BODY})
    body = await _read_body(request)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("request body is not valid JSON") from None


async def _read_body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT):  # a trickled body must not hold a task forever
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY:
                    break
                chunks.append(chunk)
    except TimeoutError:
        raise BadRequest(f"request body not received within {BODY_TIMEOUT:g} s") from None
    if size > MAX_BODY:
        await _drain(request, size)
        raise TooLarge(f"request body over {MAX_BODY} bytes", details={"limit": MAX_BODY})
    return b"".join(chunks)


async def _drain(request: Request, seen: int = 0) -> None:
    """Read and drop the rest of a refused body (bounded), so that the client, still sending,
    gets to read our 413 instead of a connection reset."""
    try:
        async with asyncio.timeout(5.0):
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > _DRAIN_LIMIT:
                    return
    except Exception:  # timed out, the client is gone, or the stream was consumed
        return


def int_param(
    request: Request, name: str, default: int, *, lo: int = 1, hi: int = MAX_LIMIT
) -> int:
    """An integer query parameter, clamped to ``hi`` (hardening case 31); non-integers and values
    below ``lo`` → 400."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    text = raw.strip()
    digits = text[1:] if text.startswith("-") else text
    if not digits.isascii() or not digits.isdigit():
        raise BadRequest(f"{name} must be an integer", details={"param": name})
    value = hi + 1 if len(digits) > 9 else int(digits)  # never int() a 10**6-digit string
    if text.startswith("-"):
        value = -value
    if value < lo:
        raise BadRequest(f"{name} must be >= {lo}", details={"param": name})
    return min(value, hi)


def json_object(body: Any, what: str = "request body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return body


# ---- app-wide error bodies and CORS ----------------------------------------------------------
def http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and _EMPTY_NAME.match(request.url.path):
        # `/v1/rooms//messages`: the route exists, the room name is missing (hardening case 23)
        return error_response(BadRequest("the room or user name is missing"), headers)
    if exc.status_code == 404:
        return error_response(NotFound(f"no such endpoint: {request.url.path[:200]}"), headers)
    if exc.status_code == 405:
        allow = [m.strip() for m in headers.get("Allow", "").split(",") if m.strip()]
        err = BadRequest(f"method {request.method} not allowed", details={"allow": allow})
        return Response(orjson.dumps(err.body()), status_code=405, headers=headers,
                        media_type="application/json")  # fmt: skip
    code = _STATUS_CODES.get(
        exc.status_code, "internal" if exc.status_code >= 500 else "bad_request"
    )
    body = {"error": {"code": code, "message": str(exc.detail)[:200], "details": {}}}
    return Response(orjson.dumps(body), status_code=exc.status_code, headers=headers,
                    media_type="application/json")  # fmt: skip


def hub_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HubError)
    return error_response(exc)


def unexpected(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
    return error_response(Internal("internal error"))


class CORSMiddleware:
    """CORS per ``HUB_ALLOWED_ORIGINS`` for plain HTTP requests (PROTOCOL.md §5, hardening case 15).

    An allowed origin gets itself echoed in ``Access-Control-Allow-Origin`` with credentials
    allowed; an origin admitted only by a ``*`` entry gets ``*`` and no credentials (never ``*``
    together with credentials); a disallowed origin gets no CORS header at all. Preflights are
    answered here: 204 when the origin is allowed, else 403 with the JSON error body.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.strict = settings.replace(
            allowed_origins=tuple(o for o in settings.allowed_origins if o != "*")
        )
        self.wildcard = "*" in settings.allowed_origins

    def allow_origin(self, conn: HTTPConnection) -> tuple[str, bool] | None:
        """(value of Access-Control-Allow-Origin, credentials allowed), or None."""
        origin = conn.headers.get("origin")
        if origin is None or not origin_allowed(conn, self.settings):
            return None
        if origin_allowed(conn, self.strict):
            return origin, True
        return ("*", False) if self.wildcard else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        if "origin" not in conn.headers:
            await self.app(scope, receive, send)
            return
        allowed = self.allow_origin(conn)
        if scope["method"] == "OPTIONS" and "access-control-request-method" in conn.headers:
            await self.preflight(conn, allowed)(scope, receive, send)
            return
        if allowed is None:
            await self.app(scope, receive, send)
            return
        extra = self._extra(allowed)

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"access-control-allow-origin" for k, _ in headers):
                    headers.extend(extra)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def response_headers(self, conn: HTTPConnection) -> list[tuple[bytes, bytes]]:
        """The CORS headers this middleware adds to a (non-preflight) response to ``conn``, for
        an endpoint answered ahead of it (SSE): none without an allowed ``Origin``."""
        if "origin" not in conn.headers:
            return []
        allowed = self.allow_origin(conn)
        return [] if allowed is None else self._extra(allowed)

    @staticmethod
    def _extra(allowed: tuple[str, bool]) -> list[tuple[bytes, bytes]]:
        value, creds = allowed
        extra = [(b"access-control-allow-origin", value.encode("latin-1")),
                 (b"access-control-expose-headers", _CORS_EXPOSE_HEADERS.encode()),
                 (b"vary", b"Origin")]  # fmt: skip
        if creds:
            extra.append((b"access-control-allow-credentials", b"true"))
        return extra

    def preflight(self, conn: HTTPConnection, allowed: tuple[str, bool] | None) -> Response:
        if allowed is None:
            return error_response(Forbidden("origin not allowed"), {"Vary": "Origin"})
        value, creds = allowed
        headers = {
            "Access-Control-Allow-Origin": value,
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": _CORS_ALLOW_HEADERS,
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        }
        if creds:
            headers["Access-Control-Allow-Credentials"] = "true"
        return Response(status_code=204, headers=headers)
