"""The soak's checker: reads every client life and the publishers' acknowledgements afterwards.

Inputs (plain JSON-able data, so hand-made logs test it):

* ``acks``: one ``{"room", "epoch", "offset", "key"}`` per publish answered ``201``;
* ``lives``: one dict per client life (one connection): ``client``, ``life``, ``kind``
  (``ws``/``sse``), ``room``, ``since`` (``[epoch, offset]`` it resumed from, or None),
  ``final`` (True when the life was still open at the end, after the settle time) and
  ``events``, in arrival order: ``["msg", epoch, offset]``, ``["gap", epoch, from, to]``,
  ``["start", epoch, offset]`` (the subscribe reply or the SSE first block);
* ``history``: room → ``{"epoch": the room's epoch, "messages": [{"epoch", "offset", "key"}, …]}``
  read from the history API at the end.

Rules (each breach is one violation naming the client life):

1. Within a life, per room: offsets of one epoch strictly increase (no duplicate, no disorder),
   and the epoch only changes through a ``gap`` naming the new epoch.
2. Between the life's start position (``since``, else its first ``start``) and each message
   or gap, every acknowledged offset of that epoch was received, or a ``gap`` covers it.
3. A life still open at the end received every acknowledged offset of its epoch after its
   position (the publishers had stopped and the settle time passed).
4. Every acknowledged publication is in history at its (epoch, offset) with its key, unless the
   room's epoch changed since; no idempotency key appears twice in history.
5. A presence member's subscribe reply lists its own session (``["presence", listed, n]``).
6. A ``gap`` covers only what is gone: none of its offsets is in history at the end in its
   epoch (the soak's history never trims or expires, so whatever history still holds at the
   end was there when the gap was sent, and the gap should have been those messages).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Report:
    """What the checker found: counts for the summary and the violations."""

    deliveries: int = 0
    lives: int = 0
    resumes: int = 0
    final_lives: int = 0
    gaps: Counter[str] = field(default_factory=Counter)
    unacked_skips: int = 0
    gap_log: list[dict[str, Any]] = field(default_factory=list)
    presence_checks: int = 0
    presence_events: int = 0
    violations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def offending_clients(self) -> set[str]:
        return {str(v["client"]) for v in self.violations if v.get("client") is not None}


AckIndex = dict[tuple[str, str], list[int]]


def index_acks(acks: list[dict[str, Any]]) -> AckIndex:
    """(room, epoch) → sorted acknowledged offsets."""
    by: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for a in acks:
        by[(a["room"], a["epoch"])].add(int(a["offset"]))
    return {k: sorted(v) for k, v in by.items()}


def _acked_between(idx: AckIndex, room: str, epoch: str | None, lo: int, hi: int) -> list[int]:
    """Acknowledged offsets ``lo < o < hi`` of (room, epoch)."""
    if epoch is None:
        return []
    return [o for o in idx.get((room, epoch), []) if lo < o < hi]


def check_life(life: dict[str, Any], idx: AckIndex, rep: Report) -> None:
    """Apply rules 1 to 3 to one life, adding to ``rep``."""
    room, who = life["room"], {"client": life["client"], "life": life["life"]}
    rep.lives += 1
    epoch: str | None = None
    pos = -1  # -1: no position yet
    if life.get("since") is not None:
        epoch, pos = life["since"][0], int(life["since"][1])
        rep.resumes += 1
    seen: set[tuple[str, int]] = set()

    def bad(rule: str, **details: Any) -> None:
        rep.violations.append({**who, "room": room, "rule": rule, **details})

    def skipped(upto: int) -> None:
        """Offsets pos+1 .. upto-1 of ``epoch`` were neither received nor covered by a gap."""
        if pos < 0 or upto <= pos + 1:
            return
        lost = _acked_between(idx, room, epoch, pos, upto)
        if lost:
            bad("acknowledged offsets not delivered and no gap", epoch=epoch, offsets=lost)
        else:
            rep.unacked_skips += 1

    for ev in life["events"]:
        kind = ev[0]
        if kind == "presence":
            rep.presence_checks += 1
            if not ev[1]:
                bad("presence reply without the subscriber", members=ev[2])
        elif kind in ("join", "leave"):
            rep.presence_events += 1
        elif kind == "stray":
            bad("a frame of a room not subscribed to", frame=ev[1:])
        elif kind == "start":
            if pos < 0:
                epoch, pos = ev[1], int(ev[2])
        elif kind == "msg":
            e, o = ev[1], int(ev[2])
            rep.deliveries += 1
            if (e, o) in seen:
                bad("duplicate", epoch=e, offset=o)
                continue
            seen.add((e, o))
            if pos < 0:
                epoch, pos = e, o
                continue
            if epoch is None:  # a bare position (an empty room's head): the first epoch seen
                epoch = e
            if e != epoch:
                bad("epoch changed without a gap", epoch=e, offset=o, previous=[epoch, pos])
                epoch, pos = e, o
                continue
            if o <= pos:
                bad("out of order", epoch=e, offset=o, after=pos)
                continue
            skipped(o)
            pos = o
        elif kind == "gap":
            e, lo, hi = ev[1], int(ev[2]), int(ev[3])
            rep.gap_log.append({**who, "room": room, "gap": [e, lo, hi], "after": [epoch, pos],
                                "acked_inside": len(_acked_between(idx, room, e, lo - 1, hi + 1))})  # fmt: skip
            if pos >= 0 and e == epoch:
                rep.gaps["trimmed or expired (same epoch)"] += 1
                skipped(lo)
                pos = max(pos, hi)
            else:
                rep.gaps["epoch change" if pos >= 0 else "resume point unknown"] += 1
                epoch, pos = e, hi
    if life.get("final"):
        rep.final_lives += 1
        if pos >= 0:
            lost = _acked_between(idx, room, epoch, pos, 1 << 62)
            if lost:
                bad("acknowledged offsets never delivered by the end", epoch=epoch,
                    offsets=lost[:50], position=pos)  # fmt: skip
        elif idx and any(k[0] == room for k in idx):
            bad("open at the end without a position")


def check_history(
    acks: list[dict[str, Any]], history: dict[str, dict[str, Any]], rep: Report
) -> None:
    """Rule 4: acknowledged publications are in history; no key is stored twice."""
    for room, h in history.items():
        items = h["messages"]
        keys = Counter(str(i.get("key")) for i in items)
        for key, n in keys.items():
            if n > 1:
                rep.violations.append({"client": None, "room": room, "rule":
                                       "idempotency key stored twice", "key": key, "times": n})  # fmt: skip
    stored = {
        (r, i["epoch"], int(i["offset"])): i.get("key")
        for r, h in history.items()
        for i in h["messages"]
    }
    for a in acks:
        room, at = a["room"], (a["room"], a["epoch"], int(a["offset"]))
        if at in stored:
            if stored[at] != a["key"]:
                rep.violations.append({"client": None, "room": room, "rule":
                                       "history holds another publication at an acknowledged offset",
                                       "ack": a, "stored_key": stored[at]})  # fmt: skip
        elif room not in history or history[room]["epoch"] == a["epoch"]:
            rep.violations.append({"client": None, "room": room,
                                   "rule": "acknowledged publication missing from history", "ack": a})  # fmt: skip


def check(
    acks: list[dict[str, Any]],
    lives: list[dict[str, Any]],
    history: dict[str, dict[str, Any]] | None = None,
) -> Report:
    """Run every rule; see the module docstring."""
    rep = Report()
    idx = index_acks(acks)
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for life in lives:
        check_life(life, idx, rep)
        last[(str(life["client"]), life["room"])] = life
    for (cid, room), life in last.items():
        if not life.get("final"):
            rep.violations.append({"client": cid, "life": life["life"], "room": room,
                                   "rule": "not following at the end", "end": life.get("end")})  # fmt: skip
    if history is not None:
        check_history(acks, history, rep)
        check_gaps(history, rep)
    return rep


def check_gaps(history: dict[str, dict[str, Any]], rep: Report) -> None:
    """Rule 6, over ``rep.gap_log``."""
    stored: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
    for room, h in history.items():
        for i in h["messages"]:
            stored[(room, i["epoch"])].append(int(i["offset"]))
    for g in rep.gap_log:
        e, lo, hi = g["gap"]
        held = [o for o in stored.get((g["room"], e), []) if lo <= o <= hi]
        if held:
            rep.violations.append({"client": g["client"], "life": g["life"], "room": g["room"],
                                   "rule": "gap over publications still in history",
                                   "gap": g["gap"], "stored": held[:50], "count": len(held)})  # fmt: skip
