"""Settings: one frozen object, read once at the edge (PROTOCOL.md §7).

Precedence: explicit overrides (CLI flags) > environment (``HUB_*``) > TOML file > defaults in
code. Every bad value raises :class:`~hub.errors.ConfigError` naming the variable and the value,
so start-up stops with a message an operator can act on.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hubbub.hub.errors import ConfigError

GRANT_KINDS = ("subscribe", "publish", "signal", "presence")


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket: ``rate`` tokens per second, at most ``burst`` saved up."""

    rate: float
    burst: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse ``<rate>/s[:<burst>]``; the burst defaults to the rate. ``0`` means off."""
        text = text.strip()
        if text in ("0", "off", ""):
            return cls(0.0, 0.0)
        head, _, burst_text = text.partition(":")
        if not head.endswith("/s"):
            raise ValueError("expected <rate>/s[:<burst>]")
        rate = float(head[:-2])
        burst = float(burst_text) if burst_text else max(rate, 1.0)
        if rate < 0 or burst < 0 or rate != rate or burst != burst:
            raise ValueError("rate and burst must be >= 0")
        return cls(rate, burst)

    @property
    def enabled(self) -> bool:
        return self.rate > 0


def parse_grants(text: str) -> dict[str, tuple[str, ...]]:
    """Parse ``subscribe=a,b;publish=c`` into ``{"subscribe": ("a", "b"), ...}``."""
    out: dict[str, tuple[str, ...]] = {k: () for k in GRANT_KINDS}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        kind, eq, patterns = part.partition("=")
        kind = kind.strip()
        if not eq or kind not in GRANT_KINDS:
            raise ValueError(f"unknown grant kind {kind!r}; expected one of {GRANT_KINDS}")
        out[kind] = tuple(p.strip() for p in patterns.split(",") if p.strip())
    return out


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of a node. Field ``foo`` is read from ``HUB_FOO``."""

    host: str = "127.0.0.1"
    port: int = 8000
    broker_url: str = "memory://"
    redis_prefix: str = "hubbub:"
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_jwks_file: str | None = None
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_max_ttl: float = 86400.0
    api_keys: tuple[str, ...] = ()
    default_grants: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {k: ("*",) for k in GRANT_KINDS}
    )
    allow_anonymous: bool | None = None
    allowed_origins: tuple[str, ...] = ()
    history_size: int = 1000
    history_ttl: float = 3600.0
    ping_interval: float = 25.0
    ping_timeout: float = 10.0
    sse_ping_interval: float = 15.0
    sse_retry_ms: int = 2000
    max_message_bytes: int = 65536
    max_queue: int = 1000
    max_queue_bytes: int = 4 * 1024 * 1024
    max_subscriptions: int = 128
    max_connections_per_user: int = 0
    client_publish_rate: Rate = Rate(20.0, 40.0)
    api_rate: Rate = Rate(1000.0, 2000.0)
    signal_rooms: tuple[str, ...] = ("call:*",)
    signal_max_peers: int = 8
    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = None
    turn_ttl: float = 3600.0
    shutdown_timeout: float = 30.0
    log_format: str = "text"
    log_level: str = "info"
    presence_ttl: float = 30.0
    auth_timeout: float = 10.0
    handshake_timeout: float = 10.0
    broker_timeout: float = 5.0
    workers: int = 1

    # ---- derived -------------------------------------------------------------------------
    @property
    def dev_mode(self) -> bool:
        """No secret, public key, JWKS or API key: guests may use every room (PROTOCOL.md §2)."""
        return not (self.jwt_secret or self.jwt_public_key or self.jwt_jwks_file or self.api_keys)

    @property
    def anonymous(self) -> bool:
        return self.dev_mode if self.allow_anonymous is None else self.allow_anonymous

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        config_file: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Build settings from a TOML file, the environment and overrides, validating each.

        Raises ConfigError naming the variable and the value on any bad input.
        """
        env = os.environ if env is None else env
        raw: dict[str, tuple[str, Any]] = {}
        config_file = config_file or env.get("HUB_CONFIG")
        if config_file:
            try:
                data = tomllib.loads(Path(config_file).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"config file {config_file!r}: {exc}") from None
            section = data.get("hubbub", data)
            for key, value in section.items():
                name = key.lower().removeprefix("hub_")
                raw[name] = (f"{key} in {config_file}", value)
        known = {f.name for f in fields(cls)}
        for key, value in env.items():
            if key.startswith("HUB_") and key != "HUB_CONFIG":
                name = key[4:].lower()
                if name in known:
                    raw[name] = (key, value)
        for name, value in (overrides or {}).items():
            if value is not None:
                raw[name] = (f"--{name.replace('_', '-')}", value)
        values: dict[str, Any] = {}
        for name, (source, value) in raw.items():
            if name not in known:
                raise ConfigError(f"unknown setting {source}={value!r}")
            values[name] = _convert(name, source, value)
        settings = cls(**values)
        settings.validate()
        # Key material too (a missing PEM file, a broken JWKS file): start-up stops with a
        # ConfigError naming the setting, not a traceback from deep inside the app factory.
        from hubbub.hub.auth import Authenticator

        Authenticator(settings)
        return settings

    def validate(self) -> None:
        """Cross-field checks; raises ConfigError."""

        def bad(var: str, value: Any, why: str) -> ConfigError:
            return ConfigError(f"HUB_{var.upper()}={value!r}: {why}")

        for name in ("port",):
            v = getattr(self, name)
            if not 0 <= v <= 65535:
                raise bad(name, v, "must be 0..65535")
        positive = (
            "history_size", "max_message_bytes", "max_queue", "max_subscriptions",
            "ping_interval", "ping_timeout", "sse_ping_interval", "jwt_max_ttl",
            "signal_max_peers", "turn_ttl", "presence_ttl", "auth_timeout", "broker_timeout",
            "max_queue_bytes", "workers",
        )  # fmt: skip
        for name in positive:
            v = getattr(self, name)
            if not v > 0:
                raise bad(name, v, "must be > 0")
        for name in ("history_ttl", "shutdown_timeout", "sse_retry_ms", "max_connections_per_user"):
            v = getattr(self, name)
            if v < 0:
                raise bad(name, v, "must be >= 0")
        if self.log_format not in ("text", "json"):
            raise bad("log_format", self.log_format, "must be text or json")
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise bad("log_level", self.log_level, "must be debug, info, warning or error")
        scheme = self.broker_url.split("://", 1)[0]
        if "://" not in self.broker_url or scheme not in ("memory", "redis", "rediss"):
            raise bad("broker_url", self.broker_url, "must be memory://, redis://… or rediss://…")
        allowed_algs = {
            "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
            "ES256", "ES384", "ES512", "EdDSA",
        }  # fmt: skip
        for alg in self.jwt_algorithms:
            if alg not in allowed_algs:
                raise bad("jwt_algorithms", ",".join(self.jwt_algorithms), f"unknown {alg!r}")
        if not self.jwt_algorithms:
            raise bad("jwt_algorithms", "", "needs at least one algorithm")
        if self.workers > 1 and scheme == "memory":
            raise ConfigError(
                f"--workers {self.workers} needs a Redis broker (HUB_BROKER_URL=redis://…); "
                "memory:// keeps rooms inside one process"
            )
        if self.turn_urls and not self.turn_secret:
            raise bad("turn_secret", None, "HUB_TURN_URLS is set, so HUB_TURN_SECRET is required")


def _convert(name: str, source: str, value: Any) -> Any:
    """Convert one raw value (string from env, or a TOML/flag value) to the field's type."""
    try:
        if name in ("api_keys", "allowed_origins", "signal_rooms", "stun_urls", "turn_urls"):
            return _csv(value) if isinstance(value, str) else tuple(str(v) for v in value)
        if name == "jwt_algorithms":
            return _csv(value) if isinstance(value, str) else tuple(str(v) for v in value)
        if name == "default_grants":
            if not isinstance(value, str):  # e.g. a TOML table: not the documented format
                raise ValueError("expected text like 'subscribe=a,b;publish=c'")
            return parse_grants(value)
        if name in ("client_publish_rate", "api_rate"):
            return value if isinstance(value, Rate) else Rate.parse(str(value))
        if name == "allow_anonymous":
            return value if isinstance(value, bool) else _bool(str(value))
        if name in (
            "port", "history_size", "max_message_bytes", "max_queue", "max_subscriptions",
            "max_connections_per_user", "signal_max_peers", "sse_retry_ms", "workers",
            "max_queue_bytes",
        ):  # fmt: skip
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            return int(value)
        if name in (
            "jwt_max_ttl", "history_ttl", "ping_interval", "ping_timeout", "sse_ping_interval",
            "turn_ttl", "shutdown_timeout", "presence_ttl", "auth_timeout", "handshake_timeout",
            "broker_timeout",
        ):  # fmt: skip
            f = float(value)
            if f != f or f in (float("inf"), float("-inf")):
                raise ValueError("must be finite")
            return f
        if name in ("jwt_secret", "jwt_public_key", "jwt_jwks_file", "jwt_audience",
                    "jwt_issuer", "turn_secret"):  # fmt: skip
            return str(value) or None
        return str(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}={value!r}: {exc}") from None
