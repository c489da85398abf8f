"""HTTP API (PROTOCOL.md §5), health, metrics and the OpenAPI document.

Every /v1 endpoint runs the same guard, in this order (cheapest refusal first; steps 1-3 are
the admission every transport runs, :func:`hubbub.transports.edge.admit`):

1. Origin: a browser request from an origin that is neither ours nor in ``HUB_ALLOWED_ORIGINS``
   → 403 (credentials may ride on a cookie; CORS alone does not stop a request from being made).
2. Rate limit (``HUB_API_RATE``) per API key, else per client IP, through ``hub.state.take`` so the
   bucket is shared by the cluster on Redis → ``RateLimit-*`` headers; 429 with ``Retry-After``.
3. Authentication (API key or client JWT) → 401; the endpoint's credential kind → 403.
4. Body: JSON only (415), at most 1 MiB counted while reading (413), valid JSON (400).

Errors are always the JSON body of PROTOCOL.md §5, also for Starlette's own 404/405 and for
unexpected exceptions (500 ``internal``, never a traceback).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from hubbub.hub.auth import Identity, mint_token
from hubbub.hub.errors import (
    BadRequest,
    BrokerError,
    ConfigError,
    Forbidden,
    HubError,
    Internal,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from hubbub.hub.hub import Hub, PreparedPublish
from hubbub.hub.settings import GRANT_KINDS, Settings
from hubbub.signaling.turn import ice_servers, may_get_ice
from hubbub.transports import openapi
from hubbub.transports.edge import admit, error_response, is_loopback, json_response
from hubbub.transports.http_edge import (
    CORSMiddleware,
    http_exception,
    hub_error,
    int_param,
    json_object,
    read_json,
    unexpected,
)

log = logging.getLogger("hubbub.http")

MAX_BATCH = 1000
DEFAULT_LIMIT = 100

Handler = Callable[[Request, "Call"], Awaitable[tuple[Any, int]]]


@dataclass(slots=True)
class Call:
    """One API request after the guard: who is calling and the headers every answer carries.
    ``local_admin``: a dev-mode guest on a loopback address (see :meth:`Api.guard`)."""

    identity: Identity
    headers: dict[str, str] = field(default_factory=dict)
    local_admin: bool = False

    def need_api_key(self) -> None:
        """The admin endpoints: an API key, or a dev-mode guest on loopback."""
        if not (self.identity.api_key or self.local_admin):
            raise Forbidden("this endpoint needs an API key")


# ---- the guard -------------------------------------------------------------------------------
class Api:
    """The /v1 endpoints of one node."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.settings: Settings = hub.settings

    async def guard(self, request: Request, headers: dict[str, str]) -> Call:
        """Origin, rate, authentication (:func:`~hubbub.transports.edge.admit`).

        In dev mode (no secret, key or API key: nobody could hold an API key) a guest whose
        address is loopback may use the admin endpoints, so the admin page works under
        ``make run``; the CLI binds only loopback addresses in dev mode. Anywhere else they
        still need an API key."""
        ident = await admit(self.hub, request, rate=headers)
        local = self.settings.dev_mode and ident.guest and is_loopback(request)
        return Call(ident, headers, local_admin=local)

    def endpoint(self, fn: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Wrap ``fn(request, call) -> (body, status)`` with the guard and the error envelope."""

        async def handle(request: Request) -> Response:
            headers: dict[str, str] = {}
            try:
                body, status = await fn(request, await self.guard(request, headers))
                return json_response(body, status, headers)
            except HubError as exc:
                return error_response(exc, headers)
            except Exception:
                log.exception("%s %s failed", request.method, request.url.path)
                return error_response(Internal("internal error"), headers)

        handle.__name__ = fn.__name__
        return handle

    # ---- endpoints -------------------------------------------------------------------------
    async def publish(self, request: Request, call: Call) -> tuple[Any, int]:
        body = json_object(await read_json(request))
        if "data" not in body:
            raise BadRequest("data is required")
        result = await self.hub.publish(
            call.identity,
            request.path_params["room"],
            body["data"],
            event=body.get("event"),
            ephemeral=body.get("ephemeral", False),
            key=request.headers.get("idempotency-key"),
        )
        return result, 201

    async def publish_many(self, request: Request, call: Call) -> tuple[Any, int]:
        call.need_api_key()
        body = json_object(await read_json(request))
        items = body.get("messages")
        if not isinstance(items, list):
            raise BadRequest("messages must be a list")
        if len(items) > MAX_BATCH:
            raise TooLarge(f"at most {MAX_BATCH} messages per batch", details={"limit": MAX_BATCH})
        results: list[Any] = [None] * len(items)
        pending: list[tuple[int, PreparedPublish]] = []
        for i, item in enumerate(items):
            try:
                msg = json_object(item, f"messages[{i}]")
                if "data" not in msg:
                    raise BadRequest(f"messages[{i}].data is required")
                prepared = self.hub.prepare_publish(
                    call.identity,
                    msg.get("room"),  # type: ignore[arg-type]  # checked by the hub
                    msg["data"],
                    event=msg.get("event"),
                    ephemeral=msg.get("ephemeral", False),
                    key=msg.get("key"),
                )
                pending.append((i, prepared))
            except HubError as exc:
                results[i] = exc.body()
        # All in flight at once, started in list order: each reaches the broker before the next
        # starts (Hub.publish_prepared), so the broker pipelines them and keeps their order.
        done = await asyncio.gather(
            *(self.hub.publish_prepared(p) for _, p in pending), return_exceptions=True
        )
        for (i, _), res in zip(pending, done, strict=True):
            if isinstance(res, HubError):
                results[i] = res.body()
            elif isinstance(res, BaseException):
                raise res
            else:
                results[i] = res
        return {"results": results}, 200

    async def history(self, request: Request, call: Call) -> tuple[Any, int]:
        limit = int_param(request, "limit", DEFAULT_LIMIT)
        since = request.query_params.get("since") or None
        result = await self.hub.history(
            call.identity, request.path_params["room"], since=since, limit=limit
        )
        return result, 200

    async def presence(self, request: Request, call: Call) -> tuple[Any, int]:
        return await self.hub.presence(call.identity, request.path_params["room"]), 200

    async def rooms(self, request: Request, call: Call) -> tuple[Any, int]:
        call.need_api_key()
        limit = int_param(request, "limit", DEFAULT_LIMIT)
        prefix = request.query_params.get("prefix", "")
        cursor = request.query_params.get("cursor") or None
        if len(prefix) > 128 or (cursor is not None and len(cursor) > 1024):
            raise BadRequest("prefix or cursor too long")
        try:
            rooms, nxt = await self.hub.state.list_rooms(prefix, cursor, limit)
        except BrokerError:
            raise Unavailable("broker unavailable") from None
        return {"rooms": [{"room": r, "sessions": n} for r, n in rooms], "cursor": nxt}, 200

    async def disconnect(self, request: Request, call: Call) -> tuple[Any, int]:
        call.need_api_key()
        user = request.path_params["user"]
        if not 0 < len(user) <= 256:
            raise BadRequest("user must be 1 to 256 characters")
        body = json_object(await read_json(request, optional=True))
        reason = body.get("reason", "disconnected by the server")
        # it becomes a WebSocket close reason: at most 123 bytes of UTF-8 (RFC 6455 §5.5)
        if not isinstance(reason, str) or len(reason.encode("utf-8", "replace")) > 120:
            raise BadRequest("reason must be a string of at most 120 bytes (UTF-8)")
        revoke = body.get("revoke", False)
        if not isinstance(revoke, bool):
            raise BadRequest("revoke must be a boolean")
        reason = reason or "disconnected by the server"
        if revoke:
            n, cutoff = await self.hub.revoke_user(user, reason)
            return {"sessions": n, "revoked_before": cutoff}, 200
        return {"sessions": await self.hub.disconnect_user(user, reason)}, 200

    async def tokens(self, request: Request, call: Call) -> tuple[Any, int]:
        call.need_api_key()
        body = json_object(await read_json(request))
        sub, ttl = body.get("sub"), body.get("ttl")
        if not isinstance(sub, str) or not 0 < len(sub) <= 256:
            raise BadRequest("sub must be a non-empty string of at most 256 characters")
        max_ttl = self.settings.jwt_max_ttl
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= max_ttl:
            raise BadRequest(
                f"ttl must be a number of seconds > 0 and <= {max_ttl:g} (HUB_JWT_MAX_TTL)",
                details={"max_ttl": max_ttl},
            )
        grants = body.get("hub")
        if grants is not None:
            ok = isinstance(grants, dict) and all(
                k in GRANT_KINDS
                and isinstance(v, list)
                and all(isinstance(p, str) and 0 < len(p) <= 256 for p in v)
                for k, v in grants.items()
            )
            if not ok:
                raise BadRequest(f"hub must map {', '.join(GRANT_KINDS)} to lists of patterns")
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise BadRequest("name must be a string")
        try:
            token, expires_at = mint_token(
                self.settings, sub, float(ttl), hub=grants, name=name, info=body.get("info")
            )
        except ConfigError:
            raise BadRequest(
                "this hub cannot mint tokens: it needs HUB_JWT_SECRET and an HS* algorithm "
                "in HUB_JWT_ALGORITHMS",
                details={"setting": "HUB_JWT_SECRET"},
            ) from None
        return {"token": token, "expires_at": expires_at}, 200

    async def stats(self, request: Request, call: Call) -> tuple[Any, int]:
        call.need_api_key()
        return node_stats(self.hub), 200

    async def ice(self, request: Request, call: Call) -> tuple[Any, int]:
        ident = call.identity
        if ident.api_key:
            raise Forbidden("ICE servers are issued to client tokens only, not to API keys")
        if not may_get_ice(ident):
            # TURN relays media for calls: a token that may join no call gets no credentials
            raise Forbidden("ICE servers need a signal grant")
        return ice_servers(self.settings, ident.sub), 200


def node_stats(hub: Hub) -> dict[str, Any]:
    """This node's numbers as JSON (``GET /v1/stats``, the admin page): the gauges of /metrics
    read now, and its counters since the node started. Counters only grow; a reader gets rates
    from two answers of the same ``node`` and their ``time`` (Unix seconds). The broker is named
    by its scheme only (its URL may hold a password). ``dev_mode``: the hub has no secret, key
    or API key (loopback guests may use the admin endpoints)."""
    m = hub.metrics
    sessions = list(hub.sessions.values())
    return {
        "node": hub.node_id,
        "time": time.time(),
        "connections": {"ws": 0, "sse": 0, **m.connections},
        "sessions": len(sessions),
        "subscriptions": sum(len(s.subs) for s in sessions),
        "rooms": len(hub.rooms),
        "publications": sum(m.published.values()),
        "publications_by_transport": {"http": 0, "ws": 0, **m.published},
        "deliveries": m.deliveries,
        "broker": {
            "kind": hub.settings.broker_url.split("://", 1)[0],
            "up": bool(hub.broker_up),
        },
        "draining": bool(hub.draining),
        "dev_mode": hub.settings.dev_mode,
        "disconnects": {str(code): n for code, n in sorted(m.disconnects.items())},
        "auth_failures": m.auth_failures,
        "rate_limited": m.rate_limited,
        # Per endpoint: deliveries by result, queue depth, oldest event age (docs/webhooks.md).
        "webhooks": hub.webhooks.stats() if hub.webhooks is not None else [],
    }


def routes(hub: Hub) -> list[BaseRoute]:
    api = Api(hub)
    spec = orjson.dumps(openapi.spec())

    async def live(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def ready(request: Request) -> Response:
        ok = await hub.ready()
        return json_response({"status": "ok" if ok else "unavailable"}, 200 if ok else 503)

    metrics_token = (hub.settings.metrics_token or "").encode()

    async def metrics(request: Request) -> Response:
        # With HUB_METRICS_TOKEN set, only ``Authorization: Bearer <it>`` reads the metrics.
        if metrics_token:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), metrics_token
            ):
                raise Unauthorized("/metrics needs Authorization: Bearer <HUB_METRICS_TOKEN>")
        return PlainTextResponse(hub.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi_json(request: Request) -> Response:
        return Response(spec, media_type="application/json")

    e = api.endpoint
    publish, history = e(api.publish), e(api.history)

    async def messages(request: Request) -> Response:
        # one route for both methods, so that a wrong method's 405 lists both in Allow
        return await (publish if request.method == "POST" else history)(request)

    return [
        Route("/health/live", live),
        Route("/health/ready", ready),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi_json),
        Route("/v1/rooms/{room}/messages", messages, methods=["GET", "POST"]),
        Route("/v1/rooms/{room}/presence", e(api.presence), methods=["GET"]),
        Route("/v1/rooms", e(api.rooms), methods=["GET"]),
        Route("/v1/publish", e(api.publish_many), methods=["POST"]),
        Route("/v1/users/{user}/disconnect", e(api.disconnect), methods=["POST"]),
        Route("/v1/tokens", e(api.tokens), methods=["POST"]),
        Route("/v1/ice-servers", e(api.ice), methods=["GET"]),
        Route("/v1/stats", e(api.stats), methods=["GET"]),
    ]


def install(app: Starlette, hub: Hub) -> None:
    """Error handlers and middleware for the HTTP API."""
    app.add_exception_handler(HTTPException, http_exception)
    app.add_exception_handler(HubError, hub_error)
    app.add_exception_handler(Exception, unexpected)
    app.add_middleware(CORSMiddleware, settings=hub.settings)
