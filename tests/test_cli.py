"""The command line: every flag of every subcommand says what it takes, and ``hubbub token``
refuses lifetimes the hub would refuse."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from hubbub.cli import build_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every subcommand at every depth, by its full name (``rooms explain``)."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:  # argparse's only view of its subcommands
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = sub
                out.update({f"{name} {k}": v for k, v in _subparsers(sub).items()})
    return out


# Flags whose name says they take a time, a size or a rate: their help names the unit.
UNITS = {"duration": "second", "ttl": "second", "timeout": "second", "tolerance": "second",
         "settle": "second", "size": "bytes", "rate": "per second"}  # fmt: skip


def test_every_flag_has_a_help_text() -> None:
    subs = _subparsers(build_parser())
    assert {"serve", "token", "probe", "bench", "rooms explain", "webhooks listen"} <= set(subs)
    missing = [
        f"{name} {'/'.join(a.option_strings) or a.dest}"
        for name, sub in subs.items()
        for a in sub._actions
        if not isinstance(a, argparse._HelpAction) and not a.help
    ]
    assert not missing, missing
    no_unit = [
        f"{name} {'/'.join(a.option_strings)}: {a.help}"
        for name, sub in subs.items()
        for a in sub._actions
        for word, unit in UNITS.items()
        if a.option_strings and word in a.dest and unit not in str(a.help)
    ]
    assert not no_unit, no_unit


@pytest.mark.parametrize("ttl", ["999999", "-5", "0"])
def test_token_refuses_a_lifetime_the_hub_would_refuse(ttl: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hubbub", "token", "--sub", "a", "--ttl", ttl],
        env={"HUB_JWT_SECRET": "s" * 40, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2, out
    assert "HUB_JWT_MAX_TTL" in out.stderr and not out.stdout
