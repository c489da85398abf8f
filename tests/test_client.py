"""The Python client (transports/client.py) end to end against a real node: publish over HTTP →
received by a hub session, an SSE subscriber and a WebSocket subscriber; retries that never
publish twice; the sync twin."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from hubbub.client import HubClient, HubClientError, SSEEvent, SyncHubClient, _parse_sse
from hubbub.hub.auth import Identity
from hubbub.hub.errors import BrokerError, Unavailable
from hubbub.hub.settings import Rate
from tests.conftest import API_KEY, token
from tests.helpers import until


@pytest.fixture
async def hub(node: Any) -> AsyncIterator[HubClient]:
    async with HubClient(node.url, api_key=API_KEY) as c:
        yield c


async def _first(it: AsyncIterator[Any], pred: Any, timeout: float = 10) -> Any:
    async def run() -> Any:
        async for item in it:
            if pred(item):
                return item
        return None

    try:
        return await asyncio.wait_for(run(), timeout)
    finally:
        await it.aclose()  # type: ignore[attr-defined]


async def test_publish_reaches_a_hub_session(node: Any, hub: HubClient) -> None:
    ident = Identity(sub="watcher", grants={"subscribe": ("*",)}, scope="sub:watcher")
    session = await node.hub.open_session(ident, "test")
    try:
        await node.hub.subscribe(session, "news")
        res = await hub.publish("news", {"headline": "hi"}, event="story")
        assert res["room"] == "news" and res["offset"] == 1
        frames: list[dict[str, Any]] = []
        while not frames:
            batch = await asyncio.wait_for(session.next_batch(), 5)
            frames = [x.decoded() for x in batch if not isinstance(x, str)]
        assert frames[0]["data"] == {"headline": "hi"} and frames[0]["event"] == "story"
        assert frames[0]["offset"] == 1
    finally:
        await node.hub.close_session(session)


async def test_publish_reaches_an_sse_subscriber(node: Any, hub: HubClient) -> None:
    start = (await hub.history("feed"))["cursor"]
    async with HubClient(node.url, token=token("reader")) as reader:
        stream = reader.subscribe_sse(["feed"], since=start)
        waiter = asyncio.create_task(_first(stream, lambda e: e.event == "update"))
        await asyncio.sleep(0.2)
        await hub.publish("feed", {"n": 1}, event="update")
        ev: SSEEvent = await waiter
    assert ev.data["data"] == {"n": 1} and ev.data["room"] == "feed" and ev.id


async def test_sse_subscriber_resumes_after_the_stream_ends(node_factory: Any) -> None:
    node = await node_factory(sse_retry_ms=100)
    async with (
        HubClient(node.url, api_key=API_KEY) as hub,
        HubClient(node.url, token=token("follower")) as follower,
    ):
        await hub.publish("story", 0)
        start = (await hub.history("story"))["cursor"]
        got: list[Any] = []

        async def follow() -> None:
            async for ev in follower.subscribe_sse("story", since=start):
                if ev.event == "message":
                    got.append(ev.data["data"])
                    if len(got) == 4:
                        return

        task = asyncio.create_task(follow())
        await hub.publish("story", 1)
        await until(lambda: got, 5, "the first event")
        # the server ends the stream (slow consumer: reconnect); meanwhile 2 and 3 are published
        sse = [s for s in node.hub.sessions.values() if s.transport == "sse"]
        assert len(sse) == 1
        sse[0].close(4001, "slow consumer")
        await hub.publish("story", 2)
        await hub.publish("story", 3)
        await asyncio.sleep(0.3)
        await hub.publish("story", 4)
        await asyncio.wait_for(task, 10)
        assert got == [1, 2, 3, 4]  # resumed with Last-Event-ID: no loss, no duplicate


async def test_sse_subscriber_raises_when_kicked(node: Any, hub: HubClient) -> None:
    async with HubClient(node.url, token=token("gone")) as user:

        async def read() -> None:
            async for _ in user.subscribe_sse(["x"]):
                pass

        task = asyncio.create_task(read())
        for _ in range(100):
            if await hub.disconnect("gone", reason="bye") == 1:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(HubClientError) as info:
            await asyncio.wait_for(task, 5)
        assert info.value.code == "closed 4509"


async def test_publish_reaches_a_websocket_subscriber(node: Any, hub: HubClient) -> None:
    start = (await hub.history("live"))["cursor"]
    async with HubClient(node.url, token=token("viewer")) as viewer:
        frames = viewer.subscribe_ws("live", since=start)
        waiter = asyncio.create_task(_first(frames, lambda f: f.get("type") == "message"))
        await asyncio.sleep(0.2)
        sent = await hub.publish("live", ["payload"])
        frame = await waiter
    assert frame["data"] == ["payload"] and frame["offset"] == sent["offset"]
    assert "from" not in frame  # published by a backend


async def test_websocket_subscriber_raises_when_kicked(node: Any, hub: HubClient) -> None:
    async with HubClient(node.url, token=token("kicked")) as user:
        frames = user.subscribe_ws("k")

        async def read() -> None:
            async for _ in frames:
                pass

        task = asyncio.create_task(read())
        for _ in range(100):
            if await hub.disconnect("kicked", reason="bye") == 1:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(HubClientError) as info:
            await asyncio.wait_for(task, 5)
        assert info.value.code == "closed 4509" and info.value.message == "bye"


async def test_every_call(node: Any, hub: HubClient) -> None:
    results = await hub.publish_many(
        [{"room": "a", "data": 1}, {"room": "bad room", "data": 2}, {"room": "b", "data": 3}]
    )
    assert results[0]["offset"] == 1 and results[1]["error"]["code"] == "bad_request"
    assert results[2]["room"] == "b"
    assert (await hub.publish("a", "eph", ephemeral=True)) == {"room": "a", "ephemeral": True}
    page = await hub.history("a", since=0, limit=10)
    assert [m["data"] for m in page["messages"]] == [1] and page["complete"] is True
    minted = await hub.token(
        "carol", 120, grants={"subscribe": ["*"], "presence": ["*"], "signal": ["call:*"]}, name="C"
    )
    assert minted["expires_at"] > time.time()
    assert (await hub.presence("a")) == {"members": [], "users": 0, "sessions": 0}
    assert (await hub.rooms())["cursor"] is None
    assert await hub.disconnect("nobody", reason="test") == 0
    revoked = await hub.revoke("nobody")
    assert revoked["sessions"] == 0 and revoked["revoked_before"] <= time.time()
    async with HubClient(node.url, token=minted["token"]) as carol:
        assert (await carol.ice_servers())["ice_servers"] == []
        assert (await carol.history("a"))["messages"][0]["data"] == 1
        with pytest.raises(HubClientError) as info:
            await carol.publish("a", 1)  # no publish grant
        assert info.value.status == 403 and info.value.code == "forbidden"
    async with HubClient(node.url, api_key="wrong") as bad:
        with pytest.raises(HubClientError) as info:
            await bad.rooms()
        assert info.value.status == 401 and info.value.code == "unauthorized"


async def test_retry_after_a_lost_answer_never_publishes_twice(
    node: Any, hub: HubClient, monkeypatch: Any
) -> None:
    real = node.hub.publish
    calls = 0

    async def flaky(*args: Any, **kw: Any) -> Any:
        # the first attempt publishes, then its answer is "lost" as a 503
        nonlocal calls
        calls += 1
        result = await real(*args, **kw)
        if calls == 1:
            raise Unavailable("broker unavailable", retry_after=0.1)
        return result

    monkeypatch.setattr(node.hub, "publish", flaky)
    res = await hub.publish("orders", {"id": 7})
    assert calls == 2 and res["offset"] == 1
    page = await hub.history("orders")
    assert [m["data"] for m in page["messages"]] == [{"id": 7}]


class LosesFirstAnswer(httpx.AsyncBaseTransport):
    """Forwards each request to the server, but drops the first answer: the request was
    processed, the client sees a network error and retries."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        await response.aread()
        self.sent += 1
        if self.sent == 1:
            raise httpx.ReadError("connection reset after the request was processed")
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_retry_after_a_network_error_never_publishes_twice(node: Any, hub: HubClient) -> None:
    lossy = LosesFirstAnswer()
    http = httpx.AsyncClient(base_url=node.url, transport=lossy)
    async with HubClient(node.url, api_key=API_KEY, http=http) as c:
        res = await c.publish("net", {"n": 1})
    assert lossy.sent == 2 and res["offset"] == 1
    lossy = LosesFirstAnswer()
    http = httpx.AsyncClient(base_url=node.url, transport=lossy)
    async with HubClient(node.url, api_key=API_KEY, http=http) as c:
        results = await c.publish_many([{"room": "net", "data": i} for i in (2, 3)])
    assert lossy.sent == 2 and [r["offset"] for r in results] == [2, 3]
    page = await hub.history("net")
    assert [m["data"] for m in page["messages"]] == [{"n": 1}, 2, 3]


async def test_batch_items_failing_temporarily_are_retried(
    node: Any, hub: HubClient, monkeypatch: Any
) -> None:
    real = node.hub.broker.publish
    failed: list[Any] = []

    async def flaky(room: str, body: bytes, **kw: Any) -> Any:
        if b'"data":"odd"' in body and not failed:  # the broker hiccups once, on one item
            failed.append("odd")
            raise BrokerError("connection reset")
        return await real(room, body, **kw)

    monkeypatch.setattr(node.hub.broker, "publish", flaky)
    results = await hub.publish_many([{"room": "bt", "data": d} for d in ("a", "odd", "b")])
    assert failed == ["odd"] and all("offset" in r for r in results)
    page = await hub.history("bt")
    assert sorted(m["data"] for m in page["messages"]) == ["a", "b", "odd"]


async def test_429_retry_honours_retry_after(node_factory: Any) -> None:
    node = await node_factory(api_rate=Rate(1, 1))
    async with HubClient(node.url, api_key=API_KEY) as c:
        await c.rooms()
        t = time.monotonic()
        await c.rooms()  # 429 Retry-After: 1, then success
        assert time.monotonic() - t >= 0.9
    async with HubClient(node.url, api_key=API_KEY, retries=0) as c:
        with pytest.raises(HubClientError) as info:
            await c.rooms()
            await c.rooms()
        assert info.value.status == 429 and info.value.code == "rate_limited"


async def test_sync_client(node: Any) -> None:
    def work() -> tuple[Any, ...]:
        with SyncHubClient(node.url, api_key=API_KEY) as c:
            first = c.publish("sync", {"v": 1}, key="same")
            again = c.publish("sync", {"v": 1}, key="same")
            many = c.publish_many([{"room": "sync", "data": 2}])
            page = c.history("sync")
            minted = c.token("sy", 60)
            with SyncHubClient(node.url, token=minted["token"]) as user:
                ice = user.ice_servers()
                presence = user.presence("sync")
            assert c.revoke("sy")["sessions"] == 0
            return first, again, many, page, c.rooms(), c.disconnect("sy"), ice, presence

    first, again, many, page, rooms, n, ice, presence = await asyncio.to_thread(work)
    assert first == again and many[0]["offset"] == 2
    assert [m["data"] for m in page["messages"]] == [{"v": 1}, 2]
    assert rooms == {"rooms": [], "cursor": None} and n == 0
    assert ice == {"ice_servers": [], "ttl": 3600} and presence["sessions"] == 0


async def test_sse_parser() -> None:
    lines = [": comment", "retry: 1500", "id: c1", "", "event: hub.gap", 'data: {"a":', "data: 1}",
             "id: c2", "", "data: not json", "", "data", "", "id: x\0y", "data: z", ""]  # fmt: skip

    async def gen() -> AsyncIterator[str]:
        for line in lines:
            yield line

    events = [e async for e in _parse_sse(gen())]
    assert events[0] == SSEEvent("message", "", "c1", 1500)
    assert events[1] == SSEEvent("hub.gap", {"a": 1}, "c2", None)
    assert events[2] == SSEEvent("message", "not json", None, None)
    assert events[3] == SSEEvent("message", "", None, None)
    assert events[4].id is None and events[4].data == "z"
