"""hubbub.webhooks.sign / verify (the receiver's side) and the webhook settings."""

from __future__ import annotations

import json

import pytest

from hubbub.hub.errors import ConfigError
from hubbub.hub.settings import Settings
from hubbub.webhooks import WebhookError, sign, signature, verify

OLD = "old-secret-0123456789abcdef0123456789abcdef"
NEW = "new-secret-0123456789abcdef0123456789abcdef"
BODY = json.dumps({"events": [{"id": "evt_1", "type": "room.occupied"}]}).encode()


def test_a_signed_body_verifies_and_decodes() -> None:
    header = sign([NEW], BODY, t=1_000_000)
    assert header == f"t=1000000,v1={signature(NEW, 1_000_000, BODY)}"
    doc = verify(NEW, {"Hubbub-Signature": header}, BODY, now=1_000_010)
    assert doc["events"][0]["id"] == "evt_1"
    # (name, value) pairs and any header case
    assert verify([NEW], [("hubbub-signature", header)], BODY, now=1_000_000)


def test_rotation_two_secrets_on_either_side() -> None:
    header = sign([NEW, OLD], BODY, t=5000)
    assert header.count("v1=") == 2
    assert verify([OLD], {"Hubbub-Signature": header}, BODY, now=5000)
    assert verify([NEW], {"Hubbub-Signature": header}, BODY, now=5000)
    only_old = sign([OLD], BODY, t=5000)
    assert verify([NEW, OLD], {"Hubbub-Signature": only_old}, BODY, now=5000)


@pytest.mark.parametrize(
    ("headers", "body", "now", "why"),
    [
        ({}, BODY, 5000, "no Hubbub-Signature"),
        ({"Hubbub-Signature": "v1=abc"}, BODY, 5000, "no timestamp"),
        ({"Hubbub-Signature": "t=5000"}, BODY, 5000, "no v1"),
        ({"Hubbub-Signature": "t=abc,v1=00"}, BODY, 5000, "bad timestamp"),
        ({"Hubbub-Signature": "garbage"}, BODY, 5000, "malformed"),
        ({"Hubbub-Signature": "t=5000,v1=" + "x" * 5000}, BODY, 5000, "too long"),
        (None, BODY + b" ", 5000, "no signature matches"),  # body changed after signing
        (None, BODY, 5000 + 301, "tolerance"),  # replayed too late
        (None, BODY, 5000 - 301, "tolerance"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(
    headers: dict[str, str] | None, body: bytes, now: float, why: str
) -> None:
    if headers is None:
        headers = {"Hubbub-Signature": sign([NEW], BODY, t=5000)}
    with pytest.raises(WebhookError, match=why) as info:
        verify([NEW], headers, body, now=now)
    assert NEW not in str(info.value)


def test_the_wrong_secret_and_a_body_that_is_not_a_batch_are_refused() -> None:
    header = sign([OLD], BODY, t=5000)
    with pytest.raises(WebhookError, match="no signature matches"):
        verify([NEW], {"Hubbub-Signature": header}, BODY, now=5000)
    body = b'{"not": "events"}'
    with pytest.raises(WebhookError, match="events"):
        verify([NEW], {"Hubbub-Signature": sign([NEW], body, t=5000)}, body, now=5000)
    with pytest.raises(WebhookError, match="no secret"):
        verify([], {"Hubbub-Signature": header}, BODY)


def test_settings_refuse_missing_short_or_extra_secrets_without_showing_them() -> None:
    url = {"HUB_WEBHOOK_URLS": "http://127.0.0.1:9/hooks"}
    with pytest.raises(ConfigError, match="HUB_WEBHOOK_SECRET is required"):
        Settings.load(url)
    with pytest.raises(ConfigError, match="at least 32 bytes") as info:
        Settings.load({**url, "HUB_WEBHOOK_SECRET": f"{NEW},short-one"})
    assert "short-one" not in str(info.value) and NEW not in str(info.value)
    with pytest.raises(ConfigError, match="at most 2"):
        Settings.load({**url, "HUB_WEBHOOK_SECRET": f"{NEW},{OLD},{NEW}x"})
    s = Settings.load({**url, "HUB_WEBHOOK_SECRET": f"{NEW},{OLD}"})
    assert s.webhook_secret == (NEW, OLD)
    assert s.webhook_events == ("room.occupied", "room.vacated", "member.joined", "member.left")
    assert (s.webhook_timeout, s.webhook_max_age, s.webhook_vacated_delay) == (5.0, 3600.0, 5.0)
    assert Settings.load({"HUB_WEBHOOK_SECRET": "x"}).webhook_urls == ()  # no URLs: unused


def test_settings_refuse_unknown_events_and_bad_urls() -> None:
    with pytest.raises(ConfigError, match=r"HUB_WEBHOOK_EVENTS.*'room\.opened' is not one"):
        Settings.load({"HUB_WEBHOOK_EVENTS": "room.occupied,room.opened"})
    with pytest.raises(ConfigError, match="HUB_WEBHOOK_URLS") as info:
        Settings.load({"HUB_WEBHOOK_URLS": "ftp://user:pw@host/x", "HUB_WEBHOOK_SECRET": NEW})
    assert "pw" not in str(info.value)
