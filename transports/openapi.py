"""The OpenAPI 3.1 document of the HTTP API (PROTOCOL.md §5), served at ``/openapi.json``.

Written by hand from the protocol, not generated from the code: ``tests/transports/
test_openapi.py`` checks real responses against these schemas and that every /v1 route of the
app is described, so the two cannot drift apart silently.
"""

from __future__ import annotations

from typing import Any

ROOM_PATTERN = "^[A-Za-z0-9_.:-]{1,128}$"
CURSOR_PATTERN = "^[A-Za-z0-9_.~-]{1,1024}$"
ERROR_CODES = [
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "too_large",
    "unsupported_media_type",
    "rate_limited",
    "unavailable",
    "room_full",
    "internal",
]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], props: dict[str, Any], extra: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "required": required, "properties": props}
    if not extra:
        out["additionalProperties"] = False
    return out


SCHEMAS: dict[str, Any] = {
    "Error": _obj(
        ["error"],
        {
            "error": _obj(
                ["code", "message", "details"],
                {
                    "code": {"type": "string", "enum": ERROR_CODES},
                    "message": {"type": "string"},
                    "details": {"type": "object"},
                },
                extra=False,
            )
        },
        extra=False,
    ),
    "Room": {"type": "string", "pattern": ROOM_PATTERN},
    "Cursor": {"type": "string", "pattern": CURSOR_PATTERN},
    "Event": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"},
    "PublishRequest": _obj(
        ["data"],
        {
            "data": {"description": "any JSON value, at most HUB_MAX_MESSAGE_BYTES encoded"},
            "event": _ref("Event"),
            "ephemeral": {"type": "boolean", "default": False},
        },
    ),
    "StoredResult": _obj(
        ["room", "offset", "epoch", "cursor"],
        {
            "room": _ref("Room"),
            "offset": {"type": "integer", "minimum": 1},
            "epoch": {"type": "string"},
            "cursor": _ref("Cursor"),
        },
        extra=False,
    ),
    "EphemeralResult": _obj(
        ["room", "ephemeral"],
        {"room": _ref("Room"), "ephemeral": {"const": True}},
        extra=False,
    ),
    "PublishResult": {"oneOf": [_ref("StoredResult"), _ref("EphemeralResult")]},
    "BatchItem": _obj(
        ["room", "data"],
        {
            "room": _ref("Room"),
            "data": {},
            "event": _ref("Event"),
            "ephemeral": {"type": "boolean"},
            "key": {"type": "string", "minLength": 1, "maxLength": 256},
        },
    ),
    "BatchRequest": _obj(
        ["messages"],
        {"messages": {"type": "array", "maxItems": 1000, "items": _ref("BatchItem")}},
    ),
    "BatchResponse": _obj(
        ["results"],
        {
            "results": {
                "type": "array",
                "items": {"oneOf": [_ref("StoredResult"), _ref("EphemeralResult"), _ref("Error")]},
            }
        },
        extra=False,
    ),
    "Sender": _obj(["user"], {"user": {"type": "string"}, "session": {"type": "string"}}),
    "Message": _obj(
        ["type", "room", "data", "ts"],
        {
            "type": {"const": "message"},
            "room": _ref("Room"),
            "offset": {"type": "integer", "minimum": 1},
            "epoch": {"type": "string"},
            "event": _ref("Event"),
            "from": _ref("Sender"),
            "ts": {"type": "integer"},
            "data": {},
        },
    ),
    "History": _obj(
        ["messages", "cursor", "epoch", "more", "complete"],
        {
            "messages": {
                "type": "array",
                "items": _ref("Message"),
                "description": "at most limit, and at most HUB_MAX_REPLY_BYTES of messages "
                "(at least one)",
            },
            "cursor": _ref("Cursor"),
            "epoch": {"type": "string"},
            "more": {
                "type": "boolean",
                "description": "further messages exist: after the page (since=cursor "
                "continues it), or, without since, before it",
            },
            "complete": {"type": "boolean"},
        },
        extra=False,
    ),
    "Member": _obj(
        ["user", "session", "transport"],
        {
            "user": {"type": "string"},
            "session": {"type": "string"},
            "name": {"type": "string"},
            "info": {},
            "transport": {"type": "string"},
        },
    ),
    "Presence": _obj(
        ["members", "users", "sessions"],
        {
            "members": {"type": "array", "items": _ref("Member")},
            "users": {"type": "integer", "minimum": 0},
            "sessions": {"type": "integer", "minimum": 0},
        },
        extra=False,
    ),
    "Rooms": _obj(
        ["rooms", "cursor"],
        {
            "rooms": {
                "type": "array",
                "items": _obj(
                    ["room", "sessions"],
                    {"room": _ref("Room"), "sessions": {"type": "integer", "minimum": 0}},
                    extra=False,
                ),
            },
            "cursor": {"type": ["string", "null"]},
        },
        extra=False,
    ),
    "DisconnectRequest": _obj(
        [],
        {
            "reason": {"type": "string", "maxLength": 120},
            "revoke": {
                "type": "boolean",
                "description": "also refuse, on every node, every token of the user issued "
                "until now (iat at or before revoked_before, or no iat) until it expires",
            },
        },
    ),
    "DisconnectResult": _obj(
        ["sessions"],
        {
            "sessions": {"type": "integer", "minimum": 0},
            "revoked_before": {
                "type": "integer",
                "description": "with revoke: the cutoff (Unix seconds); tokens with a later "
                "iat are accepted",
            },
        },
        extra=False,
    ),
    "Grants": _obj(
        [],
        {
            k: {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 256}}
            for k in ("subscribe", "publish", "signal", "presence")
        },
        extra=False,
    ),
    "TokenRequest": _obj(
        ["sub", "ttl"],
        {
            "sub": {"type": "string", "minLength": 1, "maxLength": 256},
            "ttl": {"type": "number", "exclusiveMinimum": 0, "description": "<= HUB_JWT_MAX_TTL"},
            "hub": _ref("Grants"),
            "name": {"type": "string"},
            "info": {},
        },
    ),
    "TokenResult": _obj(
        ["token", "expires_at"],
        {"token": {"type": "string"}, "expires_at": {"type": "integer"}},
        extra=False,
    ),
    "IceServer": _obj(
        ["urls"],
        {
            "urls": {"type": "array", "items": {"type": "string"}},
            "username": {"type": "string", "pattern": "^[0-9]+:"},
            "credential": {"type": "string"},
        },
        extra=False,
    ),
    "IceServers": _obj(
        ["ice_servers", "ttl"],
        {
            "ice_servers": {"type": "array", "items": _ref("IceServer")},
            "ttl": {"type": "integer", "minimum": 0},
        },
        extra=False,
    ),
    "Stats": _obj(
        [
            "node",
            "time",
            "connections",
            "sessions",
            "subscriptions",
            "rooms",
            "publications",
            "publications_by_transport",
            "deliveries",
            "broker",
            "draining",
            "disconnects",
            "auth_failures",
            "rate_limited",
            "dev_mode",
        ],
        {
            "node": {"type": "string"},
            "dev_mode": {
                "type": "boolean",
                "description": "no secret and no API key: admin endpoints open on loopback",
            },
            "time": {"type": "number", "description": "Unix seconds of this answer"},
            "connections": {
                "type": "object",
                "required": ["ws", "sse"],
                "additionalProperties": {"type": "integer", "minimum": 0},
            },
            "sessions": {"type": "integer", "minimum": 0},
            "subscriptions": {"type": "integer", "minimum": 0},
            "rooms": {"type": "integer", "minimum": 0},
            "publications": {"type": "integer", "minimum": 0},
            "publications_by_transport": {
                "type": "object",
                "required": ["http", "ws"],
                "additionalProperties": {"type": "integer", "minimum": 0},
            },
            "deliveries": {"type": "integer", "minimum": 0},
            "broker": _obj(
                ["kind", "up"],
                {"kind": {"type": "string"}, "up": {"type": "boolean"}},
                extra=False,
            ),
            "draining": {"type": "boolean"},
            "disconnects": {
                "type": "object",
                "additionalProperties": {"type": "integer", "minimum": 0},
            },
            "auth_failures": {"type": "integer", "minimum": 0},
            "rate_limited": {"type": "integer", "minimum": 0},
            "webhooks": {
                "type": "array",
                "description": "per webhook endpoint (HUB_WEBHOOK_URLS): deliveries by result, "
                "dropped events, queue depth and the oldest queued event's age in seconds",
                "items": {"type": "object"},
            },
        },
    ),
    "Health": _obj(["status"], {"status": {"type": "string", "enum": ["ok", "unavailable"]}}),
}

_RATE_HEADERS = {
    name: {"schema": {"type": "integer"}, "description": desc}
    for name, desc in (
        ("RateLimit-Limit", "bucket size (HUB_API_RATE burst)"),
        ("RateLimit-Remaining", "requests left in the bucket"),
        ("RateLimit-Reset", "seconds until the bucket is full again"),
    )
}
_ERRORS = {
    "400": "bad request: malformed JSON, parameter or room name",
    "401": "missing or invalid credentials (the same answer for every reason)",
    "403": "credential lacks the grant, or the wrong kind of credential",
    "404": "no such endpoint",
    "405": "method not allowed (code bad_request)",
    "409": "Idempotency-Key reused with another body",
    "413": "body over 1 MiB, data over HUB_MAX_MESSAGE_BYTES, or a batch over 1000",
    "415": "body is not application/json",
    "429": "rate limited; see Retry-After",
    "500": "internal error",
    "503": "broker unavailable; see Retry-After",
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _op(
    summary: str,
    ok: tuple[str, str, str],
    *,
    errors: tuple[str, ...],
    body: str | None = None,
    body_required: bool = True,
    params: list[dict[str, Any]] | None = None,
    security: str = "any",
) -> dict[str, Any]:
    status, schema, desc = ok
    responses: dict[str, Any] = {
        status: {"description": desc, "content": _json(_ref(schema)), "headers": _RATE_HEADERS}
    }
    for code in (*errors, "400", "401", "404", "405", "429", "500", "503"):
        responses.setdefault(code, {"description": _ERRORS[code], "content": _json(_ref("Error"))})
    out: dict[str, Any] = {"summary": summary, "responses": responses, "parameters": params or []}
    out["security"] = {
        "any": [{"apiKey": []}, {"clientToken": []}],
        "key": [{"apiKey": []}],
        "client": [{"clientToken": []}],
    }[security]
    if body is not None:
        out["requestBody"] = {"required": body_required, "content": _json(_ref(body))}
    return out


def _path_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: dict[str, Any], desc: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": desc}


_ROOM = _path_param("room", _ref("Room"))
_LIMIT = _query(
    "limit",
    {"type": "integer", "minimum": 1, "default": 100},
    "page size; values over 1000 are clamped to 1000",
)
_SSE = {
    "summary": "Server-Sent Events stream (PROTOCOL.md §4)",
    "security": [{"clientToken": []}, {"apiKey": []}],
    "responses": {
        "200": {
            "description": "event stream",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        "400": {"description": _ERRORS["400"], "content": _json(_ref("Error"))},
        "401": {"description": _ERRORS["401"], "content": _json(_ref("Error"))},
        "403": {"description": _ERRORS["403"], "content": _json(_ref("Error"))},
    },
}


def spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document as a JSON-able dict."""
    paths: dict[str, Any] = {
        "/v1/rooms/{room}/messages": {
            "parameters": [_ROOM],
            "post": _op(
                "Publish one message to a room",
                ("201", "PublishResult", "published (or the first answer to a repeated key)"),
                errors=("403", "409", "413", "415"),
                body="PublishRequest",
                params=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                        "description": "repeat within 5 minutes returns the first answer",
                    }
                ],
            ),
            "get": _op(
                "Read a room's history",
                ("200", "History", "history page"),
                errors=("403",),
                params=[_query("since", {"type": "string"}, "cursor or offset"), _LIMIT],
            ),
        },
        "/v1/publish": {
            "post": _op(
                "Publish up to 1000 messages; per-item results in input order",
                ("200", "BatchResponse", "one result or error per item"),
                errors=("403", "413", "415"),
                body="BatchRequest",
                security="key",
            )
        },
        "/v1/rooms/{room}/presence": {
            "parameters": [_ROOM],
            "get": _op("Who is in a room", ("200", "Presence", "members"), errors=("403",)),
        },
        "/v1/rooms": {
            "get": _op(
                "List rooms that have sessions",
                ("200", "Rooms", "a page of rooms; cursor null on the last page"),
                errors=("403",),
                params=[
                    _query("prefix", {"type": "string", "maxLength": 128}, "room name prefix"),
                    _query("cursor", {"type": "string"}, "from the previous page"),
                    _LIMIT,
                ],
                security="key",
            )
        },
        "/v1/users/{user}/disconnect": {
            "parameters": [_path_param("user", {"type": "string", "minLength": 1})],
            "post": _op(
                "Close every session of a user on every node (close code 4509); with revoke, "
                "refuse the user's tokens issued until now",
                ("200", "DisconnectResult", "number of sessions closed"),
                errors=("403", "413", "415"),
                body="DisconnectRequest",
                body_required=False,
                security="key",
            ),
        },
        "/v1/tokens": {
            "post": _op(
                "Mint a client JWT",
                ("200", "TokenResult", "the token"),
                errors=("403", "413", "415"),
                body="TokenRequest",
                security="key",
            )
        },
        "/v1/ice-servers": {
            "get": _op(
                "ICE servers with fresh TURN REST credentials",
                ("200", "IceServers", "RTCIceServer list"),
                errors=("403",),
                security="client",
            )
        },
        "/v1/stats": {
            "get": _op(
                "This node's connections, rooms and counters (the admin page)",
                ("200", "Stats", "one node's numbers; counters since it started"),
                errors=("403",),
                security="key",
            )
        },
        "/v1/rooms/{room}/events": {"parameters": [_ROOM], "get": _SSE},
        "/v1/events": {
            "get": {
                **_SSE,
                "parameters": [
                    _query(
                        "room", {"type": "array", "items": _ref("Room"), "maxItems": 32}, "rooms"
                    )
                ],
            }
        },
        "/v1/ws": {
            "get": {
                "summary": "WebSocket endpoint (PROTOCOL.md §3)",
                "responses": {"101": {"description": "switching protocols"}},
            }
        },
        "/health/live": {
            "get": {
                "summary": "liveness",
                "responses": {"200": {"description": "alive", "content": _json(_ref("Health"))}},
            }
        },
        "/health/ready": {
            "get": {
                "summary": "readiness: 503 while the broker is unreachable or the node drains",
                "responses": {
                    "200": {"description": "ready", "content": _json(_ref("Health"))},
                    "503": {"description": "not ready", "content": _json(_ref("Health"))},
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "text format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Hubbub HTTP API",
            "version": "1",
            "description": 'PROTOCOL.md §5. Errors: {"error": {"code", "message", "details"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "HUB_API_KEYS"},
                "clientToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    }
