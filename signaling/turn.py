"""ICE servers and TURN REST credentials (PROTOCOL.md §6, draft-uberti-behave-turn-rest-00).

A TURN server that shares ``HUB_TURN_SECRET`` with the hub (coturn: ``use-auth-secret`` and
``static-auth-secret``) accepts ``username = "<expiry unix seconds>:<sub>"`` with
``credential = base64(HMAC-SHA1(secret, username))`` until the expiry passes. The secret itself
never leaves the server: only derived, time-limited credentials are handed to clients.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

from hubbub.hub.auth import Identity
from hubbub.hub.session import Session
from hubbub.hub.settings import Settings


def turn_credentials(
    secret: str, sub: str, ttl: float, now: float | None = None
) -> tuple[str, str]:
    """``(username, credential)`` for ``sub``, valid for ``ttl`` seconds from ``now``."""
    expiry = int((time.time() if now is None else now) + ttl)
    username = f"{expiry}:{sub}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_servers(settings: Settings, sub: str, now: float | None = None) -> dict[str, Any]:
    """The ``{"ice_servers": [RTCIceServer…], "ttl"}`` object of PROTOCOL.md §6 for ``sub``.

    STUN URLs (``HUB_STUN_URLS``) come without credentials; TURN URLs (``HUB_TURN_URLS``) carry
    fresh TURN REST credentials. With no TURN secret configured no TURN entry is listed (settings
    validation already refuses TURN URLs without a secret).
    """
    servers: list[dict[str, Any]] = []
    if settings.stun_urls:
        servers.append({"urls": list(settings.stun_urls)})
    if settings.turn_urls and settings.turn_secret:
        username, credential = turn_credentials(settings.turn_secret, sub, settings.turn_ttl, now)
        servers.append(
            {"urls": list(settings.turn_urls), "username": username, "credential": credential}
        )
    return {"ice_servers": servers, "ttl": int(settings.turn_ttl)}


def may_get_ice(identity: Identity) -> bool:
    """Whether ``identity`` may receive ICE servers (and so TURN credentials): only one that
    holds a ``signal`` grant, for any room pattern. TURN relays media for calls; an identity that
    may join no call has no use for a relay and must not get one. API keys hold every grant."""
    return identity.api_key or bool(identity.grants.get("signal"))


def refresh_period(ttl: float) -> float:
    """Seconds between ``ice_servers`` pushes: the credentials' TTL minus a lead of 20 % (at
    most 5 minutes, at least 1 s or half the TTL), so a client always holds valid ones."""
    lead = max(min(300.0, ttl * 0.2), min(1.0, ttl / 2))
    return max(0.5, ttl - lead)


def arm_ice_refresh(
    session: Session, settings: Settings, clock: Callable[[], float] = time.time
) -> None:
    """Push an ``ice_servers`` frame ``{ice_servers, ttl}`` with fresh TURN credentials to
    ``session`` every :func:`refresh_period` (PROTOCOL.md §6: "sent before the credentials
    expire"); the first push comes one period after ``welcome``, which carried the first set.

    Does nothing without TURN (STUN entries never expire) or when the session's identity may
    not get ICE servers (:func:`may_get_ice`). Timers are plain ``call_later``
    handles (no task per session) and are cancelled when the session closes."""
    if not (settings.turn_urls and settings.turn_secret) or not may_get_ice(session.identity):
        return
    loop = asyncio.get_running_loop()
    period = refresh_period(settings.turn_ttl)
    timer: list[asyncio.TimerHandle] = []

    def push() -> None:
        if session.closed is not None:
            return
        fresh = ice_servers(settings, session.identity.sub, clock())
        session.send({"type": "ice_servers", **fresh})
        timer[0] = loop.call_later(period, push)

    timer.append(loop.call_later(period, push))
    session.on_close(lambda _reason: timer[0].cancel())
