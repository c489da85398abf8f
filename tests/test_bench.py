"""Smoke test of ``hubbub bench``: a tiny run with its own node, nothing lost, the JSON shape.

No timing assertions: speed is measured by the tool, not asserted by tests (DESIGN.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench(*extra: str) -> dict[str, object]:
    cmd = [sys.executable, "-m", "transports.cli", "bench", "--subscribers", "20",
           "--duration", "1", "--json", *extra]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("extra", [(), ("--transport", "sse", "--publish", "ws", "--rooms", "2")])
def test_bench_smoke(extra: tuple[str, ...]) -> None:
    r = _bench(*extra)
    assert r["lost"] == 0
    assert r["duplicated"] == 0
    assert r["disconnected"] == 0
    assert isinstance(r["published"], int) and r["published"] > 0
    workload = r["workload"]
    assert isinstance(workload, dict)
    assert workload["subscribers"] == 20 and workload["connected"] == 20
    expected = r["published"] * 20 // workload["rooms"]
    assert r["deliveries"] == expected
    latency = r["latency_ms"]
    assert isinstance(latency, dict) and set(latency) == {"p50", "p90", "p99", "max"}
    for key in ("deliveries_per_s", "server_rss_kib", "rss_per_connection_kib", "server_cpu_s",
                "deliveries_per_cpu_s", "publish_per_s"):  # fmt: skip
        assert isinstance(r[key], int | float), key
    loadgen = r["loadgen"]
    assert isinstance(loadgen, dict) and isinstance(loadgen["saturated"], bool)
    assert len(loadgen["cpu_percent"]) == loadgen["processes"]
    server = r["server"]
    assert isinstance(server, dict) and len(server["pids"]) == 1
