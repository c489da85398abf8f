"""Python client for backends and bots (PROTOCOL.md §3, §4, §5).

::

    async with HubClient("http://127.0.0.1:8000", api_key="…") as hub:
        await hub.publish("lobby", {"text": "hi"})
        async for event in hub.subscribe_sse(["lobby"]):
            print(event.event, event.data)

:class:`HubClient` is async (httpx), :class:`SyncHubClient` the same API without ``await``.
Requests answered 503 or 429 are retried after ``Retry-After`` (capped by ``max_delay``), as are
connection errors. Every publish carries an ``Idempotency-Key`` (generated when the caller gives
none), so a retry never publishes twice: the hub returns the first answer instead. Other errors
raise :class:`HubClientError` with the error body's ``code``, ``message`` and ``details``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson

RETRY_STATUSES = (429, 503)


class HubClientError(Exception):
    """An error answer of the hub: HTTP ``status`` plus the body's ``code``/``message``/``details``."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One Server-Sent Event. ``data`` is the parsed JSON when it parses, else the raw text."""

    event: str
    data: Any
    id: str | None = None
    retry: int | None = None


@dataclass(frozen=True, slots=True)
class _Req:
    method: str
    path: str
    params: list[tuple[str, str]] | None = None
    body: Any = None
    headers: Mapping[str, str] | None = None
    has_body: bool = False


def _room(room: str) -> str:
    return quote(room, safe="")


def _new_key() -> str:
    return uuid.uuid4().hex


def _retry_delay(response: httpx.Response | None, attempt: int, max_delay: float) -> float:
    """Seconds to wait: ``Retry-After`` when the hub sent it, else exponential backoff."""
    if response is not None:
        value = response.headers.get("retry-after", "")
        with contextlib.suppress(ValueError):
            return min(max_delay, max(0.0, float(value)))
    return min(max_delay, 0.1 * 2.0**attempt) * (0.5 + random.random() / 2)


def _temporary_failures(results: list[dict[str, Any]]) -> list[int]:
    """Indexes of batch items that failed for a passing reason (broker down, rate limit)."""
    codes = ("unavailable", "rate_limited")
    return [i for i, r in enumerate(results) if r.get("error", {}).get("code") in codes]


def _retry_items(req: _Req, indexes: list[int]) -> _Req:
    """The same batch request restricted to ``indexes``; the items keep their keys."""
    items = req.body["messages"]
    return _Req(req.method, req.path, body={"messages": [items[i] for i in indexes]},
                has_body=True)  # fmt: skip


def _result(response: httpx.Response) -> Any:
    if response.status_code < 400:
        return response.json()
    try:
        err = response.json()["error"]
        raise HubClientError(response.status_code, err["code"], err["message"], err.get("details"))
    except (ValueError, KeyError, TypeError):
        raise HubClientError(
            response.status_code, "internal", response.text[:200] or response.reason_phrase
        ) from None


class _Api:
    """Request building shared by the async and the sync client."""

    def __init__(self, base_url: str, api_key: str | None, token: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.client_token = token

    def _headers(self) -> dict[str, str]:
        bearer = self.api_key or self.client_token
        return {"Authorization": f"Bearer {bearer}"} if bearer else {}

    def _publish(
        self, room: str, data: Any, event: str | None, ephemeral: bool, key: str | None
    ) -> _Req:
        body: dict[str, Any] = {"data": data}
        if event is not None:
            body["event"] = event
        if ephemeral:
            body["ephemeral"] = True
        return _Req("POST", f"/v1/rooms/{_room(room)}/messages", body=body,
                    headers={"Idempotency-Key": key or _new_key()}, has_body=True)  # fmt: skip

    @staticmethod
    def _publish_many(messages: Iterable[Mapping[str, Any]]) -> _Req:
        items = []
        for m in messages:
            item = dict(m)
            item.setdefault("key", _new_key())  # a retried batch publishes nothing twice
            items.append(item)
        return _Req("POST", "/v1/publish", body={"messages": items}, has_body=True)

    @staticmethod
    def _history(room: str, since: Any, limit: int | None) -> _Req:
        params: list[tuple[str, str]] = []
        if since is not None:
            params.append(("since", str(since)))
        if limit is not None:
            params.append(("limit", str(limit)))
        return _Req("GET", f"/v1/rooms/{_room(room)}/messages", params=params)

    @staticmethod
    def _rooms(prefix: str, cursor: str | None, limit: int | None) -> _Req:
        params = [("prefix", prefix)] if prefix else []
        if cursor:
            params.append(("cursor", cursor))
        if limit is not None:
            params.append(("limit", str(limit)))
        return _Req("GET", "/v1/rooms", params=params)

    @staticmethod
    def _disconnect(user: str, reason: str | None, revoke: bool = False) -> _Req:
        body: dict[str, Any] = {"reason": reason} if reason is not None else {}
        if revoke:
            body["revoke"] = True
        return _Req("POST", f"/v1/users/{_room(user)}/disconnect", body=body, has_body=True)

    @staticmethod
    def _token(
        sub: str, ttl: float, grants: Mapping[str, list[str]] | None, name: str | None, info: Any
    ) -> _Req:
        body: dict[str, Any] = {"sub": sub, "ttl": ttl}
        if grants is not None:
            body["hub"] = dict(grants)
        if name is not None:
            body["name"] = name
        if info is not None:
            body["info"] = info
        return _Req("POST", "/v1/tokens", body=body, has_body=True)

    def _build(self, req: _Req) -> dict[str, Any]:
        headers = {**self._headers(), **(req.headers or {})}
        kw: dict[str, Any] = {"headers": headers, "params": req.params}
        if req.has_body:
            headers["Content-Type"] = "application/json"
            kw["content"] = orjson.dumps(req.body)
        return kw


class HubClient(_Api):
    """Async client. Use as ``async with HubClient(url, api_key=…) as hub:`` or call
    :meth:`aclose`. ``retries`` bounds the retries of one call on 503/429/connection errors."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        token: str | None = None,
        *,
        retries: int = 3,
        max_delay: float = 30.0,
        timeout: float = 10.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, api_key, token)
        self.retries = retries
        self.max_delay = max_delay
        self._http = http or httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, req: _Req) -> Any:
        kw = self._build(req)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await self._http.request(req.method, req.path, **kw)
            except httpx.TransportError:
                if last:
                    raise
                await asyncio.sleep(_retry_delay(None, attempt, self.max_delay))
                continue
            if response.status_code in RETRY_STATUSES and not last:
                await asyncio.sleep(_retry_delay(response, attempt, self.max_delay))
                continue
            return _result(response)
        raise AssertionError("unreachable")

    # ---- the API ---------------------------------------------------------------------------
    async def publish(
        self,
        room: str,
        data: Any,
        *,
        event: str | None = None,
        ephemeral: bool = False,
        key: str | None = None,
    ) -> dict[str, Any]:
        """Publish to ``room``: ``{room, offset, epoch, cursor}`` (ephemeral: ``{room,
        ephemeral}``). ``key`` is the Idempotency-Key; one is generated when None."""
        out: dict[str, Any] = await self._call(self._publish(room, data, event, ephemeral, key))
        return out

    async def publish_many(self, messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Publish ``[{room, data, event?, key?}, …]`` (≤ 1000); per-item results in order,
        each a publish result or ``{"error": {...}}``. Items that failed for a passing reason
        (``unavailable``, ``rate_limited``) are sent again, with the same keys, so they may land
        after items that followed them in the list."""
        req = self._publish_many(messages)
        results: list[dict[str, Any]] = (await self._call(req))["results"]
        for attempt in range(self.retries):
            todo = _temporary_failures(results)
            if not todo:
                break
            await asyncio.sleep(_retry_delay(None, attempt, self.max_delay))
            again = await self._call(_retry_items(req, todo))
            for i, res in zip(todo, again["results"], strict=True):
                results[i] = res
        return results

    async def history(
        self, room: str, *, since: Any = None, limit: int | None = None
    ) -> dict[str, Any]:
        """``{messages, cursor, epoch, more, complete}``; ``since`` is a cursor or an offset."""
        out: dict[str, Any] = await self._call(self._history(room, since, limit))
        return out

    async def presence(self, room: str) -> dict[str, Any]:
        out: dict[str, Any] = await self._call(_Req("GET", f"/v1/rooms/{_room(room)}/presence"))
        return out

    async def rooms(
        self, prefix: str = "", *, cursor: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = await self._call(self._rooms(prefix, cursor, limit))
        return out

    async def disconnect(self, user: str, reason: str | None = None) -> int:
        """Close every session of ``user`` (close 4509); returns how many there were."""
        return int((await self._call(self._disconnect(user, reason)))["sessions"])

    async def revoke(self, user: str, reason: str | None = None) -> dict[str, Any]:
        """Close every session of ``user`` (4509) and refuse, on every node, the user's tokens
        issued until now: ``{sessions, revoked_before}`` (Unix seconds; tokens with a later
        ``iat`` work)."""
        out: dict[str, Any] = await self._call(self._disconnect(user, reason, revoke=True))
        return out

    async def token(
        self,
        sub: str,
        ttl: float = 3600,
        *,
        grants: Mapping[str, list[str]] | None = None,
        name: str | None = None,
        info: Any = None,
    ) -> dict[str, Any]:
        """Mint a client token: ``{token, expires_at}`` (needs an API key)."""
        out: dict[str, Any] = await self._call(self._token(sub, ttl, grants, name, info))
        return out

    async def ice_servers(self) -> dict[str, Any]:
        """``{ice_servers, ttl}`` (needs a client token)."""
        out: dict[str, Any] = await self._call(_Req("GET", "/v1/ice-servers"))
        return out

    # ---- subscribers -------------------------------------------------------------------------
    async def subscribe_sse(
        self, rooms: str | Iterable[str], since: str | None = None, *, reconnect: bool = True
    ) -> AsyncIterator[SSEEvent]:
        """Events of one or more rooms over SSE (PROTOCOL.md §4), as :class:`SSEEvent`.

        When the stream ends (the server drains, the broker is down, a network error) it
        reconnects after the server's ``retry:`` hint with ``Last-Event-ID``, so nothing stored
        is lost. ``hub.expired`` is yielded and ends the iteration (get a new token); a
        ``hub.disconnect`` that says not to reconnect (kicked: 4509) raises
        :class:`HubClientError` with code ``"closed <code>"``. Pass ``reconnect=False`` to stop
        at the first end of stream instead.
        """
        names = [rooms] if isinstance(rooms, str) else list(rooms)
        last_id = since
        retry_ms = 2000
        attempt = 0
        while True:
            headers = {**self._headers(), "Accept": "text/event-stream"}
            params: list[tuple[str, str | int | float | bool | None]] = [("room", r) for r in names]
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            try:
                async with self._http.stream(
                    "GET", "/v1/events", params=params, headers=headers,
                    timeout=httpx.Timeout(10.0, read=None),
                ) as response:  # fmt: skip
                    if response.status_code != 200:
                        await response.aread()
                        _result(response)
                    attempt = 0
                    async for ev in _parse_sse(response.aiter_lines()):
                        if ev.retry is not None:
                            retry_ms = ev.retry
                        if ev.id is not None:
                            last_id = ev.id
                        if ev.event == "message" and ev.data == "":
                            continue  # a block without data (the opening `retry:`/`id:`)
                        if ev.event == "hub.disconnect":
                            info = ev.data if isinstance(ev.data, dict) else {}
                            if not info.get("reconnect", True):
                                code = info.get("code", 0)
                                raise HubClientError(
                                    0, f"closed {code}", str(info.get("reason", ""))
                                )
                            continue  # the stream ends; reconnect below with Last-Event-ID
                        yield ev
                        if ev.event == "hub.expired":
                            return
            except httpx.TransportError:
                if not reconnect:
                    raise
                attempt += 1
            if not reconnect:
                return
            await asyncio.sleep(min(self.max_delay, retry_ms / 1000 * (1 + min(attempt, 5))))

    async def subscribe_ws(
        self, room: str, since: Any = None, *, history: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Frames of one room over the WebSocket (PROTOCOL.md §3): ``message``, ``gap``,
        ``join``/``leave`` …, as dicts. Pings are answered. On a close code 4000-4499 it
        reconnects and resubscribes from the last position seen; on other closes it raises
        :class:`HubClientError` (or ends quietly on 1000)."""
        import websockets
        from websockets.exceptions import ConnectionClosed

        url = "ws" + self.base_url.removeprefix("http") + "/v1/ws"
        position = since
        attempt = 0
        while True:
            try:
                async with websockets.connect(
                    url, additional_headers=self._headers(), compression=None,
                    max_size=None, open_timeout=10,
                ) as ws:  # fmt: skip
                    frame: dict[str, Any] = {"type": "subscribe", "room": room, "id": 1}
                    if position is not None:
                        frame["since"] = position
                    elif history is not None:
                        frame["history"] = history
                    await ws.send(orjson.dumps(frame).decode())
                    async for raw in ws:
                        msg = orjson.loads(raw)
                        kind = msg.get("type")
                        if kind == "ping":
                            await ws.send('{"type":"pong"}')
                            continue
                        if kind == "error" and msg.get("id") == 1:
                            raise HubClientError(
                                0, msg.get("code", "internal"), msg.get("message", "")
                            )
                        if kind == "reply" and msg.get("id") == 1:
                            attempt = 0
                            continue
                        if kind == "message" and msg.get("offset") is not None:
                            position = {"epoch": msg.get("epoch"), "offset": msg["offset"]}
                        yield msg
            except ConnectionClosed as exc:
                rcvd = exc.rcvd
                code = rcvd.code if rcvd is not None else 1006
                if code == 1000:
                    return
                if not (4000 <= code < 4500 or code in (1001, 1006, 1011, 1012, 1013)):
                    reason = rcvd.reason if rcvd is not None else ""
                    raise HubClientError(0, f"closed {code}", reason) from None
            except OSError:
                pass
            attempt += 1
            await asyncio.sleep(
                min(self.max_delay, 0.2 * 2.0 ** min(attempt, 6)) * random.uniform(0.5, 1)
            )


async def _parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[SSEEvent]:
    """The SSE event-stream parser of the HTML standard (§9.2.6), on decoded lines."""
    event, ev_id, retry = "", None, None
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data or retry is not None or ev_id is not None:
                text = "\n".join(data)
                try:
                    value: Any = orjson.loads(text) if text else text
                except orjson.JSONDecodeError:
                    value = text
                yield SSEEvent(event or "message", value, ev_id, retry)
            event, data, ev_id, retry = "", [], None, None
            continue
        if line.startswith(":"):
            continue
        name, _, value_ = line.partition(":")
        value_ = value_.removeprefix(" ")
        if name == "event":
            event = value_
        elif name == "data":
            data.append(value_)
        elif name == "id" and "\0" not in value_:
            ev_id = value_
        elif name == "retry" and value_.isdigit():
            retry = int(value_)


class SyncHubClient(_Api):
    """The blocking twin of :class:`HubClient` (without the subscribers)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        token: str | None = None,
        *,
        retries: int = 3,
        max_delay: float = 30.0,
        timeout: float = 10.0,
        http: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, api_key, token)
        self.retries = retries
        self.max_delay = max_delay
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout)

    def __enter__(self) -> SyncHubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, req: _Req) -> Any:
        kw = self._build(req)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(req.method, req.path, **kw)
            except httpx.TransportError:
                if last:
                    raise
                time.sleep(_retry_delay(None, attempt, self.max_delay))
                continue
            if response.status_code in RETRY_STATUSES and not last:
                time.sleep(_retry_delay(response, attempt, self.max_delay))
                continue
            return _result(response)
        raise AssertionError("unreachable")

    def publish(
        self,
        room: str,
        data: Any,
        *,
        event: str | None = None,
        ephemeral: bool = False,
        key: str | None = None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = self._call(self._publish(room, data, event, ephemeral, key))
        return out

    def publish_many(self, messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        req = self._publish_many(messages)
        results: list[dict[str, Any]] = self._call(req)["results"]
        for attempt in range(self.retries):
            todo = _temporary_failures(results)
            if not todo:
                break
            time.sleep(_retry_delay(None, attempt, self.max_delay))
            again = self._call(_retry_items(req, todo))
            for i, res in zip(todo, again["results"], strict=True):
                results[i] = res
        return results

    def history(self, room: str, *, since: Any = None, limit: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = self._call(self._history(room, since, limit))
        return out

    def presence(self, room: str) -> dict[str, Any]:
        out: dict[str, Any] = self._call(_Req("GET", f"/v1/rooms/{_room(room)}/presence"))
        return out

    def rooms(
        self, prefix: str = "", *, cursor: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = self._call(self._rooms(prefix, cursor, limit))
        return out

    def disconnect(self, user: str, reason: str | None = None) -> int:
        return int(self._call(self._disconnect(user, reason))["sessions"])

    def revoke(self, user: str, reason: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = self._call(self._disconnect(user, reason, revoke=True))
        return out

    def token(
        self,
        sub: str,
        ttl: float = 3600,
        *,
        grants: Mapping[str, list[str]] | None = None,
        name: str | None = None,
        info: Any = None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = self._call(self._token(sub, ttl, grants, name, info))
        return out

    def ice_servers(self) -> dict[str, Any]:
        out: dict[str, Any] = self._call(_Req("GET", "/v1/ice-servers"))
        return out
