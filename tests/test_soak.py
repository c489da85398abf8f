"""``hubbub soak``: the checker on hand-made logs, the seeded schedule, and a 60-second seeded
run on a real cluster (a private redis-server, two nodes behind the soak's proxies, every fault
kind) that must come out clean."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hubbub.bench.soak_check import check
from hubbub.bench.soak_faults import FAULT_KINDS, NODE_FAULTS, schedule
from tests.conftest import need_tool

ROOT = Path(__file__).resolve().parents[1]
E = "ep1"
ACKS = [{"room": "r", "epoch": E, "offset": o, "key": f"k{o}"} for o in range(1, 6)]
STORED = [{"epoch": E, "offset": o, "key": f"k{o}"} for o in range(1, 6)]
HISTORY = {"r": {"epoch": E, "messages": STORED}}


def life(
    events: list[list[Any]], since: list[Any] | None = None, final: bool = True
) -> dict[str, Any]:
    return {"client": "c0", "life": 0, "kind": "ws", "room": "r", "since": since,
            "final": final, "events": events}  # fmt: skip


def msgs(*offsets: int) -> list[list[Any]]:
    return [["msg", E, o] for o in offsets]


def rules(rep: Any) -> list[str]:
    return [v["rule"] for v in rep.violations]


def test_checker_passes_a_clean_run_and_a_covered_gap() -> None:
    assert check(ACKS, [life([["start", E, 0], *msgs(1, 2, 3, 4, 5)])], HISTORY).ok
    resumed = life([["gap", E, 3, 4], *msgs(5)], since=[E, 2])
    trimmed = {"r": {"epoch": E, "messages": [STORED[0], STORED[1], STORED[4]]}}
    rep = check(ACKS[:2] + ACKS[4:], [life([["start", E, 0], *msgs(1, 2)], final=False), resumed],
                trimmed)  # fmt: skip
    assert rep.ok, rep.violations
    assert rep.resumes == 1 and rep.deliveries == 3 and sum(rep.gaps.values()) == 1
    new_epoch = life([["start", E, 2], ["gap", "ep2", 1, 0]])
    assert check(ACKS[:2], [new_epoch], {"r": {"epoch": "ep2", "messages": []}}).ok


def test_checker_finds_a_duplicate() -> None:
    rep = check(ACKS, [life([["start", E, 0], *msgs(1, 2, 2, 3, 4, 5)])], HISTORY)
    assert rules(rep) == ["duplicate"] and rep.offending_clients() == {"c0"}


def test_checker_finds_a_missing_acknowledged_offset_without_gap() -> None:
    rep = check(ACKS, [life([*msgs(4, 5)], since=[E, 2])], HISTORY)
    assert rules(rep) == ["acknowledged offsets not delivered and no gap"]
    assert rep.violations[0]["offsets"] == [3]
    rep = check(ACKS, [life([["start", E, 0], *msgs(1, 2, 3)])], HISTORY)
    assert rules(rep) == ["acknowledged offsets never delivered by the end"]


def test_checker_finds_a_client_not_following_at_the_end() -> None:
    rep = check(ACKS, [life([["start", E, 0], *msgs(1, 2, 3, 4, 5)], final=False)], HISTORY)
    assert rules(rep) == ["not following at the end"]
    # Two rooms on one connection: each room's last life must be open at the end.
    other = {**life([["start", E, 0]], final=False), "room": "q"}
    rep = check(ACKS, [life([["start", E, 0], *msgs(1, 2, 3, 4, 5)]), other], HISTORY)
    assert rules(rep) == ["not following at the end"] and rep.violations[0]["room"] == "q"


def test_checker_finds_a_frame_of_a_room_not_subscribed_to() -> None:
    stray = life([["start", E, 0], ["stray", "q", "msg", E, 1], *msgs(1, 2, 3, 4, 5)])
    assert rules(check(ACKS, [stray], HISTORY)) == ["a frame of a room not subscribed to"]


def test_checker_finds_disorder_and_history_faults() -> None:
    rep = check(ACKS, [life([["start", E, 0], *msgs(1, 3, 2, 4, 5)])], HISTORY)
    assert "out of order" in rules(rep)
    twice = {"r": {"epoch": E, "messages": [*STORED, {"epoch": E, "offset": 6, "key": "k5"}]}}
    assert rules(check(ACKS, [], twice)) == ["idempotency key stored twice"]
    assert rules(check(ACKS, [], {"r": {"epoch": E, "messages": STORED[1:]}})) == [
        "acknowledged publication missing from history"
    ]


def test_checker_finds_a_gap_over_stored_publications() -> None:
    """A gap must cover only what is gone: offsets 3 and 4 are still in history."""
    resumed = life([["gap", E, 3, 4], *msgs(5)], since=[E, 2])
    rep = check(ACKS, [life([["start", E, 0], *msgs(1, 2)], final=False), resumed], HISTORY)
    assert rules(rep) == ["gap over publications still in history"]
    assert rep.violations[0]["stored"] == [3, 4]


def test_checker_presence_reply_must_list_the_subscriber() -> None:
    ok = life([["start", E, 0], ["presence", True, 2], ["join", "s2"], *msgs(1, 2, 3, 4, 5)])
    rep = check(ACKS, [ok], HISTORY)
    assert rep.ok and rep.presence_checks == 1 and rep.presence_events == 1
    bad = life([["start", E, 0], ["presence", False, 1], *msgs(1, 2, 3, 4, 5)])
    assert rules(check(ACKS, [bad], HISTORY)) == ["presence reply without the subscriber"]


def test_schedule_is_seeded_and_has_every_kind() -> None:
    a, b = schedule(7, 60, 2), schedule(7, 60, 2)
    assert a == b and a != schedule(8, 60, 2)
    assert {f.kind for f in a} == set(FAULT_KINDS)
    assert all(0 <= f.target < 2 for f in a if f.kind in NODE_FAULTS)
    assert all(-1 <= f.target < 2 for f in a if f.kind.startswith("proxy_"))
    only = schedule(7, 60, 2, {"pubsub_kill", "client_drop"})
    assert {f.kind for f in only} == {"pubsub_kill", "client_drop"}


def test_bad_arguments_get_a_clear_error() -> None:
    r = subprocess.run([sys.executable, "-m", "hubbub", "soak", "--nodes", "1"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)  # fmt: skip
    assert r.returncode == 2 and "--nodes must be between 2 and 16" in r.stderr
    r = subprocess.run([sys.executable, "-m", "hubbub", "soak", "--faults", "kill,meteor"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)  # fmt: skip
    assert r.returncode == 2 and "--faults takes 'all', 'none' or kinds among" in r.stderr
    r = subprocess.run([sys.executable, "-m", "hubbub", "soak", "--workers", "0"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)  # fmt: skip
    assert r.returncode == 2 and "--workers must be between 1 and 64" in r.stderr


@pytest.mark.timeout(300)
def test_soak_sixty_seconds_is_clean(tmp_path: Path) -> None:
    """Two nodes, every fault kind (node, Redis, proxy, client) at least once, seed 7."""
    need_tool("redis-server")
    out = tmp_path / "soak"
    argv = [sys.executable, "-m", "hubbub", "soak", "--duration", "60", "--seed", "7",
            "--nodes", "2", "--rooms", "4", "--clients", "12", "--rate", "40", "--out", str(out)]  # fmt: skip
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"soak did not finish: {exc.stdout!r} {exc.stderr!r}")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert all(summary["faults"][k] >= 1 for k in FAULT_KINDS), summary["faults"]
    assert summary["deliveries_checked"] > 0 and summary["resumes"] > 0
    assert summary["publishes"]["ws"] > 0 and summary["presence_checks"] > 0
    assert summary["workers"] == 2  # the followers ran in two load-generator processes
    assert summary["violations"] == 0 and "violations: 0" in r.stdout


def _children(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


@pytest.mark.timeout(90)
def test_sigterm_stops_every_process_of_the_soak(tmp_path: Path) -> None:
    """SIGTERM mid-run: the soak ends every task, then its follower workers, nodes and Redis,
    and exits 130."""
    need_tool("redis-server")
    argv = [sys.executable, "-m", "hubbub", "soak", "--duration", "60", "--nodes", "2",
            "--clients", "4", "--workers", "2", "--rate", "10", "--faults", "kill,client_drop",
            "--out", str(tmp_path / "soak")]  # fmt: skip
    p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        until_kids = time.monotonic() + 40
        kids: set[int] = set()
        while len(kids) < 5 and time.monotonic() < until_kids:  # Redis, two nodes, two workers
            kids |= _children(p.pid)
            time.sleep(0.2)
        assert len(kids) >= 5, kids
        time.sleep(2)
        kids |= _children(p.pid)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=40)
        assert p.returncode == 130 and "interrupted" in err, err
        # multiprocessing's resource tracker (a child too) ends once the soak is gone.
        until_gone = time.monotonic() + 10
        while (left := [k for k in kids if Path(f"/proc/{k}").exists()]) and (
            time.monotonic() < until_gone
        ):
            time.sleep(0.1)
        assert not left, left
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
