"""Mixed abuse, end to end: ``hubbub bench --abuse`` for 20 s on two nodes and a private
redis-server with the shipped limits. Every abuser holds an ordinary token; the legitimate
followers, members and publisher next to them must lose nothing and never be disconnected, and
every bound must hold (the run's ``violations``). The 10-minute run and its figures are in
docs/security.md."""

from __future__ import annotations

import json
import subprocess
import sys

from hubbub.bench.abuse import render_abuse, run_abuse
from tests.conftest import need_tool


def test_twenty_seconds_of_mixed_abuse_break_no_bound() -> None:
    need_tool("redis-server")
    r = run_abuse(20.0, seed=3)
    print(render_abuse(r))
    assert r["violations"] == [], r
    lg = r["legit"]
    assert lg["publishes"] > 100 and lg["publish_failed"] == 0, lg
    ab = r["abusers"]
    assert ab["churn"]["refused"].get("rate_limited", 0) > 0, ab["churn"]  # the budget spoke
    assert ab["flood"]["refused"].get("rate_limited", 0) > 0, ab["flood"]
    assert ab["conns"]["closes"].get("connect:4510", 0) > 0, ab["conns"]
    assert set(ab["revoked"]["closes"]) <= {"4509", "4501"}, ab["revoked"]
    assert r["read_keys"]["persistent"] == 0


def test_bench_abuse_command_prints_json() -> None:
    """``hubbub bench --abuse --json`` as a user runs it (exit 0: no bound was broken)."""
    need_tool("redis-server")
    out = subprocess.run(
        [sys.executable, "-m", "hubbub.cli", "bench", "--abuse", "--duration", "4", "--json"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    r = json.loads(out.stdout)
    assert out.returncode == 0, (r["violations"], out.stderr[-2000:])
    assert r["duration_s"] == 4 and r["legit"]["lost"] == 0
