"""Session (PROTOCOL.md §3 heartbeat, tokens, limits): bounded queue, heartbeat, token expiry.

Timers use tiny intervals; tests wait for an outcome with a generous deadline and never assert
how long something took.
"""

from __future__ import annotations

import asyncio
import re
import time

import orjson
import pytest

from hubbub.hub.auth import Identity
from hubbub.hub.envelope import Publication, make_body
from hubbub.hub.errors import CLOSE_EXPIRED, CLOSE_NO_HEARTBEAT, CLOSE_SLOW
from hubbub.hub.session import PING, Control, PresenceChange, Session, new_session_id
from hubbub.hub.settings import Rate
from tests.helpers import until

DEADLINE = 5.0  # generous upper bound for "eventually"; never a performance assertion


def ident(exp: float | None = None) -> Identity:
    return Identity(sub="alice", grants={"subscribe": ("*",)}, exp=exp)


def pub(offset: int, size: int = 10) -> Publication:
    return Publication("r", offset, "E", make_body("r", b'"' + b"x" * size + b'"', ts=1))


def ctl(name: str) -> Control:
    return Control.of({"type": "note", "name": name})


def test_session_ids() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) >= 16 and re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids)


# ---- outbound queue ----------------------------------------------------------------------------


async def test_offer_and_next_batch() -> None:
    s = Session(ident(), "ws", max_queue=10)
    a = ctl("a")
    s.offer(a)
    s.send({"type": "reply", "id": 1, "result": {}})
    s.offer(pub(1))
    items = await s.next_batch()
    assert items[0] is a
    assert isinstance(items[1], Control) and items[1].kind == "reply"
    assert orjson.loads(items[1].frame) == {"type": "reply", "id": 1, "result": {}}
    assert items[1].text == items[1].frame.decode()
    assert isinstance(items[2], Publication)
    assert not s.queue and s.queued_bytes == 0


async def test_next_batch_waits_for_an_offer() -> None:
    s = Session(ident(), "ws")
    waiter = asyncio.create_task(s.next_batch())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    x = ctl("x")
    s.offer(x)
    assert await asyncio.wait_for(waiter, DEADLINE) == [x]


async def test_offer_beyond_max_queue_closes_4001_and_drops_queue() -> None:
    closes: list[int] = []
    s = Session(ident(), "ws", max_queue=3)
    s.on_close(lambda d: closes.append(d.code))
    for i in range(3):
        s.offer(pub(i + 1))
    assert s.closed is None and len(s.queue) == 3
    s.offer(pub(4))
    assert s.closed is not None and s.closed.code == CLOSE_SLOW
    assert s.closed.reconnect  # 4001: the client reconnects and resumes from history
    assert not s.queue and s.queued_bytes == 0
    assert closes == [CLOSE_SLOW]
    s.offer(pub(5))  # ignored once closed
    s.push(pub(6))
    assert not s.queue
    assert await s.next_batch() == []


async def test_offer_beyond_max_queue_bytes_closes_4001() -> None:
    s = Session(ident(), "ws", max_queue=1000, max_queue_bytes=1000)
    frame_len = len(pub(1, size=300).frame)
    n = 1000 // frame_len
    for i in range(n):
        s.offer(pub(i + 1, size=300))
    assert s.closed is None and s.queued_bytes == n * frame_len
    s.offer(pub(n + 1, size=300))
    assert s.closed is not None and s.closed.code == CLOSE_SLOW
    assert not s.queue


async def test_draining_the_queue_resets_the_limits() -> None:
    s = Session(ident(), "ws", max_queue=2, max_queue_bytes=10_000)
    for round_ in range(5):
        s.offer(ctl(f"a{round_}"))
        s.offer(ctl(f"b{round_}"))
        assert len(await s.next_batch()) == 2
    assert s.closed is None


def change(kind: str, member: str, room: str = "r") -> PresenceChange:
    frame = orjson.dumps({"type": kind, "room": room, "session": member, "user": "u"})
    return PresenceChange(kind, frame, room, member)


async def test_presence_changes_coalesce_in_the_queue() -> None:
    """Queued join/leave frames of one member in one room: the latest stays; a leave after a
    queued join removes both; the limits count what stays."""
    s = Session(ident(), "ws", max_queue=3)
    first = ctl("first")
    s.offer(first)  # no direct writer: everything is queued from here on
    for _ in range(100):
        s.offer(change("join", "m1"))
        s.offer(change("leave", "m1"))
    assert s.closed is None and s.queued_frames == 1 and s.queued_bytes == len(first.frame)
    left_seen = change("leave", "m2")
    s.offer(left_seen)  # a leave of a member whose join was written before
    rejoin = change("join", "m2")
    s.offer(rejoin)  # replaces the queued leave: the client learns the member is back
    other_room = change("join", "m2", room="r2")
    s.offer(other_room)  # another room: a member of its own
    assert s.closed is None and s.queued_frames == 3
    assert s.queued_bytes == sum(len(i.frame) for i in (first, rejoin, other_room))
    assert await s.next_batch() == [first, rejoin, other_room]
    assert s.queued_frames == 0 and s.queued_bytes == 0
    # a queue holding only changes that cancelled out: take() is empty, next_batch waits
    s.offer(first)
    await s.next_batch()
    s.offer(ctl("x"))
    s.take()
    s.offer(change("join", "m3"))
    assert s.queued_frames == 1
    s.offer(change("leave", "m3"))
    assert s.queued_frames == 0 and s.take() == []
    waiter = asyncio.create_task(s.next_batch())
    s.offer(change("join", "m4"))
    s.offer(change("leave", "m4"))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    last = ctl("last")
    s.offer(last)
    assert await asyncio.wait_for(waiter, DEADLINE) == [last]
    # the 4001 limit still holds for what is not coalesced
    for m in ("a", "b", "c"):
        s.offer(change("join", m))
    assert s.closed is None
    s.offer(change("join", "d"))
    assert s.closed is not None and s.closed.code == CLOSE_SLOW


async def test_push_bypasses_the_limits() -> None:
    s = Session(ident(), "ws", max_queue=2, max_queue_bytes=100)
    for i in range(50):
        s.push(pub(i + 1, size=50))
    assert s.closed is None and len(s.queue) == 50
    # Replayed frames do not count against HUB_MAX_QUEUE (PROTOCOL.md §3): live frames still
    # fit up to the limit after them (regression: pushed frames used to count, so the subscribe
    # reply after a replay closed a session with a small max_queue).
    s.offer(ctl("live-1"))
    s.offer(ctl("live-2"))
    assert s.closed is None and len(s.queue) == 52
    s.offer(ctl("live-3"))
    assert s.closed is not None and s.closed.code == CLOSE_SLOW


async def test_drained_waits_for_the_writer() -> None:
    s = Session(ident(), "ws")
    for i in range(100):
        s.push(pub(i + 1))
    task = asyncio.create_task(s.drained())
    await asyncio.sleep(0.02)
    assert not task.done()
    assert len(await s.next_batch()) == 100  # taken, not yet written
    await asyncio.sleep(0.02)
    assert not task.done()
    assert s.take() == []  # the writer comes back for more: all it took is written
    await asyncio.wait_for(task, DEADLINE)
    # A writer that waits for frames (next_batch, arrival) has written what it took too.
    s.push(pub(1))
    task = asyncio.create_task(s.drained())
    assert len(s.take()) == 1
    await asyncio.sleep(0.02)
    assert not task.done()
    assert s.arrival() is not None
    await asyncio.wait_for(task, DEADLINE)
    # Closing releases a waiter too.
    for i in range(100):
        s.push(pub(i + 1))
    task = asyncio.create_task(s.drained())
    await asyncio.sleep(0.02)
    s.close(4001, "x")
    await asyncio.wait_for(task, DEADLINE)


async def test_drained_out_of_patience_is_a_slow_consumer() -> None:
    s = Session(ident(), "ws")
    s.push(pub(1))
    await asyncio.wait_for(s.drained(patience=0.05), DEADLINE)
    assert s.closed is not None and s.closed.code == CLOSE_SLOW
    assert "replay" in s.closed.reason


async def test_drained_returns_at_once_when_nothing_is_held() -> None:
    s = Session(ident(), "ws")
    await asyncio.wait_for(s.drained(patience=0.01), DEADLINE)
    assert s.closed is None


async def test_first_close_wins() -> None:
    s = Session(ident(), "ws")
    calls: list[tuple[int, str]] = []
    s.on_close(lambda d: calls.append((d.code, d.reason)))
    s.close(4002, "no heartbeat")
    s.close(4001, "slow")
    assert s.closed is not None and s.closed.code == 4002
    assert calls == [(4002, "no heartbeat")]


# ---- heartbeat ---------------------------------------------------------------------------------


async def test_heartbeat_without_client_frames_closes_4002() -> None:
    s = Session(ident(), "ws")
    s.start_heartbeat(0.05, 0.05, client_pongs=True)
    await until(lambda: s.closed is not None)
    assert s.closed is not None and s.closed.code == CLOSE_NO_HEARTBEAT
    assert s.closed.reconnect
    assert not s.deadlines


async def test_heartbeat_stays_open_with_touches_and_pings() -> None:
    s = Session(ident(), "ws")
    s.start_heartbeat(0.4, 0.4, client_pongs=True)
    seen: list[object] = []
    end = time.monotonic() + 2.0  # more than twice interval + timeout
    while time.monotonic() < end:
        s.touch()
        seen.extend(s.queue)
        s.queue.clear()
        s.queued_bytes = 0
        await asyncio.sleep(0.01)
    assert s.closed is None
    assert PING in seen  # the server pings whatever the client does
    # Then the client goes quiet: closed.
    await until(lambda: s.closed is not None)
    assert s.closed is not None and s.closed.code == CLOSE_NO_HEARTBEAT
    s.cancel_timers()


async def test_heartbeat_without_client_pongs_only_pings() -> None:
    s = Session(ident(), "sse")
    s.start_heartbeat(0.02, 0.02, client_pongs=False)
    await until(lambda: s.queue.count(PING) >= 3)
    assert s.closed is None
    s.close(1000, "done")
    assert not s.deadlines


# ---- token expiry ------------------------------------------------------------------------------


async def test_expiry_warns_then_closes_4004() -> None:
    s = Session(ident(exp=time.time() + 0.3), "ws")
    warnings: list[float] = []
    s.arm_expiry(warnings.append)
    await until(lambda: s.closed is not None)
    assert s.closed is not None and s.closed.code == CLOSE_EXPIRED
    assert s.closed.reconnect  # 4004: refresh the token, then reconnect
    assert len(warnings) == 1 and 0 <= warnings[0] <= 0.3


async def test_expiry_with_custom_expire_callback() -> None:
    s = Session(ident(exp=time.time() + 0.1), "sse")
    events: list[str] = []
    s.arm_expiry(lambda left: events.append("warn"), lambda: events.append("expired"))
    await until(lambda: "expired" in events)
    assert events == ["warn", "expired"]
    assert s.closed is None  # the transport decides how to end (SSE: hub.expired)


async def test_rearming_expiry_replaces_timers() -> None:
    identity = ident(exp=time.time() + 0.1)
    s = Session(identity, "ws")
    s.arm_expiry(lambda left: None)
    identity.exp = time.time() + 3600  # a refresh
    warned: list[float] = []
    s.arm_expiry(warned.append)
    await asyncio.sleep(0.3)
    assert s.closed is None
    assert warned == []  # the warning is due 60 s before the new exp
    s.cancel_timers()


async def test_no_exp_no_expiry_timers() -> None:
    s = Session(ident(exp=None), "ws")
    s.arm_expiry(lambda left: None)
    assert "expired" not in s.deadlines and "expiring" not in s.deadlines


async def test_already_expired_closes_at_once() -> None:
    s = Session(ident(exp=time.time() - 1), "ws")
    s.arm_expiry(lambda left: None)
    await until(lambda: s.closed is not None)
    assert s.closed is not None and s.closed.code == CLOSE_EXPIRED


# ---- publish rate ------------------------------------------------------------------------------


def test_session_publish_rate_is_a_token_bucket() -> None:
    s = Session(ident(), "ws", publish_rate=Rate(0.001, 3))
    assert [s.rate.take() for _ in range(5)] == [True, True, True, False, False]


@pytest.mark.parametrize("rate", [None, Rate(0, 0)])
def test_session_without_rate_is_unlimited(rate: Rate | None) -> None:
    s = Session(ident(), "ws", publish_rate=rate)
    assert all(s.rate.take() for _ in range(500))
