"""The browser client's unit tests (tests/js/*.test.mjs) under Node's own test runner.

``node --test tests/js/`` with the TAP reporter; the test fails when node exits non-zero or
when the summary shows no test at all (a runner that found nothing passes vacuously). Without
``node``: a failure in CI (``CI`` set), a skip elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JS_TESTS = ROOT / "tests" / "js"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def summary(tap: str) -> dict[str, int]:
    """The ``# tests N``, ``# pass N``, ``# fail N`` … lines of a TAP report."""
    return {k: int(v) for k, v in re.findall(r"^# (\w+) (\d+)\s*$", tap, re.MULTILINE)}


def test_summary_parsing() -> None:
    tap = "TAP version 13\nok 1 - a\n# tests 3\n# pass 2\n# fail 1\n# duration_ms 5.1\n"
    assert summary(tap) == {"tests": 3, "pass": 2, "fail": 1}
    assert summary("no summary here") == {}


def test_browser_client_unit_tests() -> None:
    node = shutil.which("node")
    if node is None:
        why = "node is not installed: the browser client's unit tests (tests/js) need Node 20+"
        if _in_ci():
            pytest.fail(why + " (required in CI)")
        pytest.skip(why)
    proc = subprocess.run(
        [node, "--test", "--test-reporter=tap", str(JS_TESTS) + os.sep],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    report = proc.stdout + proc.stderr
    counts = summary(proc.stdout)
    assert proc.returncode == 0, report[-6000:]
    assert counts.get("tests", 0) > 0, "node ran no JS test:\n" + report[-3000:]
    assert counts.get("pass", 0) == counts["tests"], report[-6000:]
