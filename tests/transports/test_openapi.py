"""``/openapi.json`` is OpenAPI 3.1, describes every /v1 route of the app, and real responses of
a real node (successes and every error status) validate against it.

The validator below covers the JSON Schema subset the document uses; it refuses any keyword it
does not know, so the document cannot grow beyond what is checked here without this failing.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from starlette.routing import Route, WebSocketRoute

from hubbub.app import create_app
from hubbub.hub.auth import Identity
from hubbub.hub.errors import BrokerError
from hubbub.hub.settings import Rate
from hubbub.transports import openapi
from tests.conftest import API_KEY, make_settings, token

KEY = {"Authorization": f"Bearer {API_KEY}"}
_ANNOTATIONS = {"description", "default", "title", "format", "examples"}
_KNOWN = _ANNOTATIONS | {
    "$ref", "type", "properties", "required", "additionalProperties", "items", "maxItems",
    "enum", "const", "oneOf", "anyOf", "pattern", "minLength", "maxLength", "minimum",
    "exclusiveMinimum",
}  # fmt: skip


class Invalid(AssertionError):
    pass


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    raise Invalid(f"unknown type {kind}")


def validate(value: Any, schema: dict[str, Any], doc: dict[str, Any], path: str = "$") -> None:
    """Raise Invalid when ``value`` does not match ``schema`` (JSON Schema 2020-12 subset)."""
    unknown = set(schema) - _KNOWN
    if unknown:
        raise Invalid(f"validator does not know {unknown} (at {path})")
    if "$ref" in schema:
        target: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        validate(value, target, doc, path)
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, k) for k in kinds):
            raise Invalid(f"{path}: {value!r:.80} is not {kinds}")
    if "enum" in schema and value not in schema["enum"]:
        raise Invalid(f"{path}: {value!r} not in {schema['enum']}")
    if "const" in schema and (value != schema["const"] or type(value) is not type(schema["const"])):
        raise Invalid(f"{path}: {value!r} != {schema['const']!r}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise Invalid(f"{path}: {value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1e18):
            raise Invalid(f"{path}: length {len(value)} out of bounds")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise Invalid(f"{path}: {value} < {schema['minimum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            raise Invalid(f"{path}: {value} <= {schema['exclusiveMinimum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                raise Invalid(f"{path}: missing {name!r}")
        for name, item in value.items():
            if name in props:
                validate(item, props[name], doc, f"{path}.{name}")
            elif schema.get("additionalProperties") is False:
                raise Invalid(f"{path}: unexpected property {name!r}")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", 1e18):
            raise Invalid(f"{path}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                validate(item, schema["items"], doc, f"{path}[{i}]")
    if "oneOf" in schema:
        ok = 0
        for option in schema["oneOf"]:
            try:
                validate(value, option, doc, path)
                ok += 1
            except Invalid:
                pass
        if ok != 1:
            raise Invalid(f"{path}: {value!r:.80} matches {ok} of oneOf")
    if "anyOf" in schema:
        for option in schema["anyOf"]:
            try:
                validate(value, option, doc, path)
                break
            except Invalid:
                pass
        else:
            raise Invalid(f"{path}: matches none of anyOf")


def _walk_refs(node: Any, doc: dict[str, Any]) -> None:
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
        for v in node.values():
            _walk_refs(v, doc)
    elif isinstance(node, list):
        for v in node:
            _walk_refs(v, doc)


def test_document_shape() -> None:
    doc = openapi.spec()
    assert doc["openapi"] == "3.1.0"
    _walk_refs(doc, doc)  # every $ref resolves
    for schema in doc["components"]["schemas"].values():
        _check_keywords(schema)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters" or path in ("/v1/ws",):
                continue
            assert op["responses"], (path, method)
            if path.startswith("/v1/") and not path.endswith("events"):
                for status in ("400", "401", "404", "405", "429", "500", "503"):
                    ref = op["responses"][status]["content"]["application/json"]["schema"]
                    assert ref == {"$ref": "#/components/schemas/Error"}, (path, method, status)
                assert "RateLimit-Remaining" in next(
                    r["headers"] for s, r in op["responses"].items() if s.startswith("2")
                )


def _check_keywords(schema: Any) -> None:
    if isinstance(schema, dict):
        unknown = set(schema) - _KNOWN
        # `properties` maps names to schemas: their names are not keywords
        assert not unknown, unknown
        for key, value in schema.items():
            if key == "properties":
                for sub in value.values():
                    _check_keywords(sub)
            elif key in ("items", "additionalProperties"):
                _check_keywords(value)
            elif key in ("oneOf", "anyOf"):
                for sub in value:
                    _check_keywords(sub)


def test_every_v1_route_is_documented() -> None:
    app = create_app(make_settings())
    doc = openapi.spec()
    seen = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith(
            ("/v1", "/health", "/metrics", "/openapi")
        ):
            methods = {m.lower() for m in (route.methods or ())} - {"head"}
        elif isinstance(route, WebSocketRoute):
            methods = {"get"}
        else:
            continue
        if route.path == "/openapi.json":
            continue
        assert route.path in doc["paths"], f"{route.path} is not in /openapi.json"
        for method in methods:
            assert method in doc["paths"][route.path], f"{method.upper()} {route.path} undocumented"
            seen.add((route.path, method))
    documented = {(p, m) for p, item in doc["paths"].items() for m in item if m != "parameters"}
    assert documented <= seen, f"documented but not served: {documented - seen}"


def _response_schema(
    doc: dict[str, Any], template: str, method: str, status: int
) -> dict[str, Any]:
    item = doc["paths"][template]
    # a 405 answers a method the path does not have: it is documented on the path's operations
    op = item.get(method.lower()) or next(v for k, v in item.items() if k != "parameters")
    assert str(status) in op["responses"], f"{method} {template} → {status} is undocumented"
    content = op["responses"][str(status)]["content"]
    return content["application/json"]["schema"]  # type: ignore[no-any-return]


def _request_schema(doc: dict[str, Any], template: str, method: str) -> dict[str, Any]:
    body = doc["paths"][template][method.lower()]["requestBody"]
    return body["content"]["application/json"]["schema"]  # type: ignore[no-any-return]


async def test_real_responses_match_the_document(node_factory: Any, monkeypatch: Any) -> None:
    node = await node_factory(stun_urls=("stun:s.example",), turn_urls=("turn:t.example",),
                              turn_secret="t-secret", api_rate=Rate(1000, 2000))  # fmt: skip
    async with httpx.AsyncClient(base_url=node.url) as c:
        served = (await c.get("/openapi.json")).json()
        assert served == openapi.spec()
        doc = served
        user = token(
            "alice",
            hub={
                "subscribe": ["*"],
                "publish": ["chat:*"],
                "presence": ["*"],
                "signal": ["call:*"],
            },
        )
        ident_guest = {"Authorization": f"Bearer {user}"}
        session = await node.hub.open_session(
            Identity(
                sub="p", grants={"subscribe": ("*",), "presence": ("*",)}, name="P", info={"a": 1}
            ),
            "test",
        )
        try:
            await node.hub.subscribe(session, "chat:1", presence=True)
            msgs = {"messages": [{"room": "chat:1", "data": 1, "key": "k"}, {"room": "!", "data": 2},
                                 {"room": "e", "data": 3, "ephemeral": True}]}  # fmt: skip
            cases: list[tuple[str, str, str, dict[str, Any], int]] = [
                ("POST", "/v1/rooms/{room}/messages", "/v1/rooms/chat:1/messages",
                 {"json": {"data": {"x": 1}, "event": "e"}, "headers": KEY}, 201),
                ("POST", "/v1/rooms/{room}/messages", "/v1/rooms/chat:1/messages",
                 {"json": {"data": 2}, "headers": ident_guest}, 201),
                ("POST", "/v1/rooms/{room}/messages", "/v1/rooms/chat:1/messages",
                 {"json": {"data": 1, "ephemeral": True}, "headers": KEY}, 201),
                ("POST", "/v1/rooms/{room}/messages", "/v1/rooms/other/messages",
                 {"json": {"data": 1}, "headers": ident_guest}, 403),
                ("POST", "/v1/rooms/{room}/messages", "/v1/rooms/chat:1/messages",
                 {"content": b"x", "headers": KEY}, 415),
                ("POST", "/v1/rooms/{room}/messages", "/v1/rooms/chat:1/messages",
                 {"json": {"data": "x" * 70000}, "headers": KEY}, 413),
                ("POST", "/v1/rooms/{room}/messages", "/v1/rooms/chat:1/messages",
                 {"json": {"nodata": 1}, "headers": KEY}, 400),
                ("POST", "/v1/rooms/{room}/messages", "/v1/rooms/chat:1/messages",
                 {"json": {"data": 1}}, 401),
                ("POST", "/v1/rooms/{room}/messages", "/v1/rooms/chat:1/messages",
                 {"json": {"data": 1}, "headers": {**KEY, "Idempotency-Key": "i"}}, 201),
                ("POST", "/v1/rooms/{room}/messages", "/v1/rooms/chat:1/messages",
                 {"json": {"data": 2}, "headers": {**KEY, "Idempotency-Key": "i"}}, 409),
                ("GET", "/v1/rooms/{room}/messages", "/v1/rooms/chat:1/messages", {"headers": KEY}, 200),
                ("GET", "/v1/rooms/{room}/messages", "/v1/rooms/chat:1/messages?limit=1",
                 {"headers": ident_guest}, 200),
                ("GET", "/v1/rooms/{room}/messages", "/v1/rooms/empty/messages", {"headers": KEY}, 200),
                ("GET", "/v1/rooms/{room}/messages", "/v1/rooms/x/messages?limit=q", {"headers": KEY}, 400),
                ("DELETE", "/v1/rooms/{room}/messages", "/v1/rooms/x/messages", {"headers": KEY}, 405),
                ("POST", "/v1/publish", "/v1/publish", {"json": msgs, "headers": KEY}, 200),
                ("POST", "/v1/publish", "/v1/publish",
                 {"json": {"messages": [{"room": "a", "data": 0}] * 1001}, "headers": KEY}, 413),
                ("POST", "/v1/publish", "/v1/publish", {"json": msgs, "headers": ident_guest}, 403),
                ("GET", "/v1/rooms/{room}/presence", "/v1/rooms/chat:1/presence", {"headers": KEY}, 200),
                ("GET", "/v1/rooms", "/v1/rooms", {"headers": KEY}, 200),
                ("GET", "/v1/rooms", "/v1/rooms?limit=1&prefix=chat", {"headers": KEY}, 200),
                ("GET", "/v1/rooms", "/v1/rooms", {"headers": ident_guest}, 403),
                ("POST", "/v1/users/{user}/disconnect", "/v1/users/nobody/disconnect",
                 {"json": {"reason": "r"}, "headers": KEY}, 200),
                ("POST", "/v1/tokens", "/v1/tokens",
                 {"json": {"sub": "a", "ttl": 60, "hub": {"publish": ["x"]}, "name": "A"}, "headers": KEY}, 200),
                ("POST", "/v1/tokens", "/v1/tokens", {"json": {"sub": "a", "ttl": -1}, "headers": KEY}, 400),
                ("GET", "/v1/ice-servers", "/v1/ice-servers", {"headers": ident_guest}, 200),
                ("GET", "/v1/ice-servers", "/v1/ice-servers", {"headers": KEY}, 403),
                ("GET", "/health/live", "/health/live", {}, 200),
                ("GET", "/health/ready", "/health/ready", {}, 200),
            ]  # fmt: skip
            for method, template, url, kw, status in cases:
                if "json" in kw and status in (200, 201) and template != "/v1/publish":
                    validate(kw["json"], _request_schema(doc, template, method), doc)
                r = await c.request(method, url, **kw)
                assert r.status_code == status, (method, url, r.status_code, r.text)
                try:
                    validate(r.json(), _response_schema(doc, template, method, status), doc)
                except Invalid as exc:
                    raise AssertionError(
                        f"{method} {url} → {status}: {exc}\n{r.text[:500]}"
                    ) from None
            good = {
                "messages": [{"room": "a", "data": 1, "event": "e", "key": "k", "ephemeral": False}]
            }
            validate(good, _request_schema(doc, "/v1/publish", "POST"), doc)
            with pytest.raises(Invalid):
                validate(msgs, _request_schema(doc, "/v1/publish", "POST"), doc)
            # the batch answer mixes results and errors, each valid
            r = await c.post("/v1/publish", json=msgs, headers=KEY)
            kinds = [set(x) for x in r.json()["results"]]
            assert {"error"} in kinds and {"room", "ephemeral"} in kinds

            # 404 for unknown /v1 paths, 429 and 503 bodies are the Error schema too
            error = doc["components"]["schemas"]["Error"]
            validate((await c.get("/v1/nope")).json(), error, doc)

            async def down(*a: Any, **kw: Any) -> Any:
                raise BrokerError("down")

            monkeypatch.setattr(node.hub.broker, "publish", down)
            r = await c.post("/v1/rooms/a/messages", json={"data": 1}, headers=KEY)
            assert r.status_code == 503
            validate(r.json(), _response_schema(doc, "/v1/rooms/{room}/messages", "POST", 503), doc)
        finally:
            await node.hub.close_session(session)

    limited = await node_factory(api_rate=Rate(0.1, 1))
    async with httpx.AsyncClient(base_url=limited.url) as c:
        await c.get("/v1/rooms", headers=KEY)
        r = await c.get("/v1/rooms", headers=KEY)
        assert r.status_code == 429
        validate(r.json(), _response_schema(doc, "/v1/rooms", "GET", 429), doc)


def test_validator_rejects() -> None:
    doc = openapi.spec()
    schemas = doc["components"]["schemas"]
    bad = [
        ({"error": {"code": "nope", "message": "m", "details": {}}}, "Error"),
        ({"error": {"code": "internal", "message": "m"}}, "Error"),
        ({"room": "a", "offset": 0, "epoch": "e", "cursor": "c"}, "StoredResult"),
        ({"room": "a b", "ephemeral": True}, "EphemeralResult"),
        ({"rooms": [], "cursor": 5}, "Rooms"),
        ({"token": "t", "expires_at": 1.5}, "TokenResult"),
        ({"ice_servers": [{"urls": ["turn:x"], "username": "alice"}], "ttl": 1}, "IceServers"),
    ]
    for value, name in bad:
        with pytest.raises(Invalid):
            validate(value, schemas[name], doc)
