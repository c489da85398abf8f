"""``HUB_METRICS_TOKEN``: with it set, /metrics answers only ``Authorization: Bearer <it>``
(PROTOCOL.md §8, "Metrics"); unset, /metrics stays open. Real nodes on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import httpx

from hubbub.hub.settings import Settings

METRICS_TOKEN = "m3tr1cs-t0ken-for-the-scraper"


async def test_metrics_need_the_bearer_token(node_factory: Any) -> None:
    node = await node_factory(metrics_token=METRICS_TOKEN)
    async with httpx.AsyncClient(base_url=node.url) as h:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token"},
            {"Authorization": f"Basic {METRICS_TOKEN}"},
            {"Authorization": "Bearer"},
            {"Authorization": f"Bearer {METRICS_TOKEN}x"},
        ):
            r = await h.get("/metrics", headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["error"]["code"] == "unauthorized"
            assert METRICS_TOKEN not in r.text
        r = await h.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert r.status_code == 200 and "hubbub_connections" in r.text
        # health stays open for probes
        assert (await h.get("/health/live")).status_code == 200


async def test_metrics_open_without_a_token(node_factory: Any) -> None:
    node = await node_factory()
    async with httpx.AsyncClient(base_url=node.url) as h:
        r = await h.get("/metrics")
    assert r.status_code == 200 and "hubbub_" in r.text


def test_metrics_token_setting() -> None:
    s = Settings.load({"HUB_METRICS_TOKEN": METRICS_TOKEN, "HUB_JWT_SECRET": "x" * 32})
    assert s.metrics_token == METRICS_TOKEN
    assert Settings.load({}).metrics_token is None
