"""Parsers for the text values Hubbub reads from its configuration and URLs.

Each parser takes text and returns a typed value or raises ``ValueError`` with a short reason;
callers add the name of the setting or parameter (see :mod:`hub.settings`). This is the one place
that knows what counts as a boolean, a list, a rate or a set of grants.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

GRANT_KINDS = ("subscribe", "publish", "signal", "presence")


class Invalid(ValueError):
    """A value was refused for a reason worth showing to the operator (other ValueErrors, such
    as ``float("x")``'s, are Python's wording and are not shown)."""


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


def parse_bool(text: str) -> bool:
    """``1``/``true``/``yes``/``on`` → True; ``0``/``false``/``no``/``off`` or empty → False
    (case and surrounding blanks ignored); anything else raises ValueError."""
    low = text.strip().lower()
    if low in TRUE_WORDS:
        return True
    if low in FALSE_WORDS:
        return False
    raise Invalid("expected true or false")


def parse_csv(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` → ``("a", "b", "c")``: comma-separated, blanks trimmed, empties dropped."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket's parameters: ``rate`` tokens per second, at most ``burst`` saved up.

    ``rate == 0`` means no limit. An enabled rate has a burst of at least one token (else no
    request could ever pass)."""

    rate: float
    burst: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse ``<rate>/s[:<burst>]``; the burst defaults to ``max(rate, 1)``. ``0``, ``off``
        or empty mean off. Raises ValueError on anything else."""
        text = text.strip()
        if text in ("0", "off", ""):
            return cls(0.0, 0.0)
        head, _, burst_text = text.partition(":")
        if not head.endswith("/s"):
            raise Invalid("expected <rate>/s[:<burst>]")
        rate = float(head[:-2])
        burst = float(burst_text) if burst_text else max(rate, 1.0)
        out = cls(rate, burst)
        problem = out.problem()
        if problem:
            raise Invalid(problem)
        return out

    def problem(self) -> str | None:
        """Why these parameters are unusable, or None when they are fine."""
        if not (math.isfinite(self.rate) and math.isfinite(self.burst)):
            return "rate and burst must be finite"
        if self.rate < 0 or self.burst < 0:
            return "rate and burst must be >= 0"
        if self.rate > 0 and self.burst < 1:
            return "the burst must be at least 1"
        return None

    @property
    def enabled(self) -> bool:
        return self.rate > 0


def parse_grants(text: str) -> dict[str, tuple[str, ...]]:
    """Parse ``subscribe=a,b;publish=c`` into ``{"subscribe": ("a", "b"), ...}``; kinds not
    named get no patterns."""
    out: dict[str, tuple[str, ...]] = {k: () for k in GRANT_KINDS}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        kind, eq, patterns = part.partition("=")
        kind = kind.strip()
        if not eq or kind not in GRANT_KINDS:
            raise Invalid(f"unknown grant kind {kind!r}; expected one of {GRANT_KINDS}")
        out[kind] = parse_csv(patterns)
    return out


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs and error messages)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if not password:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a bind address: ``localhost``, an IPv4 or IPv6 literal, brackets
    allowed) names this machine's loopback interface only."""
    host = host.strip().lower().rstrip(".")
    if host == "localhost":
        return True
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def host_header_is_loopback(value: str | None) -> bool:
    """Whether an HTTP ``Host`` header names loopback: ``localhost``, ``127.0.0.1`` (any
    127.0.0.0/8 literal) or ``[::1]``, each with or without a port. Anything else, a missing
    header, or a malformed port is not."""
    if not value:
        return False
    value = value.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep:
            return False
        port = rest[1:] if rest.startswith(":") else rest
        if rest and not rest.startswith(":"):
            return False
        name = f"[{name}]"
    else:
        name, _, port = value.partition(":")
    if port and not (port.isdigit() and port.isascii() and int(port) <= 65535):
        return False
    if name == "localhost":
        return True
    if not name.startswith("["):
        try:  # only dotted IPv4 here; IPv6 literals need brackets in a Host header
            return ipaddress.IPv4Address(name).is_loopback
        except ValueError:
            return False
    return is_loopback_host(name)
