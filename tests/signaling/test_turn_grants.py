"""TURN credentials go to signalers only (hardening case 51): an identity without a ``signal``
grant gets no ``ice_servers`` in ``welcome``, no ``ice_servers`` frames and ``403`` from
``GET /v1/ice-servers``; ``HUB_TURN_TTL`` above one day stops start-up."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hubbub.hub.errors import ConfigError
from hubbub.hub.settings import Settings
from tests.conftest import token
from tests.wsclient import WS

TURN = {
    "stun_urls": ("stun:127.0.0.1:3478",),
    "turn_urls": ("turn:127.0.0.1:3478?transport=udp",),
    "turn_secret": "turn-shared-secret-0123456789abcdef",
}
NO_SIGNAL = {"subscribe": ["*"], "publish": ["*"], "presence": ["*"]}
SIGNALER = {**NO_SIGNAL, "signal": ["call:*"]}


async def test_no_ice_servers_without_a_signal_grant(node_factory: Any) -> None:
    node = await node_factory(**TURN, turn_ttl=1.0)
    guest = await WS.open(node.ws_url, "gus", hub=NO_SIGNAL)
    assert "ice_servers" not in guest.welcome
    caller = await WS.open(node.ws_url, "cal", hub=SIGNALER)
    assert [e["urls"] for e in caller.welcome["ice_servers"]] == [
        ["stun:127.0.0.1:3478"],
        ["turn:127.0.0.1:3478?transport=udp"],
    ]
    # the signaler's credentials are refreshed; the guest never gets a frame with them
    assert (await caller.next("ice_servers", 3))["ice_servers"][1]["username"].endswith(":cal")
    await guest.nothing("ice_servers", 1.2)
    async with httpx.AsyncClient(base_url=node.url) as http:
        r = await http.get(
            "/v1/ice-servers", headers={"Authorization": f"Bearer {token('gus', hub=NO_SIGNAL)}"}
        )
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "forbidden"
        assert TURN["turn_secret"] not in r.text and "credential" not in r.text
        r = await http.get(
            "/v1/ice-servers", headers={"Authorization": f"Bearer {token('cal', hub=SIGNALER)}"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["ice_servers"][1]["username"].endswith(":cal")


async def test_default_grants_without_signal_give_no_ice(node_factory: Any) -> None:
    grants = {"subscribe": ("*",), "publish": ("*",), "presence": ("*",)}
    node = await node_factory(**TURN, default_grants=grants)
    c = await WS.open(node.ws_url, "dee")  # a token without a hub claim
    assert "ice_servers" not in c.welcome


def test_turn_ttl_above_a_day_stops_start_up() -> None:
    assert Settings.load({"HUB_TURN_TTL": "86400"}).turn_ttl == 86400
    with pytest.raises(ConfigError) as info:
        Settings.load({"HUB_TURN_TTL": "86401"})
    assert "HUB_TURN_TTL" in str(info.value) and "86400" in str(info.value)
