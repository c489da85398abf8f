"""Weak credentials stop start-up (hardening case 54): outside dev mode, a ``HUB_JWT_SECRET``
shorter than 32 bytes or an ``HUB_API_KEYS`` entry shorter than 16 characters is a ConfigError
that names the setting and never shows the value, from ``Settings.load``, from a Settings built
in code and from ``hubbub serve`` (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hubbub.app import create_app
from hubbub.hub.errors import ConfigError
from hubbub.hub.settings import Settings

HUBBUB = str(Path(sys.executable).parent / "hubbub")
WEAK_SECRET = "Weak-Secret-31-bytes-long-xxxxx"  # 31 bytes
WEAK_KEY = "Weak-Key-15char"  # 15 characters
GOOD_SECRET = "g" * 32
GOOD_KEY = "k" * 16


def test_lengths_of_the_samples() -> None:
    assert len(WEAK_SECRET.encode()) == 31 and len(WEAK_KEY) == 15


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"HUB_JWT_SECRET": WEAK_SECRET}, "HUB_JWT_SECRET"),
        ({"HUB_JWT_SECRET": "é" * 15}, "HUB_JWT_SECRET"),  # 30 bytes: counted in bytes
        ({"HUB_API_KEYS": WEAK_KEY}, "HUB_API_KEYS"),
        ({"HUB_API_KEYS": f"{GOOD_KEY},{WEAK_KEY}"}, "HUB_API_KEYS: key 2 of 2"),
        ({"HUB_JWT_SECRET": GOOD_SECRET, "HUB_API_KEYS": WEAK_KEY}, "HUB_API_KEYS"),
    ],
)
def test_weak_credentials_are_refused(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(env)
    message = str(info.value)
    assert named in message
    assert "value not shown" in message
    for value in env.values():
        for part in value.split(","):
            if part not in (GOOD_KEY, GOOD_SECRET):
                assert part not in message


def test_strong_enough_credentials_and_dev_mode_pass() -> None:
    s = Settings.load({"HUB_JWT_SECRET": GOOD_SECRET, "HUB_API_KEYS": f"{GOOD_KEY},{GOOD_KEY}x"})
    assert not s.dev_mode
    assert Settings.load({"HUB_JWT_SECRET": "é" * 16}).jwt_secret  # 32 bytes
    assert Settings.load({}).dev_mode  # nothing to be weak


def test_settings_built_in_code_are_checked_too() -> None:
    with pytest.raises(ConfigError, match="HUB_JWT_SECRET"):
        create_app(Settings(jwt_secret=WEAK_SECRET), handle_signals=False)
    with pytest.raises(ConfigError, match="HUB_API_KEYS"):
        Settings(api_keys=(WEAK_KEY,)).validate()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"HUB_JWT_SECRET": WEAK_SECRET}, "HUB_JWT_SECRET"),
        ({"HUB_API_KEYS": WEAK_KEY}, "HUB_API_KEYS"),
    ],
)
def test_serve_stops_naming_the_setting(env: dict[str, str], named: str) -> None:
    proc = subprocess.run(
        [HUBBUB, "serve", "--port", "0"],
        env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr
    assert "at least" in proc.stderr or "shorter" in proc.stderr
    assert "Traceback" not in proc.stderr
    for value in env.values():
        assert value not in proc.stderr + proc.stdout
