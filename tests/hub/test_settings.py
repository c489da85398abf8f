"""Settings (PROTOCOL.md §7): every variable from the environment, precedence, bad values, CLI."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest

from hubbub.hub.errors import ConfigError
from hubbub.hub.settings import GRANT_KINDS, Rate, Settings, parse_grants
from hubbub.hub.specs import Kind, spec_of

ROOT = Path(__file__).resolve().parents[2]
HUBBUB = str(Path(sys.executable).parent / "hubbub")

K1, K2, K3 = ("key-one-0123456789", "key-two-0123456789", "key-three-0123456789")

# Every variable of PROTOCOL.md §7 with a non-default value and the field value expected.
ENV_CASES: list[tuple[str, str, str, Any]] = [
    ("HUB_HOST", "0.0.0.0", "host", "0.0.0.0"),
    ("HUB_PORT", "9123", "port", 9123),
    ("HUB_BROKER_URL", "redis://example:6379/2", "broker_url", "redis://example:6379/2"),
    ("HUB_REDIS_PREFIX", "other:", "redis_prefix", "other:"),
    ("HUB_JWT_SECRET", "s3cret" * 6, "jwt_secret", "s3cret" * 6),
    ("HUB_JWT_PUBLIC_KEY", "{pem}", "jwt_public_key", "{pem}"),
    ("HUB_JWT_JWKS_FILE", "{jwks}", "jwt_jwks_file", "{jwks}"),
    ("HUB_JWT_ALGORITHMS", "HS256, RS256,EdDSA", "jwt_algorithms", ("HS256", "RS256", "EdDSA")),
    ("HUB_JWT_AUDIENCE", "hub-aud", "jwt_audience", "hub-aud"),
    ("HUB_JWT_ISSUER", "https://issuer.example", "jwt_issuer", "https://issuer.example"),
    ("HUB_JWT_MAX_TTL", "120", "jwt_max_ttl", 120.0),
    ("HUB_API_KEYS", f"{K1}, {K2},{K3}", "api_keys", (K1, K2, K3)),
    (
        "HUB_DEFAULT_GRANTS",
        "subscribe=chat:*,news;publish=chat:*",
        "default_grants",
        {"subscribe": ("chat:*", "news"), "publish": ("chat:*",), "signal": (), "presence": ()},
    ),
    ("HUB_ALLOW_ANONYMOUS", "true", "allow_anonymous", True),
    (
        "HUB_ALLOWED_ORIGINS",
        "https://a.example,https://*.b.example",
        "allowed_origins",
        ("https://a.example", "https://*.b.example"),
    ),
    ("HUB_HISTORY_SIZE", "50", "history_size", 50),
    ("HUB_HISTORY_TTL", "60", "history_ttl", 60.0),
    ("HUB_PING_INTERVAL", "5", "ping_interval", 5.0),
    ("HUB_PING_TIMEOUT", "2.5", "ping_timeout", 2.5),
    ("HUB_SSE_PING_INTERVAL", "7", "sse_ping_interval", 7.0),
    ("HUB_SSE_RETRY_MS", "500", "sse_retry_ms", 500),
    ("HUB_MAX_MESSAGE_BYTES", "1024", "max_message_bytes", 1024),
    ("HUB_MAX_QUEUE", "10", "max_queue", 10),
    ("HUB_MAX_REPLY_BYTES", "65536", "max_reply_bytes", 65536),
    ("HUB_MAX_SUBSCRIPTIONS", "3", "max_subscriptions", 3),
    ("HUB_MAX_CONNECTIONS_PER_USER", "4", "max_connections_per_user", 4),
    ("HUB_USER_PUBLISH_RATE", "5/s:10", "user_publish_rate", Rate(5.0, 10.0)),
    ("HUB_CLIENT_PUBLISH_RATE", "5/s:10", "client_publish_rate", Rate(5.0, 10.0)),
    ("HUB_API_RATE", "100/s", "api_rate", Rate(100.0, 100.0)),
    ("HUB_SIGNAL_ROOMS", "call:*,meet:*", "signal_rooms", ("call:*", "meet:*")),
    ("HUB_SIGNAL_MAX_PEERS", "2", "signal_max_peers", 2),
    ("HUB_STUN_URLS", "stun:stun.example:3478", "stun_urls", ("stun:stun.example:3478",)),
    ("HUB_TURN_URLS", "turn:turn.example:3478", "turn_urls", ("turn:turn.example:3478",)),
    ("HUB_TURN_SECRET", "turn-secret", "turn_secret", "turn-secret"),
    ("HUB_TURN_TTL", "600", "turn_ttl", 600.0),
    ("HUB_SHUTDOWN_TIMEOUT", "3", "shutdown_timeout", 3.0),
    ("HUB_LOG_FORMAT", "json", "log_format", "json"),
    ("HUB_LOG_LEVEL", "debug", "log_level", "debug"),
]


def test_defaults_match_protocol() -> None:
    s = Settings.load({})
    assert (s.host, s.port, s.broker_url, s.redis_prefix) == (
        "127.0.0.1",
        8000,
        "memory://",
        "hubbub:",
    )
    assert s.jwt_algorithms == ("HS256",)
    assert s.jwt_max_ttl == 86400
    assert s.default_grants == {k: ("*",) for k in GRANT_KINDS}
    assert (s.history_size, s.history_ttl) == (1000, 3600)
    assert (s.ping_interval, s.ping_timeout) == (25, 10)
    assert (s.sse_ping_interval, s.sse_retry_ms) == (15, 2000)
    assert (s.max_message_bytes, s.max_queue, s.max_subscriptions) == (65536, 1000, 128)
    assert s.max_connections_per_user == 100
    assert (s.max_queue_bytes, s.max_reply_bytes) == (4 * 1024 * 1024, 1024 * 1024)  # §8
    assert s.client_publish_rate == Rate(20.0, 40.0)
    assert s.user_publish_rate == Rate(100.0, 200.0)
    assert s.api_rate == Rate(1000.0, 2000.0)
    assert (s.signal_rooms, s.signal_max_peers) == (("call:*",), 8)
    assert (s.turn_ttl, s.shutdown_timeout, s.log_format, s.log_level) == (3600, 30, "text", "info")
    # No credentials: dev mode, and then guests are allowed.
    assert s.dev_mode and s.anonymous


@pytest.mark.parametrize(
    ("var", "text", "name", "expected"), ENV_CASES, ids=[c[0] for c in ENV_CASES]
)
def test_every_variable_is_read_from_env(
    var: str, text: str, name: str, expected: Any, tmp_path: Path
) -> None:
    if text in ("{pem}", "{jwks}"):  # key files are read at load: give real ones
        text = expected = _key_file(tmp_path, jwks=text == "{jwks}")
    env = {var: text}
    if var == "HUB_TURN_URLS":
        env["HUB_TURN_SECRET"] = "x"  # TURN URLs need a secret
    s = Settings.load(env)
    assert getattr(s, name) == expected


def _key_file(tmp_path: Path, *, jwks: bool) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    if jwks:
        path = tmp_path / "jwks.json"
        path.write_text('{"keys": [' + jwt.algorithms.ECAlgorithm.to_jwk(public) + "]}")
    else:
        path = tmp_path / "key.pem"
        pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        path.write_bytes(pem)
    return str(path)


def test_env_cases_cover_protocol_table() -> None:
    """Every HUB_ variable named in the project's docs/PROTOCOL.md §7 is a setting, and the
    cases above exercise each of the core ones."""
    import dataclasses
    import re

    protocol = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
    names = {c[0] for c in ENV_CASES}
    table = protocol.read_text().split("## 7.", 1)[1]
    listed = set(re.findall(r"`(HUB_[A-Z_]+)`", table))
    known = {f"HUB_{f.name.upper()}" for f in dataclasses.fields(Settings)} | {"HUB_CONFIG"}
    assert listed <= known, listed - known
    assert names <= known, names - known
    assert len(names) == 38


def test_api_keys_end_dev_mode_and_anonymous_can_be_forced() -> None:
    s = Settings.load({"HUB_API_KEYS": K1})
    assert not s.dev_mode and not s.anonymous
    s = Settings.load({"HUB_JWT_SECRET": "x" * 32, "HUB_ALLOW_ANONYMOUS": "yes"})
    assert not s.dev_mode and s.anonymous
    s = Settings.load({"HUB_ALLOW_ANONYMOUS": "false"})
    assert s.dev_mode and not s.anonymous


def test_precedence_overrides_env_file(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text(
        'HUB_PORT = 7001\nHUB_HOST = "10.0.0.1"\nhistory_size = 11\nHUB_LOG_LEVEL = "warning"\n'
    )
    only_file = Settings.load({}, config_file=str(cfg))
    assert (only_file.port, only_file.host, only_file.history_size) == (7001, "10.0.0.1", 11)

    env = {"HUB_PORT": "7002", "HUB_HOST": "10.0.0.2"}
    file_env = Settings.load(env, config_file=str(cfg))
    assert (file_env.port, file_env.host, file_env.history_size) == (7002, "10.0.0.2", 11)

    all3 = Settings.load(env, config_file=str(cfg), overrides={"port": 7003, "host": None})
    assert all3.port == 7003  # the flag wins
    assert all3.host == "10.0.0.2"  # an absent flag (None) does not override
    assert all3.log_level == "warning"  # the file still fills the rest


def test_config_file_from_env_and_hubbub_section(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[hubbub]\nHUB_MAX_QUEUE = 33\nsignal_rooms = ["call:*", "room:*"]\n')
    s = Settings.load({"HUB_CONFIG": str(cfg)})
    assert s.max_queue == 33
    assert s.signal_rooms == ("call:*", "room:*")


def _config_error(env: dict[str, str], *needles: str, **kw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.load(env, **kw)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ({"HUB_PORT": "abc"}, ("HUB_PORT", "abc")),
        ({"HUB_PORT": "70000"}, ("HUB_PORT", "70000")),
        ({"HUB_PORT": "-1"}, ("HUB_PORT", "-1")),
        ({"HUB_MAX_MESSAGE_BYTES": "-5"}, ("HUB_MAX_MESSAGE_BYTES", "-5")),
        ({"HUB_MAX_QUEUE": "0"}, ("HUB_MAX_QUEUE", "0")),
        ({"HUB_HISTORY_SIZE": "-1"}, ("HUB_HISTORY_SIZE", "-1")),
        ({"HUB_HISTORY_TTL": "-1"}, ("HUB_HISTORY_TTL", "-1")),
        ({"HUB_MAX_SUBSCRIPTIONS": "ten"}, ("HUB_MAX_SUBSCRIPTIONS", "ten")),
        ({"HUB_MAX_CONNECTIONS_PER_USER": "-2"}, ("HUB_MAX_CONNECTIONS_PER_USER", "-2")),
        ({"HUB_PING_INTERVAL": "-1"}, ("HUB_PING_INTERVAL", "-1")),
        ({"HUB_PING_TIMEOUT": "nan"}, ("HUB_PING_TIMEOUT", "nan")),
        ({"HUB_JWT_MAX_TTL": "inf"}, ("HUB_JWT_MAX_TTL", "inf")),
        ({"HUB_SSE_RETRY_MS": "1.5"}, ("HUB_SSE_RETRY_MS", "1.5")),
        ({"HUB_CLIENT_PUBLISH_RATE": "20/x"}, ("HUB_CLIENT_PUBLISH_RATE", "20/x")),
        ({"HUB_CLIENT_PUBLISH_RATE": "abc/s"}, ("HUB_CLIENT_PUBLISH_RATE", "abc/s")),
        ({"HUB_API_RATE": "-3/s"}, ("HUB_API_RATE", "-3/s")),
        ({"HUB_API_RATE": "10/s:x"}, ("HUB_API_RATE", "10/s:x")),
        ({"HUB_DEFAULT_GRANTS": "subscribe=*;admin=*"}, ("HUB_DEFAULT_GRANTS", "admin")),
        ({"HUB_DEFAULT_GRANTS": "subscribe"}, ("HUB_DEFAULT_GRANTS", "subscribe")),
        ({"HUB_BROKER_URL": "http://x"}, ("HUB_BROKER_URL", "http://x")),
        ({"HUB_BROKER_URL": "redis"}, ("HUB_BROKER_URL", "redis")),
        ({"HUB_BROKER_URL": "kafka://k:9092"}, ("HUB_BROKER_URL", "kafka://k:9092")),
        ({"HUB_JWT_ALGORITHMS": "HS256,none"}, ("HUB_JWT_ALGORITHMS", "none")),
        ({"HUB_JWT_ALGORITHMS": "NONE"}, ("HUB_JWT_ALGORITHMS", "NONE")),
        ({"HUB_JWT_ALGORITHMS": "hs256"}, ("HUB_JWT_ALGORITHMS", "hs256")),
        ({"HUB_JWT_ALGORITHMS": " , "}, ("HUB_JWT_ALGORITHMS",)),
        ({"HUB_ALLOW_ANONYMOUS": "maybe"}, ("HUB_ALLOW_ANONYMOUS", "maybe")),
        ({"HUB_LOG_FORMAT": "xml"}, ("HUB_LOG_FORMAT", "xml")),
        ({"HUB_LOG_LEVEL": "loud"}, ("HUB_LOG_LEVEL", "loud")),
        ({"HUB_TURN_URLS": "turn:t.example"}, ("HUB_TURN_SECRET",)),
        ({"HUB_SIGNAL_MAX_PEERS": "0"}, ("HUB_SIGNAL_MAX_PEERS", "0")),
    ],
    ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else "",
)
def test_bad_env_values_name_variable_and_value(
    env: dict[str, str], needles: tuple[str, ...]
) -> None:
    _config_error(env, *needles)


def test_workers_need_redis() -> None:
    msg = _config_error({}, "--workers 2", "memory://", overrides={"workers": 2})
    assert "redis" in msg.lower()
    assert Settings.load({"HUB_BROKER_URL": "redis://r/0"}, overrides={"workers": 2}).workers == 2


def test_bad_flag_value_names_the_flag() -> None:
    _config_error({}, "--port", "'x'", overrides={"port": "x"})


def test_unknown_variable_in_toml_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("HUB_PORT = 8001\nHUB_NOPE = 3\n")
    _config_error({}, "HUB_NOPE", str(cfg), config_file=str(cfg))
    # A misspelt key names the nearest setting and never echoes the value (it may be secret).
    cfg.write_text('HUB_JWT_SECRT = "hunter2-value"\n')
    msg = _config_error({}, "HUB_JWT_SECRT", "did you mean HUB_JWT_SECRET?", config_file=str(cfg))
    assert "hunter2" not in msg


def test_bad_values_in_toml_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('HUB_PORT = "eighty"\n')
    _config_error({}, "HUB_PORT", "eighty", config_file=str(cfg))
    cfg.write_text("HUB_MAX_QUEUE = true\n")
    _config_error({}, "HUB_MAX_QUEUE", "True", config_file=str(cfg))
    cfg.write_text("HUB_PORT = = 1\n")  # not TOML
    _config_error({}, str(cfg), config_file=str(cfg))
    _config_error({}, "missing.toml", config_file=str(tmp_path / "missing.toml"))


def test_env_value_overrides_a_bad_file_value(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text('HUB_PORT = "eighty"\n')
    assert Settings.load({"HUB_PORT": "81"}, config_file=str(cfg)).port == 81


def test_unknown_env_variables_are_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Other software may share the HUB_ prefix in the environment; only the file is strict.
    with caplog.at_level(logging.WARNING, logger="hubbub.settings"):
        s = Settings.load({"HUB_SOMETHING_ELSE": "1", "HUB_PING_INTERVALL": "secret-ish-value"})
    assert s.port == 8000 and s.ping_interval == 25
    text = caplog.text
    assert "HUB_SOMETHING_ELSE" in text and "HUB_PING_INTERVALL" in text
    assert "did you mean HUB_PING_INTERVAL?" in text
    assert "secret-ish-value" not in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hubbub.settings"):
        Settings.load({"HUB_CONFIG": "", "HUB_PORT": "1"})  # known names: no warning
    assert caplog.text == ""


def test_forwarded_allow_ips_star_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hubbub.settings"):
        Settings.load({"FORWARDED_ALLOW_IPS": "10.0.0.2, *"})
    assert "FORWARDED_ALLOW_IPS=*" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hubbub.settings"):
        Settings.load({"FORWARDED_ALLOW_IPS": "10.0.0.2,10.0.1.0/24"})
    assert caplog.text == ""


def test_rate_and_grants_parsers() -> None:
    assert Rate.parse("0") == Rate(0.0, 0.0) and not Rate.parse("off").enabled
    assert Rate.parse("2.5/s") == Rate(2.5, 2.5)
    assert Rate.parse("0.5/s") == Rate(0.5, 1.0)
    assert Rate.parse(" 20/s:40 ") == Rate(20.0, 40.0)
    for bad in ("20/x", "20", "/s", "20/s:-1", "nan/s"):
        with pytest.raises(ValueError):
            Rate.parse(bad)
    assert parse_grants("") == {k: () for k in GRANT_KINDS}
    assert parse_grants(" subscribe = a , b ; presence=c ;")["subscribe"] == ("a", "b")
    with pytest.raises(ValueError, match="unknown grant kind"):
        parse_grants("publish=*;owner=*")


# ---- CLI ---------------------------------------------------------------------------------------


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    base.update(env or {})
    return subprocess.run(
        [HUBBUB, *args], capture_output=True, text=True, timeout=30, env=base, cwd=ROOT
    )


def test_cli_serve_bad_port_flag() -> None:
    proc = _run(["serve", "--port", "abc"])
    assert proc.returncode != 0
    assert "--port" in proc.stderr and "abc" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_serve_bad_env_value() -> None:
    proc = _run(["serve", "--port", "0"], {"HUB_PING_INTERVAL": "-1"})
    assert proc.returncode != 0
    assert "HUB_PING_INTERVAL" in proc.stderr and "-1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_serve_workers_with_memory_broker() -> None:
    proc = _run(["serve", "--port", "0", "--workers", "2"])
    assert proc.returncode != 0
    assert "--workers 2" in proc.stderr and "memory://" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_serve_bad_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text("HUB_BOGUS = 1\n")
    proc = _run(["serve", "--port", "0", "--config", str(cfg)])
    assert proc.returncode != 0
    assert "HUB_BOGUS" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_token() -> None:
    secret = "cli-secret-0123456789abcdef0123456789"
    proc = _run(
        ["token", "--sub", "alice", "--subscribe", "X", "--ttl", "120"],
        {"HUB_JWT_SECRET": secret},
    )
    assert proc.returncode == 0, proc.stderr
    tok = proc.stdout.strip()
    claims = jwt.decode(tok, secret, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["hub"]["subscribe"] == ["X"]
    assert "publish" not in claims["hub"]
    assert 0 < claims["exp"] - claims["iat"] <= 120


def test_cli_token_without_secret_fails() -> None:
    proc = _run(["token", "--sub", "alice"])
    assert proc.returncode != 0
    assert "HUB_JWT_SECRET" in proc.stderr


def test_default_grants_not_text_in_toml_is_config_error(tmp_path: Path) -> None:
    # Regression: a TOML table here used to crash with AttributeError instead of ConfigError.
    cfg = tmp_path / "grants.toml"
    cfg.write_text('HUB_DEFAULT_GRANTS = {subscribe = ["*"]}\n')
    _config_error({}, "HUB_DEFAULT_GRANTS", "subscribe", config_file=str(cfg))
    cfg.write_text('HUB_DEFAULT_GRANTS = "subscribe=news;publish="\n')
    s = Settings.load({}, config_file=str(cfg))
    assert s.default_grants["subscribe"] == ("news",) and s.default_grants["publish"] == ()


def test_bad_key_files_are_config_errors_at_load(tmp_path: Path) -> None:
    _config_error(
        {"HUB_JWT_PUBLIC_KEY": str(tmp_path / "missing.pem"), "HUB_JWT_ALGORITHMS": "RS256"},
        "HUB_JWT_PUBLIC_KEY",
        "missing.pem",
    )
    jwks = tmp_path / "jwks.json"
    jwks.write_text("{broken")
    _config_error(
        {"HUB_JWT_JWKS_FILE": str(jwks), "HUB_JWT_ALGORITHMS": "RS256"},
        "HUB_JWT_JWKS_FILE",
        "jwks.json",
    )


def test_cli_serve_missing_public_key_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    proc = _run(
        ["serve", "--port", "0"], {"HUB_JWT_PUBLIC_KEY": missing, "HUB_JWT_ALGORITHMS": "RS256"}
    )
    assert proc.returncode != 0
    assert "HUB_JWT_PUBLIC_KEY" in proc.stderr and missing in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- the table of settings ------------------------------------------------------------------


def test_every_field_has_a_spec_with_bounds() -> None:
    """Each field carries its parsing and checks; every number is bounded on both sides."""
    for f in dataclasses.fields(Settings):
        spec = spec_of(f)  # KeyError: a field without a Spec
        assert spec.help, f.name
        assert spec.expected(), f.name
        if spec.kind in (Kind.INT, Kind.FLOAT):
            assert spec.low is not None and spec.high is not None, f.name
            assert math.isfinite(spec.high) and spec.low < spec.high, f.name
            assert spec.unit or spec.kind is Kind.INT, f"{f.name}: a float needs a unit"
        if f.name.endswith(("timeout", "interval")):
            assert (spec.low == 0 and spec.above) or f.name == "shutdown_timeout", f.name
        # The defaults pass their own checks.
        spec.validate(getattr(Settings(), f.name))
    secret = {f.name for f in dataclasses.fields(Settings) if spec_of(f).secret}
    assert secret == {"jwt_secret", "api_keys", "turn_secret", "metrics_token", "webhook_secret"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HUB_PORT": "abc"}, "HUB_PORT must be an integer from 0 to 65535 (got 'abc')"),
        ({"HUB_HANDSHAKE_TIMEOUT": "-1"}, "HUB_HANDSHAKE_TIMEOUT must be a number of seconds"),
        ({"HUB_HANDSHAKE_TIMEOUT": "0"}, "greater than 0"),
        ({"HUB_AUTH_TIMEOUT": "0"}, "HUB_AUTH_TIMEOUT must be"),
        ({"HUB_BROKER_TIMEOUT": "inf"}, "HUB_BROKER_TIMEOUT must be"),
        ({"HUB_PRESENCE_TTL": "0"}, "HUB_PRESENCE_TTL must be"),
        ({"HUB_SHUTDOWN_TIMEOUT": "-1"}, "HUB_SHUTDOWN_TIMEOUT must be a number of seconds from 0"),
        ({"HUB_TURN_TTL": "0"}, "HUB_TURN_TTL must be"),
        ({"HUB_JWT_MAX_TTL": "1e12"}, "HUB_JWT_MAX_TTL must be"),
        ({"HUB_WORKERS": "0"}, "HUB_WORKERS must be an integer from 1 to"),
        ({"HUB_MAX_QUEUE_BYTES": "0"}, "HUB_MAX_QUEUE_BYTES must be a whole number of bytes"),
        ({"HUB_MAX_REPLY_BYTES": "0"}, "HUB_MAX_REPLY_BYTES must be a whole number of bytes"),
        ({"HUB_MAX_MESSAGE_BYTES": "1e3"}, "HUB_MAX_MESSAGE_BYTES must be"),
        ({"HUB_SSE_RETRY_MS": "-1"}, "milliseconds"),
        ({"HUB_SIGNAL_MAX_PEERS": "1000000"}, "HUB_SIGNAL_MAX_PEERS must be"),
        ({"HUB_CLIENT_PUBLISH_RATE": "5/s:0.5"}, "the burst must be at least 1"),
        ({"HUB_API_RATE": "inf/s"}, "HUB_API_RATE must be a rate"),
        ({"HUB_HOST": ""}, "HUB_HOST must be a host name or IP address"),
        ({"HUB_BROKER_URL": "redis://r/0?cluster=maybe"}, "HUB_BROKER_URL must be"),
        ({"HUB_LOG_LEVEL": "loud"}, "HUB_LOG_LEVEL must be one of debug, info"),
        ({"HUB_ALLOW_ANONYMOUS": "maybe"}, "HUB_ALLOW_ANONYMOUS must be true or false"),
        ({"HUB_JWT_ALGORITHMS": "HS256,none"}, "'none' is not one of them"),
    ],
)
def test_refusals_say_what_is_expected(env: dict[str, str], message: str) -> None:
    msg = _config_error(env, message)
    assert "invalid literal" not in msg and "could not convert" not in msg


def test_toml_values_of_the_wrong_type(tmp_path: Path) -> None:
    cfg = tmp_path / "types.toml"
    for line, needle in [
        ("HUB_HOST = 5", "HUB_HOST in"),
        ("HUB_PING_INTERVAL = true", "HUB_PING_INTERVAL in"),
        ("HUB_API_KEYS = [1, 2]", "HUB_API_KEYS in"),
        ("HUB_PORT = 80.5", "HUB_PORT in"),
        ("HUB_API_RATE = 20", "HUB_API_RATE in"),
        ("[hubbub]\nHUB_ALLOW_ANONYMOUS = 1", "HUB_ALLOW_ANONYMOUS in"),
    ]:
        cfg.write_text(line + "\n")
        _config_error({}, needle, "must be", config_file=str(cfg))
    cfg.write_text('HUB_API_RATE = 0\nHUB_ALLOW_ANONYMOUS = "yes"\nHUB_PING_INTERVAL = 3\n')
    s = Settings.load({}, config_file=str(cfg))
    assert (s.api_rate.enabled, s.anonymous, s.ping_interval) == (False, True, 3.0)


def test_typed_settings_are_checked_by_validate() -> None:
    """Settings built in code (tests, embedding) pass through the same table."""
    for bad in ({"handshake_timeout": -1.0}, {"port": "80"}, {"max_queue": True},
                {"api_rate": Rate(5, 0.5)}, {"log_format": "xml"}, {"stun_urls": ["a"]}):  # fmt: skip
        with pytest.raises(ConfigError, match="must be"):
            Settings(**bad).validate()
    Settings(handshake_timeout=0.5, log_level="debug").validate()


SECRET_VALUE = "Sup3r-s3cret-value"


def test_no_error_message_contains_a_secret(tmp_path: Path) -> None:
    """A refused secret is named, never shown; nor is a password inside the broker URL."""
    cfg = tmp_path / "secrets.toml"
    cases = [
        f'HUB_JWT_SECRET = ["{SECRET_VALUE}"]',
        f'HUB_TURN_SECRET = {{ v = "{SECRET_VALUE}" }}',
        f'HUB_API_KEYS = ["{SECRET_VALUE}", 3]',
        f'HUB_API_KEYS = "{SECRET_VALUE}"\nHUB_JWT_SECRET = 7',
        f'HUB_TURN_SECRETS = "{SECRET_VALUE}"',
    ]
    for text in cases:
        cfg.write_text(text + "\n")
        msg = _config_error({}, config_file=str(cfg))
        assert SECRET_VALUE not in msg, msg
        assert "HUB_" in msg
    for overrides in ({"jwt_secret": ["x", SECRET_VALUE]}, {"api_keys": {SECRET_VALUE: 1}}):
        msg = _config_error({}, "value not shown", overrides=overrides)
        assert SECRET_VALUE not in msg
    with pytest.raises(ConfigError) as info:
        Settings(turn_secret=[SECRET_VALUE]).validate()  # type: ignore[arg-type]
    assert SECRET_VALUE not in str(info.value) and "HUB_TURN_SECRET" in str(info.value)
    url = f"redis://user:{SECRET_VALUE}@redis.example:6379/0?cluster=perhaps"
    msg = _config_error({"HUB_BROKER_URL": url}, "HUB_BROKER_URL", "redis.example")
    assert SECRET_VALUE not in msg and "***" in msg


def test_a_setting_given_twice_in_the_file_is_an_error(tmp_path: Path) -> None:
    # The long and the short name of one setting: neither silently wins.
    cfg = tmp_path / "twice.toml"
    cfg.write_text(
        'HUB_PORT = 8001\nport = 9\nHUB_JWT_SECRET = "hunter2-value-of-32-bytes-or-more!"\n'
    )
    msg = _config_error({}, "HUB_PORT is set twice", "HUB_PORT", "port", config_file=str(cfg))
    assert "8001" not in msg and " 9" not in msg
    cfg.write_text('[hubbub]\njwt_secret = "hunter2-value-of-32-bytes-or-more!"\n'
                   'HUB_JWT_SECRET = "hunter2-value-of-32-bytes-or-more!"\n')  # fmt: skip
    msg = _config_error({}, "HUB_JWT_SECRET is set twice", config_file=str(cfg))
    assert "hunter2" not in msg
    cfg.write_text(
        '[[rooms]]\npattern = "a:*"\n[hubbub]\nport = 1\n[[hubbub.rooms]]\npattern = "b:*"\n'
    )
    _config_error({}, "[[rooms]] and [[hubbub.rooms]]", config_file=str(cfg))


def test_a_setting_outside_the_hubbub_table_is_an_error(tmp_path: Path) -> None:
    # Top-level keys above a [hubbub] table used to be ignored without a word.
    cfg = tmp_path / "outside.toml"
    cfg.write_text("port = 9\n[hubbub]\nHUB_PORT = 8001\n")
    _config_error({}, "port in", "outside the [hubbub] table", config_file=str(cfg))
    cfg.write_text('[hubbub]\nport = 8001\n[[rooms]]\npattern = "chat:*"\nhistory_size = 5\n')
    s = Settings.load({}, config_file=str(cfg))
    assert s.port == 8001 and s.rooms[0].pattern == "chat:*"


def test_cli_serve_refuses_a_port_given_twice_in_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text("HUB_PORT = 8001\nport = 9\n")
    proc = _run(["serve", "--config", str(cfg)])
    assert proc.returncode == 2, proc
    assert "HUB_PORT is set twice" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_serve_warns_of_unknown_variables_in_the_log_format(tmp_path: Path) -> None:
    """The unknown-variable warning of ``hubbub serve`` is a line of the configured log format
    (one JSON object with HUB_LOG_FORMAT=json), and it comes before a start-up error it may
    explain: a misspelt secret leaves the node in dev mode, which refuses 0.0.0.0."""
    env = {"HUB_LOG_FORMAT": "json", "HUB_JWT_SECRT": "x" * 40, "HUB_API_KEYS": ""}
    proc = subprocess.Popen(
        [HUBBUB, "serve", "--port", "0"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("HUB_")}, **env},
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(30)
    line = json.loads(first)
    assert line["logger"] == "hubbub.settings" and line["level"] == "warning", line
    assert "HUB_JWT_SECRT" in line["msg"] and "did you mean HUB_JWT_SECRET?" in line["msg"]
    assert "xxxx" not in first
    refused = _run(["serve", "--host", "0.0.0.0", "--port", "0"], {"HUB_JWT_SECRT": "x" * 40})
    assert refused.returncode == 2
    lines = refused.stderr.splitlines()
    assert "HUB_JWT_SECRT" in lines[0] and "refusing to bind 0.0.0.0" in lines[1], lines
