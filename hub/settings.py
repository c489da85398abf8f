"""Settings: one frozen object, read once at the edge (PROTOCOL.md §7).

Every field carries a :class:`~hub.specs.Spec` (kind, bounds, secret or not, help text with
units); the environment (``HUB_*``), the TOML file, the flags, validation and every error message
derive from it. Precedence: explicit overrides (CLI flags) > environment > TOML file > defaults
in code. A bad value raises :class:`~hub.errors.ConfigError` naming the variable and saying what
is expected, so start-up stops with a message an operator can act on; a secret's value is never
part of a message. An unknown ``HUB_*`` environment variable is logged (with the nearest known
name, never its value); an unknown key in the file is an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from hubbub.hub.errors import ConfigError
from hubbub.hub.room_options import RoomTable, parse_tables
from hubbub.hub.specs import SPEC, Kind, Spec, spec_of
from hubbub.hub.values import (
    GRANT_KINDS,
    Invalid,
    Rate,
    is_loopback_host,
    parse_bool,
    parse_grants,
    redact_url,
)

__all__ = ["GRANT_KINDS", "Rate", "Settings", "parse_grants"]

log = logging.getLogger("hubbub.settings")

DAY = 86400.0
YEAR = 365 * DAY
MIB = 1024 * 1024
JWT_ALGORITHMS = (
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
NOT_SETTINGS = ("HUB_CONFIG",)  # HUB_* variables read elsewhere
MIN_JWT_SECRET_BYTES = 32  # an HMAC key guessable offline from one token when shorter
MIN_API_KEY_CHARS = 16
WEBHOOK_EVENTS = (
    "room.occupied", "room.vacated", "member.joined", "member.left",
    "message.published", "user.connected", "user.disconnected",
)  # fmt: skip
DEFAULT_WEBHOOK_EVENTS = WEBHOOK_EVENTS[:4]


def _setting(default: Any, kind: Kind, help: str, **spec: Any) -> Any:
    """A Settings field with its Spec; ``default`` may be a zero-argument factory for
    mutable defaults (``factory=True``)."""
    factory = spec.pop("factory", False)
    meta = {SPEC: Spec(kind, help, **spec)}
    if factory:
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def _seconds(default: float, help: str, *, zero: bool = False, high: float = DAY) -> Any:
    """A duration in seconds: > 0 (``zero``: >= 0) and at most ``high``."""
    return _setting(default, Kind.FLOAT, help, unit="seconds", low=0, above=not zero, high=high)


def _count(default: int, help: str, *, low: int = 1, high: int, unit: str = "") -> Any:
    return _setting(default, Kind.INT, help, low=low, high=high, unit=unit)


def _not_empty(value: Any) -> None:
    if not value:
        raise Invalid("it must not be empty")


def _check_broker_url(url: str) -> None:
    scheme = url.split("://", 1)[0]
    if "://" not in url or scheme not in ("memory", "redis", "rediss"):
        raise ValueError("unknown scheme")
    try:
        query = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    except ValueError:
        raise Invalid("the URL cannot be parsed") from None
    for key, value in query:
        if key == "cluster":
            parse_bool(value)


def _check_webhook_urls(urls: tuple[str, ...]) -> None:
    for url in urls:
        try:
            parts = urlsplit(url)
        except ValueError:
            raise Invalid(f"{redact_url(url)!r} cannot be parsed") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Invalid(f"{redact_url(url)!r} is not an http:// or https:// URL")
    if len(set(urls)) != len(urls):
        raise Invalid("an endpoint is listed twice")


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of a node. Field ``foo`` is read from ``HUB_FOO``; see each field's Spec."""

    host: str = _setting("127.0.0.1", Kind.TEXT, "address to listen on", check=_not_empty,
                         expect="a host name or IP address")  # fmt: skip
    port: int = _count(8000, "TCP port to listen on (0: any free port)", low=0, high=65535)
    broker_url: str = _setting(
        "memory://", Kind.TEXT, "broker: memory:// (one process) or redis://… / rediss://…",
        check=_check_broker_url, show=lambda v: repr(redact_url(v)),
        expect="a memory://, redis://… or rediss://… URL (cluster=true or false, if given)",
    )  # fmt: skip
    redis_prefix: str = _setting("hubbub:", Kind.TEXT, "prefix of every Redis key and channel")
    jwt_secret: str | None = _setting(None, Kind.OPTIONAL_TEXT, "HMAC key for HS* tokens",
                                      secret=True)  # fmt: skip
    jwt_public_key: str | None = _setting(
        None, Kind.OPTIONAL_TEXT, "PEM public key, or the path of a PEM file, for RS/PS/ES/EdDSA"
    )
    jwt_jwks_file: str | None = _setting(None, Kind.OPTIONAL_TEXT, "path of a JWKS file")
    jwt_algorithms: tuple[str, ...] = _setting(
        ("HS256",), Kind.LIST, "accepted token algorithms", choices=JWT_ALGORITHMS,
        check=_not_empty,
    )  # fmt: skip
    jwt_audience: str | None = _setting(None, Kind.OPTIONAL_TEXT, "required aud claim")
    jwt_issuer: str | None = _setting(None, Kind.OPTIONAL_TEXT, "required iss claim")
    jwt_max_ttl: float = _seconds(86400.0, "longest accepted exp - now of a token", high=YEAR)
    api_keys: tuple[str, ...] = _setting((), Kind.LIST, "backend API keys", secret=True)
    # (_setting returns a dataclasses.field, which ruff's RUF009 cannot tell)
    default_grants: dict[str, tuple[str, ...]] = _setting(  # noqa: RUF009
        lambda: {k: ("*",) for k in GRANT_KINDS}, Kind.GRANTS,
        "grants of a token without a hub claim", factory=True,
    )  # fmt: skip
    allow_anonymous: bool | None = _setting(
        None, Kind.OPTIONAL_BOOL, "guests without a token (unset: only in dev mode)"
    )
    allowed_origins: tuple[str, ...] = _setting(
        (), Kind.LIST, "browser origins (exact or globs) besides the same origin"
    )
    history_size: int = _count(1000, "publications kept per room", high=10_000_000)
    history_ttl: float = _seconds(3600.0, "age limit of history (0: none)", zero=True, high=YEAR)
    ping_interval: float = _seconds(25.0, "WebSocket heartbeat interval")
    ping_timeout: float = _seconds(10.0, "time to answer a WebSocket ping")
    sse_ping_interval: float = _seconds(15.0, "SSE comment heartbeat interval")
    sse_retry_ms: int = _count(2000, "SSE retry hint", low=0, high=86_400_000,
                               unit="milliseconds")  # fmt: skip
    max_message_bytes: int = _count(65536, "largest publication data", high=64 * MIB,
                                    unit="bytes")  # fmt: skip
    max_queue: int = _count(1000, "queued outbound frames per session", high=10_000_000)
    max_queue_bytes: int = _count(4 * MIB, "queued outbound bytes per session",
                                  high=64 * 1024 * MIB, unit="bytes")  # fmt: skip
    max_reply_bytes: int = _count(
        MIB, "bytes of messages per history page and per replay page (a page holds at least "
        "one message)", high=64 * 1024 * MIB, unit="bytes",
    )  # fmt: skip
    max_subscriptions: int = _count(128, "rooms per session", high=100_000)
    max_connections_per_user: int = _count(100, "sessions per user (0: no limit)", low=0,
                                           high=10_000_000)  # fmt: skip
    client_publish_rate: Rate = _setting(  # noqa: RUF009
        Rate(20.0, 40.0), Kind.RATE, "publishes per session"
    )
    user_publish_rate: Rate = _setting(  # noqa: RUF009
        Rate(100.0, 200.0), Kind.RATE, "publishes and signals per user over all its sessions"
    )
    client_command_rate: Rate = _setting(  # noqa: RUF009
        Rate(50.0, 100.0), Kind.RATE,
        "client frames per session (every frame but ping and pong)",
    )  # fmt: skip
    rate_limit_grace: float = _seconds(
        10.0,
        "how long a session may keep being refused rate_limited before close 4005",
        high=3600.0,
    )
    api_rate: Rate = _setting(  # noqa: RUF009
        Rate(1000.0, 2000.0), Kind.RATE, "HTTP requests per API key or client IP"
    )
    signal_rooms: tuple[str, ...] = _setting(("call:*",), Kind.LIST, "call room patterns")
    signal_max_peers: int = _count(8, "presence members per call room", high=10_000)
    stun_urls: tuple[str, ...] = _setting((), Kind.LIST, "STUN URLs for ICE")
    turn_urls: tuple[str, ...] = _setting((), Kind.LIST, "TURN URLs for ICE")
    turn_secret: str | None = _setting(None, Kind.OPTIONAL_TEXT,
                                       "TURN REST shared secret", secret=True)  # fmt: skip
    turn_ttl: float = _seconds(3600.0, "lifetime of TURN credentials", high=DAY)
    shutdown_timeout: float = _seconds(30.0, "drain time on SIGTERM", zero=True)
    log_format: str = _setting("text", Kind.CHOICE, "log line format", choices=("text", "json"))
    log_level: str = _setting("info", Kind.CHOICE, "least severe level logged",
                              choices=("debug", "info", "warning", "error", "critical"))  # fmt: skip
    presence_ttl: float = _seconds(30.0, "life of a presence entry its node stops refreshing")
    auth_timeout: float = _seconds(10.0, "deadline of the WebSocket auth frame", high=3600)
    handshake_timeout: float = _seconds(10.0, "time to send HTTP request headers", high=3600)
    broker_timeout: float = _seconds(5.0, "deadline of each broker call", high=3600)
    handshake_concurrency: int = _count(
        64, "WebSocket handshakes (token check, upgrade, session) worked on at once (the rest "
        "wait their turn)", high=1_000_000,
    )  # fmt: skip
    admission_concurrency: int = _count(
        256, "sessions opening and subscriptions joining that do their broker work at once "
        "(the rest wait their turn)", high=1_000_000,
    )  # fmt: skip
    workers: int = _count(1, "worker processes (more than 1 needs Redis)", high=1024)
    backlog: int = _count(16384, "connections the listening socket queues before accepting "
                          "(the kernel caps it at net.core.somaxconn)", high=1_000_000)  # fmt: skip
    metrics_token: str | None = _setting(
        None, Kind.OPTIONAL_TEXT, "bearer token /metrics requires (unset: /metrics is open)",
        secret=True,
    )  # fmt: skip
    # Per-room options: only from [[rooms]] tables of the TOML file (hub.room_options).
    rooms: tuple[RoomTable, ...] = _setting(
        (), Kind.ROOMS, "per-room options: [[rooms]] tables of the --config file"
    )
    webhook_urls: tuple[str, ...] = _setting(
        (), Kind.LIST, "endpoints that receive webhook batches (POST)", check=_check_webhook_urls,
        expect="a comma-separated list of http:// or https:// URLs",
        show=lambda v: repr(",".join(redact_url(u) for u in v.split(","))),
    )  # fmt: skip
    webhook_secret: tuple[str, ...] = _setting(
        (), Kind.LIST, "HMAC key(s) signing webhooks: one, or two during a rotation", secret=True
    )
    webhook_events: tuple[str, ...] = _setting(
        DEFAULT_WEBHOOK_EVENTS, Kind.LIST, "event types sent to the webhook endpoints",
        choices=WEBHOOK_EVENTS,
    )  # fmt: skip
    webhook_timeout: float = _seconds(5.0, "deadline of one webhook request", high=600)
    webhook_max_age: float = _seconds(3600.0, "age after which an undelivered webhook is dropped")
    webhook_vacated_delay: float = _seconds(
        5.0, "time a room stays empty before room.vacated", zero=True, high=3600
    )

    # ---- derived -------------------------------------------------------------------------
    @property
    def dev_mode(self) -> bool:
        """No secret, public key, JWKS or API key: guests may use every room (PROTOCOL.md §2)."""
        return not (self.jwt_secret or self.jwt_public_key or self.jwt_jwks_file or self.api_keys)

    @property
    def anonymous(self) -> bool:
        """Guests may connect: the global setting, or a [[rooms]] table with anonymous = true
        (guests then use only the rooms that allow them, see hub.room_options)."""
        on = self.dev_mode if self.allow_anonymous is None else self.allow_anonymous
        return on or any(t.get("anonymous") is True for t in self.rooms)

    @property
    def largest_message_bytes(self) -> int:
        """``max_message_bytes`` of the room allowing the most (frame limits follow it)."""
        rooms = [int(t.get("max_message_bytes", 0)) for t in self.rooms]
        return max([self.max_message_bytes, *rooms])

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

        Raises ConfigError naming the variable on any bad input.
        """
        env = os.environ if env is None else env
        specs = {f.name: spec_of(f) for f in fields(cls)}
        raw: dict[str, tuple[str, Any]] = {}
        config_file = config_file or env.get("HUB_CONFIG")
        if config_file:
            raw.update(_read_file(config_file, specs))
        for key, value in env.items():
            if not key.startswith("HUB_") or key in NOT_SETTINGS:
                continue
            name = key[4:].lower()
            if name in specs:
                raw[name] = (key, value)
            else:
                log.warning("ignoring unknown environment variable %s%s", key, _hint(key))
        if "*" in (x.strip() for x in env.get("FORWARDED_ALLOW_IPS", "").split(",")):
            # uvicorn's own variable: with "*" behind a proxy that appends, any client chooses
            # the address that rate limits and logs see.
            log.warning("FORWARDED_ALLOW_IPS=* trusts X-Forwarded-For from every peer: any "
                        "client can choose its address; name your proxy's address(es) instead")  # fmt: skip
        for name, value in (overrides or {}).items():
            if name not in specs:
                raise ConfigError(f"unknown setting {name!r}")
            if value is not None:
                raw[name] = (f"--{name.replace('_', '-')}", value)
        values: dict[str, Any] = {}
        for name, (source, value) in raw.items():
            try:
                values[name] = specs[name].parse(value)
            except (ValueError, TypeError) as exc:
                raise ConfigError(specs[name].error(source, value, exc)) from None
        settings = cls(**values)
        settings.validate()
        # Key material too (a missing PEM file, a broken JWKS file): start-up stops with a
        # ConfigError naming the setting, not a traceback from deep inside the app factory.
        from hubbub.hub.auth import Authenticator

        Authenticator(settings)
        return settings

    def validate(self) -> None:
        """Check every field against its Spec, then the combinations; raises ConfigError."""
        for f in fields(self):
            spec, value = spec_of(f), getattr(self, f.name)
            try:
                spec.validate(value)
            except (ValueError, TypeError) as exc:
                raise ConfigError(spec.error(env_name(f.name), value, exc)) from None
        if self.workers > 1 and self.broker_url.startswith("memory:"):
            raise ConfigError(
                f"--workers {self.workers} needs a Redis broker (HUB_BROKER_URL=redis://…); "
                "memory:// keeps rooms inside one process"
            )
        if self.turn_urls and not self.turn_secret:
            raise ConfigError("HUB_TURN_SECRET is required when HUB_TURN_URLS is set")
        self._check_webhooks()
        self._check_strength()

    def _check_strength(self) -> None:
        """Outside dev mode, refuse credentials short enough to guess: a ``HUB_JWT_SECRET`` of
        fewer than 32 bytes (UTF-8) or an ``HUB_API_KEYS`` entry of fewer than 16 characters.
        The message names the setting (and the key's position), never the value."""
        if self.dev_mode:
            return
        if self.jwt_secret is not None and len(self.jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise ConfigError(
                f"HUB_JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes long "
                "(value not shown: it is secret); generate one with "
                "`openssl rand -hex 32`"
            )
        for i, key in enumerate(self.api_keys, 1):
            if len(key) < MIN_API_KEY_CHARS:
                raise ConfigError(
                    f"HUB_API_KEYS: key {i} of {len(self.api_keys)} is shorter than "
                    f"{MIN_API_KEY_CHARS} characters (value not shown: it is secret); "
                    "generate one with `openssl rand -hex 24`"
                )

    def _check_webhooks(self) -> None:
        """With ``HUB_WEBHOOK_URLS`` set, ``HUB_WEBHOOK_SECRET`` must hold one or two keys of at
        least 32 bytes each (dev mode too: receivers trust what it signs). Names the setting,
        never the value."""
        if not self.webhook_urls:
            return
        n = len(self.webhook_secret)
        if n == 0:
            raise ConfigError(
                "HUB_WEBHOOK_SECRET is required when HUB_WEBHOOK_URLS is set; generate one "
                "with `openssl rand -hex 32`"
            )
        if n > 2:
            raise ConfigError(
                f"HUB_WEBHOOK_SECRET holds {n} keys; at most 2 (the new one and the old one "
                "during a rotation) (value not shown: it is secret)"
            )
        for i, key in enumerate(self.webhook_secret, 1):
            if len(key.encode()) < MIN_JWT_SECRET_BYTES:
                raise ConfigError(
                    f"HUB_WEBHOOK_SECRET: key {i} of {n} must be at least "
                    f"{MIN_JWT_SECRET_BYTES} bytes long (value not shown: it is secret); "
                    "generate one with `openssl rand -hex 32`"
                )

    def check_serving(self) -> None:
        """:meth:`validate`, then refuse to serve dev mode (no secret, public key, JWKS or API key: anyone may use
        every room) on an address other than loopback; raises ConfigError. Every entry point
        that serves calls it: ``hubbub serve``, its ``--workers`` children and
        :func:`hubbub.create_app`. (A dev-mode app also refuses requests whose ``Host`` does
        not name loopback, for the bind the app cannot see.)"""
        self.validate()
        if self.dev_mode and not is_loopback_host(self.host):
            raise ConfigError(
                f"refusing to bind {self.host} in dev mode (no HUB_JWT_SECRET, public key, "
                "JWKS or API key configured): anyone could use every room. Configure "
                "credentials or bind 127.0.0.1."
            )


def env_name(name: str) -> str:
    """The environment variable of a field: ``port`` → ``HUB_PORT``."""
    return "HUB_" + name.upper()


def setting_names() -> list[str]:
    """Every setting's environment variable, in field order."""
    return [env_name(f.name) for f in fields(Settings)]


def _hint(key: str) -> str:
    close = difflib.get_close_matches(key.upper(), setting_names(), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _read_file(path: str, specs: Mapping[str, Spec]) -> dict[str, tuple[str, Any]]:
    """The settings of a TOML file (top level or a ``[hubbub]`` table), keyed by field name;
    keys may be written ``HUB_PORT`` or ``port``. Errors: an unknown key, a setting given
    twice (``HUB_PORT`` and ``port``: which one wins would be an accident of spelling), and a
    setting outside a ``[hubbub]`` table the file has (it would be ignored). No message
    repeats a value."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path!r}: {exc}") from None
    section = data.get("hubbub", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path!r}: [hubbub] must be a table")
    out: dict[str, tuple[str, Any]] = {}
    if section is not data:
        stray = [key for key in data if key not in ("hubbub", "rooms")]
        if stray:
            raise ConfigError(
                f"{stray[0]} in {path} is outside the [hubbub] table, where it would be "
                "ignored: move it under [hubbub] (or drop the [hubbub] header)"
            )
        if "rooms" in data:  # [[rooms]] beside a [hubbub] table
            out["rooms"] = (f"[[rooms]] in {path}", parse_tables(data["rooms"], path))
    for key, value in section.items():
        if key == "rooms":
            if "rooms" in out:
                raise ConfigError(f"{path} has [[rooms]] and [[hubbub.rooms]] tables: keep one")
            out["rooms"] = (f"[[rooms]] in {path}", parse_tables(value, path))
            continue
        name = key.lower().removeprefix("hub_")
        if name not in specs:
            raise ConfigError(f"unknown setting {key} in {path}{_hint(env_name(name))}")
        if name in out:
            first = out[name][0].removesuffix(f" in {path}")
            raise ConfigError(
                f"{env_name(name)} is set twice in {path}, as {first} and as {key}: keep one"
            )
        out[name] = (f"{key} in {path}", value)
    return out
