"""A small reconnect storm, end to end: ``hubbub bench --storm`` with 500 WebSocket clients on
node A, a private redis-server, node B taking them all when A drains (SIGTERM), an HTTP
publisher on B throughout. Every client must resume on B with ``recovered: true``, nothing lost
or duplicated, and no answer may claim a broker outage (``unavailable`` or 4003): Redis was up
the whole time. Speed is measured by the bench, not asserted here."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from hubbub.bench.storm import render_storm, run_storm, storm_ok
from tests.conftest import need_tool


def storm_args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = dict(subscribers=500, rooms=10, workers=1, pin=False, rate=50.0,
                                   storm_timeout=60.0)  # fmt: skip
    base.update(kw)
    return argparse.Namespace(**base)


def test_500_clients_follow_a_drain_with_nothing_lost() -> None:
    need_tool("redis-server")
    r = run_storm(storm_args())
    print(render_storm(r))
    assert r["resumed"] == r["clients"] == 500, r
    assert r["recovered"] == 500, r
    assert (r["lost"], r["duplicated"], r["gaps"]) == (0, 0, 0), r
    assert r["false_outages"] == 0, r
    assert r["errors"] == {}, r
    assert r["closes"] == {"4000": 500}, r  # each client was moved once, by the drain
    assert r["published"] > 0 and r["publish_failed"] == 0, r
    assert storm_ok(r)


def test_bench_storm_command_prints_the_figures() -> None:
    """``hubbub bench --storm --json`` as a user runs it (exit 0: the storm came out clean)."""
    need_tool("redis-server")
    out = subprocess.run(
        [sys.executable, "-m", "hubbub.cli", "bench", "--storm", "--subscribers", "100",
         "--rooms", "4", "--rate", "20", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    r = json.loads(out.stdout)
    assert r["clients"] == r["recovered"] == 100
    assert {"resume_p50_ms", "resume_p99_ms", "resume_last_ms", "storm_publish_p99_ms"} <= set(r)
