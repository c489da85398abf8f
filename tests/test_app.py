"""The public Python API: ``from hubbub import create_app, Settings``; create_app() from the
environment, in-process publishing, start and shutdown without lifespan events, and the
signal drain (hubbub/drain.py)."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import orjson
import pytest

import hubbub
from hubbub import Settings, create_app
from hubbub.app import IN_PROCESS
from hubbub.drain import SignalDrain
from hubbub.hub.errors import BadRequest, ConfigError, Conflict, TooLarge
from tests.conftest import API_KEY, SECRET, make_settings


def test_public_names() -> None:
    assert set(hubbub.__all__) >= {"create_app", "Settings", "HubClient", "SyncHubClient"}
    assert hubbub.__version__
    with pytest.raises(AttributeError):
        _ = hubbub.nothing_here  # type: ignore[attr-defined]


def test_create_app_reads_and_checks_the_environment(monkeypatch: Any) -> None:
    for name in [n for n in os.environ if n.startswith("HUB_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HUB_JWT_SECRET", SECRET)
    monkeypatch.setenv("HUB_API_KEYS", API_KEY)
    monkeypatch.setenv("HUB_HISTORY_SIZE", "17")
    app = create_app(handle_signals=False)
    assert isinstance(app.settings, Settings) and app.settings.history_size == 17
    assert app.hub.settings is app.settings
    for name, value in (("HUB_HANDSHAKE_TIMEOUT", "-1"), ("HUB_PORT", "abc")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match=name):
            create_app(handle_signals=False)
        monkeypatch.delenv(name)


async def test_in_process_publish_starts_the_hub_and_checks_like_http() -> None:
    app = create_app(make_settings(), handle_signals=False)
    try:
        first = await app.publish("orders", {"n": 1}, event="order.created", key="k1")
        assert first["room"] == "orders" and first["offset"] == 1 and first["cursor"]
        assert await app.publish("orders", {"n": 1}, event="order.created", key="k1") == first
        with pytest.raises(Conflict):
            await app.publish("orders", {"n": 2}, event="order.created", key="k1")
        with pytest.raises(BadRequest):
            await app.publish("bad room", 1)
        with pytest.raises(BadRequest):
            await app.publish("orders", 1, event="hub.join")
        with pytest.raises(TooLarge):
            await app.publish("orders", "x" * (app.settings.max_message_bytes + 1))
        assert await app.publish("orders", 1, ephemeral=True) == {
            "room": "orders",
            "ephemeral": True,
        }
        page = orjson.loads(orjson.dumps(await app.hub.history(IN_PROCESS, "orders", limit=10)))
        assert [m["data"] for m in page["messages"]] == [{"n": 1}]
    finally:
        await app.shutdown()
    await app.shutdown()  # idempotent


async def test_signal_drain_runs_first_then_hands_the_signal_on() -> None:
    order: list[str] = []
    passed = asyncio.Event()

    def previous(signum: int, frame: Any) -> None:
        order.append(f"previous {signal.Signals(signum).name}")
        passed.set()

    async def drain() -> None:
        order.append("drain")
        await asyncio.sleep(0.05)

    old = signal.signal(signal.SIGTERM, previous)
    drainer = SignalDrain(drain)
    try:
        assert drainer.install()
        signal.raise_signal(signal.SIGTERM)
        await asyncio.wait_for(passed.wait(), 5)
        assert order == ["drain", "previous SIGTERM"]
        # A second signal goes straight on.
        signal.raise_signal(signal.SIGTERM)
        await asyncio.sleep(0.05)
        assert order[-1] == "previous SIGTERM" and order.count("drain") == 1
    finally:
        drainer.uninstall()
        assert signal.getsignal(signal.SIGTERM) == previous
        signal.signal(signal.SIGTERM, old)
