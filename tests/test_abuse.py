"""Mixed abuse, end to end, as a user runs it: ``hubbub bench --abuse --duration 15 --json`` on
two nodes and a private redis-server with the shipped limits. Every abuser holds an ordinary
token; the legitimate followers, members and publisher next to them must lose nothing and never
be disconnected, and every bound must hold (the run's ``violations``, exit status 0). The
10-minute run and its figures are in docs/security.md."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import need_tool


def test_fifteen_seconds_of_mixed_abuse_break_no_bound() -> None:
    need_tool("redis-server")
    out = subprocess.run(
        [sys.executable, "-m", "hubbub.cli", "bench", "--abuse", "--duration", "15", "--seed",
         "3", "--json"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    r = json.loads(out.stdout)
    assert out.returncode == 0 and r["violations"] == [], (r, out.stderr[-2000:])
    lg = r["legit"]
    assert lg["lost"] == 0 and lg["publishes"] > 100 and lg["publish_failed"] == 0, lg
    ab = r["abusers"]
    assert ab["churn"]["refused"].get("rate_limited", 0) > 0, ab["churn"]  # the budget spoke
    assert ab["flood"]["refused"].get("rate_limited", 0) > 0, ab["flood"]
    assert ab["conns"]["closes"].get("connect:4510", 0) > 0, ab["conns"]
    assert set(ab["revoked"]["closes"]) <= {"4509", "4501"}, ab["revoked"]
    assert ab["revoked"].get("opened", 0) == 0
    assert r["read_keys"]["persistent"] == 0 and r["ready_at_end"] == [200, 200]
