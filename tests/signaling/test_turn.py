"""TURN REST credentials and the ICE server list (PROTOCOL.md §6, hardening case 45)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

from hubbub.hub.settings import Settings
from hubbub.signaling.turn import ice_servers, turn_credentials


def test_turn_credentials_follow_the_turn_rest_scheme() -> None:
    username, credential = turn_credentials("s3cret", "alice", 600, now=1_700_000_000)
    assert username == "1700000600:alice"
    expected = hmac.new(b"s3cret", b"1700000600:alice", hashlib.sha1).digest()
    assert base64.b64decode(credential) == expected
    # a user name with a colon stays intact after the expiry
    assert turn_credentials("s", "a:b", 1, now=10)[0] == "11:a:b"


def test_ice_servers_lists_stun_then_turn_without_the_secret() -> None:
    s = Settings(stun_urls=("stun:a:3478", "stun:b:3478"),
                 turn_urls=("turn:t:3478?transport=udp", "turns:t:5349"),
                 turn_secret="very-secret-turn-key", turn_ttl=900)  # fmt: skip
    before = int(time.time())
    out = ice_servers(s, "bob")
    assert out["ttl"] == 900
    assert out["ice_servers"][0] == {"urls": ["stun:a:3478", "stun:b:3478"]}
    turn = out["ice_servers"][1]
    assert turn["urls"] == ["turn:t:3478?transport=udp", "turns:t:5349"]
    expiry, _, sub = turn["username"].partition(":")
    assert sub == "bob" and before + 900 <= int(expiry) <= int(time.time()) + 900
    mac = hmac.new(b"very-secret-turn-key", turn["username"].encode(), hashlib.sha1).digest()
    assert turn["credential"] == base64.b64encode(mac).decode()
    assert "very-secret-turn-key" not in json.dumps(out)


def test_ice_servers_empty_and_stun_only() -> None:
    assert ice_servers(Settings(), "x") == {"ice_servers": [], "ttl": 3600}
    out = ice_servers(Settings(stun_urls=("stun:a",)), "x")
    assert out["ice_servers"] == [{"urls": ["stun:a"]}]
    # TURN URLs without a secret never produce unauthenticated TURN entries
    assert ice_servers(Settings(turn_urls=("turn:t",)), "x")["ice_servers"] == []
