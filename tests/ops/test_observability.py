"""Metrics after real traffic, log redaction, readiness during a Redis outage and a drain
(issue #9; PROTOCOL.md §5 health/metrics, §7)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from hubbub.hub.settings import Rate
from tests.conftest import API_KEY, RedisProc, token
from tests.helpers import until
from tests.ops.harness import NodeProc, auth_headers
from tests.wsclient import WS

pytestmark = pytest.mark.timeout(60)


def samples(text: str) -> dict[str, float]:
    """Every sample of an exposition as ``name{labels}`` → value; fails on a malformed text."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


async def scrape(base: str) -> dict[str, float]:
    async with httpx.AsyncClient() as h:
        r = await h.get(base + "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


async def test_metrics_after_real_traffic(node_factory: Any) -> None:
    node = await node_factory(api_rate=Rate(0.0, 0.0))
    a = await WS.connect(node.ws_url, token("alice"))
    b = await WS.connect(node.ws_url, token("bob"))
    for c in (a, b):
        await c.result({"type": "subscribe", "room": "m"})
    for i in range(3):
        await a.result({"type": "publish", "room": "m", "data": {"i": i}})
    async with httpx.AsyncClient(base_url=node.url) as h:
        for i in range(2):
            r = await h.post("/v1/rooms/m/messages", json={"data": {"j": i}},
                             headers=auth_headers())  # fmt: skip
            assert r.status_code == 201
        assert (await h.get("/v1/rooms", headers={"Authorization": "Bearer nope"})).status_code
    for c in (a, b):
        assert len(await c.messages(5)) == 5
    # A refused token counts as an auth failure.
    bad = await websockets.connect(node.ws_url + "?token=not-a-jwt")
    with pytest.raises(websockets.ConnectionClosed):
        await bad.recv()

    m = await scrape(node.url)
    assert m['hubbub_connections{transport="ws"}'] == 2
    assert m['hubbub_connections{transport="sse"}'] == 0
    assert m["hubbub_subscriptions"] == 2
    assert m["hubbub_rooms"] == 1
    assert m['hubbub_publications_total{transport="ws"}'] == 3
    assert m['hubbub_publications_total{transport="http"}'] == 2
    assert m["hubbub_deliveries_total"] == 10
    assert m['hubbub_frames_sent_total{transport="ws"}'] >= 2 + 2 + 3 + 10  # welcome, replies…
    assert m['hubbub_bytes_sent_total{transport="ws"}'] > 10 * len('{"type":"message"}')
    assert m['hubbub_recoveries_total{result="live"}'] == 2
    assert m["hubbub_broker_publish_seconds_count"] == 5
    assert m['hubbub_broker_publish_seconds_bucket{le="+Inf"}'] == 5
    assert m["hubbub_delivery_lag_seconds_count"] == 5
    assert 0 <= m["hubbub_delivery_lag_seconds_sum"] < 5
    assert m["hubbub_auth_failures_total"] >= 2
    assert m["hubbub_broker_up"] == 1
    assert m["hubbub_draining"] == 0
    assert m[f'hubbub_node_info{{node="{node.hub.node_id}"}}'] == 1

    await a.close()
    await b.close()

    async def no_ws_connections() -> dict[str, float] | None:
        m = await scrape(node.url)
        return m if m['hubbub_connections{transport="ws"}'] == 0 else None

    m = await until(no_ws_connections, 5, "no WebSocket connection left")
    assert m["hubbub_subscriptions"] == 0
    assert m.get('hubbub_disconnects_total{code="1000"}', 0) == 2


async def test_readiness_during_drain(node_factory: Any) -> None:
    node = await node_factory()
    c = await WS.connect(node.ws_url, token("alice"))
    async with httpx.AsyncClient(base_url=node.url, timeout=5) as h:
        sse_lines: list[str] = []

        async def follow() -> None:
            headers = {"Authorization": f"Bearer {token('bob')}"}
            async with h.stream("GET", "/v1/rooms/r/events", headers=headers) as resp:
                async for line in resp.aiter_lines():
                    sse_lines.append(line)

        sse = asyncio.create_task(follow())
        await until(lambda: sse_lines, 5, "the first SSE line")
        assert (await h.get("/health/ready")).status_code == 200
        drain = asyncio.create_task(node.hub.drain(window=0.2))
        await asyncio.sleep(0)
        r = await h.get("/health/ready")
        assert r.status_code == 503, r.text
        assert (await h.get("/health/live")).status_code == 200
        code, frames = await c.closed()
        assert code == 4000
        assert frames[-1]["type"] == "disconnect" and frames[-1]["reconnect"] is True
        await asyncio.wait_for(sse, 5)  # the SSE stream ended too, after a final event
        assert any(ln.startswith("event: hub.") for ln in sse_lines), sse_lines  # the final one
        assert any(ln.startswith("retry:") for ln in sse_lines[1:]), sse_lines
        await drain
        m = await scrape(node.url)
        assert m["hubbub_draining"] == 1
        assert m['hubbub_disconnects_total{code="4000"}'] == 2  # one WebSocket, one SSE
        # No new sessions while draining: the newcomer is told to go elsewhere.
        late = await WS.connect(node.ws_url, token("bob"), welcome=False)
        code, frames = await late.closed()
        assert code == 4000 and frames[0]["type"] == "disconnect", frames


async def test_readiness_during_redis_outage(redis_proc: RedisProc, node_factory: Any) -> None:
    node = await node_factory(broker_url=redis_proc.url, broker_timeout=1.0)

    async with httpx.AsyncClient(base_url=node.url) as h:

        async def ready_is(want: int) -> bool:
            return (await h.get("/health/ready", timeout=5)).status_code == want

        await until(lambda: ready_is(200), 5, "ready 200")
        redis_proc.stop()
        await until(lambda: ready_is(503), 5, "ready 503 while Redis is down")
        assert (await h.get("/health/live")).status_code == 200  # alive, just not ready
        m = await scrape(node.url)
        redis_proc.start()
        await until(lambda: ready_is(200), 10, "ready 200 once Redis is back")
    assert m["hubbub_broker_up"] in (0, 1)  # the broker's own view may lag the probe

    async def metric(name: str) -> float:
        return (await scrape(node.url))[name]

    await until(lambda: metric("hubbub_broker_up"), 5, "hubbub_broker_up 1")
    # The pub/sub connection came back: the node caught its rooms up (docs/design.md, "The
    # brokers").
    await until(lambda: metric("hubbub_broker_resyncs_total"), 5, "a resync after the restart")


# ---- logs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_logs_never_show_tokens_or_keys(tmp_path: Path, fmt: str) -> None:
    node = NodeProc(tmp_path, env={"HUB_LOG_FORMAT": fmt, "HUB_LOG_LEVEL": "debug"}).start()
    try:
        await node.wait_live()
        jwt_ws, jwt_http, jwt_sse, jwt_hdr, jwt_ck = (token(u) for u in ("a", "b", "c", "d", "e"))
        bad = "SECRET-not-a-valid-token-0123456789"
        async with httpx.AsyncClient(base_url=node.url, timeout=5) as h:
            assert (await h.get(f"/v1/rooms/r/messages?token={jwt_http}")).status_code == 200
            await h.get(f"/v1/rooms/r/messages?token={bad}")
            await h.get("/v1/rooms", params={"key": API_KEY, "token": bad})
            await h.get("/v1/rooms", headers={"Authorization": f"Bearer {bad}"})
            await h.get("/v1/rooms", headers=auth_headers())
            async with h.stream("GET", f"/v1/rooms/r/events?token={jwt_sse}") as resp:
                assert resp.status_code == 200
        ok = await WS.connect(node.ws_url, jwt_ws)
        await ok.result({"type": "subscribe", "room": "r"})
        await ok.close()
        hdr = await WS.connect(
            node.ws_url, additional_headers={"Authorization": f"Bearer {jwt_hdr}"}
        )
        await hdr.close()
        cookie = await WS.connect(
            node.ws_url, additional_headers={"Cookie": f"hubbub_token={jwt_ck}"}
        )
        await cookie.close()
        refused = await websockets.connect(f"{node.ws_url}?token={bad}")
        with pytest.raises(websockets.ConnectionClosed):
            await refused.recv()
        with pytest.raises(websockets.InvalidStatus):  # 403 at the handshake, logged too
            await websockets.connect(f"{node.ws_url}?token={bad}", origin="http://evil.example")
        await asyncio.sleep(0.2)
    finally:
        node.signal(signal.SIGTERM)
        assert await node.wait_exit(10) == 0
    logs = node.logs()
    assert "/v1/ws" in logs and "/v1/rooms" in logs, logs  # access lines were logged …
    assert "[redacted]" in logs  # … with the query values scrubbed
    for secret in (jwt_ws, jwt_http, jwt_sse, jwt_hdr, jwt_ck, bad, API_KEY):
        assert secret not in logs, f"{secret[:12]}… leaked into the {fmt} logs:\n{logs}"
    if fmt == "json":
        lines = [ln for ln in logs.splitlines() if ln.strip()]
        for ln in lines:
            try:
                obj = json.loads(ln)  # one JSON object per line, nothing else on stderr
            except ValueError:
                raise AssertionError(f"not JSON: {ln!r}") from None
            assert {"ts", "level", "logger", "msg"} <= set(obj), obj
            assert "color_message" not in obj  # uvicorn's ANSI copy stays out
        # Session lines carry the context as fields: session id, user, transport.
        opened = [json.loads(ln) for ln in lines if '"session' in ln and "opened" in ln]
        assert any(o.get("user") == "a" and o.get("transport") == "ws" for o in opened), opened
        assert all(len(o["session"]) >= 16 for o in opened)
    else:
        assert " opened: user a via ws" in logs
