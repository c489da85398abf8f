"""Signing and verifying Hubbub webhooks (the receiver's side: docs/webhooks.md).

A webhook request carries ``Hubbub-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>]`` where each
``v1`` is ``HMAC-SHA256(secret, "<t>." + raw body)`` in lower-case hex, one per configured
secret (two during a rotation). :func:`verify` accepts a request when any ``v1`` matches any of
the receiver's secrets (constant-time compare) and ``t`` lies within ``tolerance`` seconds of
the receiver's clock (the replay window).

This module uses the standard library only, so a receiver can import it with Hubbub's runtime
dependencies alone::

    from hubbub.webhooks import verify, WebhookError
    events = verify([secret], request.headers, raw_body)["events"]
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["SIGNATURE_HEADER", "WebhookError", "sign", "signature", "verify"]

SIGNATURE_HEADER = "Hubbub-Signature"
MAX_HEADER = 4096  # a longer signature header is refused before any parsing


class WebhookError(ValueError):
    """A request that is not a valid Hubbub webhook; the message says why (it never contains a
    secret)."""


def signature(secret: str | bytes, t: int, body: bytes) -> str:
    """``v1``: the hex HMAC-SHA256 of ``"<t>." + body`` under ``secret``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, str(int(t)).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secrets: Iterable[str | bytes], body: bytes, t: int | None = None) -> str:
    """The ``Hubbub-Signature`` header value for ``body``: ``t=<t>,v1=<hex>`` with one ``v1``
    per secret, in the order given. ``t`` defaults to now (unix seconds)."""
    t = int(time.time()) if t is None else int(t)
    parts = [f"t={t}"]
    parts.extend(f"v1={signature(s, t, body)}" for s in secrets)
    return ",".join(parts)


def _header(headers: Mapping[str, str] | Iterable[tuple[str, str]], name: str) -> str | None:
    """The value of header ``name`` (case-insensitive) from a mapping or (name, value) pairs."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    lower = name.lower()
    for key, value in items:
        k = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        if k.lower() == lower:
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None


def _parse(value: str) -> tuple[int, list[str]]:
    if len(value) > MAX_HEADER:
        raise WebhookError(f"{SIGNATURE_HEADER} is too long")
    t: int | None = None
    sigs: list[str] = []
    for item in value.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            raise WebhookError(f"{SIGNATURE_HEADER} is malformed")
        if key == "t":
            if not val.isdigit() or len(val) > 12:
                raise WebhookError(f"{SIGNATURE_HEADER} has a bad timestamp")
            t = int(val)
        elif key == "v1":
            sigs.append(val)
    if t is None:
        raise WebhookError(f"{SIGNATURE_HEADER} has no timestamp (t=)")
    if not sigs:
        raise WebhookError(f"{SIGNATURE_HEADER} has no v1 signature")
    return t, sigs


def verify(
    secrets: Iterable[str | bytes] | str | bytes,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    tolerance: float = 300,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a webhook request and return its decoded body (``{"events": [...]}``).

    ``secrets``: the receiver's secret, or several (accept either during a rotation).
    ``headers``: a mapping (looked up case-insensitively) or (name, value) pairs; ``body`` the
    raw request body, exactly as received. Raises :class:`WebhookError` when the header is
    missing or malformed, ``t`` is more than ``tolerance`` seconds away from ``now`` (default:
    the current time), no signature matches, or the body is not a JSON object with an
    ``events`` list. Every comparison of signatures is constant-time."""
    if isinstance(secrets, str | bytes):
        secrets = [secrets]
    keys = [s for s in secrets if s]
    if not keys:
        raise WebhookError("no secret to verify with")
    value = _header(headers, SIGNATURE_HEADER)
    if value is None:
        raise WebhookError(f"no {SIGNATURE_HEADER} header")
    t, sigs = _parse(value)
    current = time.time() if now is None else now
    if abs(current - t) > tolerance:
        raise WebhookError("timestamp outside the tolerance (replayed or clock skew)")
    expected = [signature(k, t, body).encode() for k in keys]
    ok = False
    for sig in sigs:
        given = sig.encode("ascii", "replace")
        for e in expected:  # no early exit: the time does not tell which one matched
            ok |= hmac.compare_digest(given, e)
    if not ok:
        raise WebhookError("no signature matches")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WebhookError("the body is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        raise WebhookError('the body is not {"events": [...]}')
    return doc
