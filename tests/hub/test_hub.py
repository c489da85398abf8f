"""Hub with the memory broker, no sockets (PROTOCOL.md §1-§3, §5, docs/design.md "Recovery").

Sessions are opened with ``hub.open_session``; the frames a transport would write are read from
``session.queue``. The ``reply`` callback of ``subscribe`` queues a ``reply`` frame so each test
sees exactly where the reply falls among the replayed and live frames.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest

from hubbub.hub.auth import Identity
from hubbub.hub.brokers.base import HistoryPage, Member
from hubbub.hub.brokers.memory import MemoryBroker
from hubbub.hub.brokers.memory_state import MemoryStateStore
from hubbub.hub.envelope import Publication, make_body, parse_cursor
from hubbub.hub.errors import (
    CLOSE_KICKED,
    CLOSE_LIMIT,
    CLOSE_SHUTDOWN,
    CLOSE_SLOW,
    BadRequest,
    BrokerError,
    Conflict,
    Disconnect,
    Forbidden,
    NotFound,
    RoomFull,
    TooLarge,
    Unavailable,
)
from hubbub.hub.hub import Hub
from hubbub.hub.session import Item, Session
from tests.conftest import API_KEY, make_settings
from tests.helpers import until

DEADLINE = 5.0  # upper bound for "eventually"; never a performance assertion
ALL = {"subscribe": ("*",), "publish": ("*",), "signal": ("*",), "presence": ("*",)}

HubFactory = Callable[..., Awaitable[Hub]]


class YieldingBroker(MemoryBroker):
    """The memory broker with a suspension point around each read, like a networked broker:
    publishes of other tasks interleave with a subscribe at every broker round trip."""

    async def subscribe(self, room: str) -> None:
        await asyncio.sleep(0)
        await super().subscribe(room)
        await asyncio.sleep(0)

    async def position(self, room: str) -> tuple[str, int]:
        await asyncio.sleep(0)
        pos = await super().position(room)
        await asyncio.sleep(0)
        return pos

    async def history(
        self,
        room: str,
        *,
        after: int | None = None,
        limit: int = 100,
        max_bytes: int | None = None,
    ) -> HistoryPage:
        await asyncio.sleep(0)
        page = await super().history(room, after=after, limit=limit, max_bytes=max_bytes)
        await asyncio.sleep(0)
        return page


@pytest.fixture
async def make_hub() -> AsyncIterator[HubFactory]:
    hubs: list[Hub] = []

    async def factory(yielding: bool = False, **kw: Any) -> Hub:
        settings = make_settings(**kw)
        broker = None
        if yielding:
            broker = YieldingBroker(
                history_size=settings.history_size, history_ttl=settings.history_ttl
            )
        hub = Hub(settings, broker)
        await hub.start()
        hubs.append(hub)
        return hub

    yield factory
    for hub in hubs:
        await hub.stop()


@pytest.fixture
async def hub(make_hub: HubFactory) -> Hub:
    return await make_hub()


def user(sub: str = "alice", **grants: tuple[str, ...]) -> Identity:
    return Identity(
        sub=sub, grants={**ALL, **grants} if grants else dict(ALL), name=sub.title(),
        scope=f"sub:{sub}",
    )  # fmt: skip


def api(hub: Hub) -> Identity:
    return hub.auth.authenticate(API_KEY)


def decode(item: Item) -> dict[str, Any]:
    return orjson.loads(item.frame)  # type: ignore[no-any-return]


def take(session: Session) -> list[dict[str, Any]]:
    """Everything queued for the session, decoded, and the queue emptied (what a writer does)."""
    return [decode(i) for i in session.take()]


def replier(session: Session) -> Callable[[dict[str, Any]], None]:
    return lambda result: session.send({"type": "reply", "id": 1, "result": result})


async def sub(hub: Hub, session: Session, room: str, **kw: Any) -> dict[str, Any]:
    return await hub.subscribe(session, room, reply=replier(session), **kw)


def offsets(frames: list[dict[str, Any]]) -> list[int]:
    return [f["offset"] for f in frames if f["type"] == "message" and "offset" in f]


def kinds(frames: list[dict[str, Any]]) -> list[str]:
    return [f["type"] for f in frames]


async def fill(hub: Hub, room: str, n: int) -> list[dict[str, Any]]:
    key = api(hub)
    return [await hub.publish(key, room, {"n": i}) for i in range(n)]


# ---- offsets and epochs --------------------------------------------------------------------------


async def test_offsets_and_epochs(hub: Hub) -> None:
    key = api(hub)
    a = [await hub.publish(key, "a", i) for i in range(3)]
    b = [await hub.publish(key, "b", i) for i in range(2)]
    assert [r["offset"] for r in a] == [1, 2, 3] and [r["offset"] for r in b] == [1, 2]
    assert len({r["epoch"] for r in a}) == 1 and len({r["epoch"] for r in b}) == 1
    assert a[0]["epoch"] != b[0]["epoch"]
    assert a[2]["room"] == "a"
    assert parse_cursor(a[2]["cursor"], ["a"])["a"].offset == 3
    assert parse_cursor(a[2]["cursor"], ["a"])["a"].epoch == a[0]["epoch"]
    eph = await hub.publish(key, "a", "x", ephemeral=True)
    assert eph == {"room": "a", "ephemeral": True}
    assert (await hub.publish(key, "a", 4))["offset"] == 4  # ephemeral took no offset
    page = await hub.history(key, "a")
    assert [m["offset"] for m in orjson.loads(orjson.dumps(page))["messages"]] == [1, 2, 3, 4]


async def test_new_epoch_when_the_broker_loses_the_room(hub: Hub) -> None:
    first = (await fill(hub, "r", 3))[-1]
    hub.broker._rooms.clear()  # type: ignore[attr-defined]  # a memory broker restart
    again = (await fill(hub, "r", 1))[0]
    assert again["offset"] == 1 and again["epoch"] != first["epoch"]


# ---- subscribe and recovery ----------------------------------------------------------------------


async def test_subscribe_live_only(hub: Hub) -> None:
    await fill(hub, "r", 3)
    s = await hub.open_session(user(), "ws")
    result = await sub(hub, s, "r")
    assert result["offset"] == 3 and result["recovered"] is False
    assert parse_cursor(result["cursor"], ["r"])["r"].offset == 3
    await fill(hub, "r", 2)
    frames = take(s)
    assert kinds(frames) == ["reply", "message", "message"]
    assert frames[0]["result"] == result
    assert offsets(frames) == [4, 5]
    msg = frames[1]
    assert msg["room"] == "r" and msg["epoch"] == result["epoch"] and msg["data"] == {"n": 0}
    assert isinstance(msg["ts"], int) and "from" not in msg  # from a backend: no from


async def test_subscribe_empty_room(hub: Hub) -> None:
    s = await hub.open_session(user(), "ws")
    result = await sub(hub, s, "empty")
    assert result["offset"] == 0 and result["recovered"] is False
    assert take(s) == [{"type": "reply", "id": 1, "result": result}]


@pytest.mark.parametrize(("n", "expected"), [(3, [8, 9, 10]), (0, []), (50, list(range(1, 11)))])
async def test_subscribe_with_history(hub: Hub, n: int, expected: list[int]) -> None:
    await fill(hub, "r", 10)
    s = await hub.open_session(user(), "ws")
    result = await sub(hub, s, "r", history=n)
    frames = take(s)
    assert offsets(frames) == expected
    assert kinds(frames)[-1] == "reply"
    assert result["offset"] == 10 and result["recovered"] is False


@pytest.mark.parametrize("bad", [-1, "3", True, 1.5])
async def test_subscribe_bad_history(hub: Hub, bad: Any) -> None:
    s = await hub.open_session(user(), "ws")
    with pytest.raises(BadRequest):
        await sub(hub, s, "r", history=bad)
    assert s.subs == {} and hub.rooms.get("r") is None


async def test_subscribe_since_position_and_cursor(hub: Hub) -> None:
    results = await fill(hub, "r", 10)
    epoch = results[0]["epoch"]
    for since in ({"epoch": epoch, "offset": 4}, results[3]["cursor"], 4, "4"):
        s = await hub.open_session(user(), "ws")
        result = await sub(hub, s, "r", since=since, history=2)  # since wins over history
        frames = take(s)
        assert offsets(frames) == [5, 6, 7, 8, 9, 10], since
        assert kinds(frames) == ["message"] * 6 + ["reply"]
        assert result["recovered"] is True and result["offset"] == 10
        assert result["epoch"] == epoch
        await hub.close_session(s)


async def test_subscribe_since_head_and_zero(hub: Hub) -> None:
    results = await fill(hub, "r", 4)
    s = await hub.open_session(user(), "ws")
    result = await sub(hub, s, "r", since=results[-1]["cursor"])
    assert kinds(take(s)) == ["reply"] and result["recovered"] is True and result["offset"] == 4
    s2 = await hub.open_session(user(), "ws")
    result = await sub(hub, s2, "r", since={"epoch": results[0]["epoch"], "offset": 0})
    assert offsets(take(s2)) == [1, 2, 3, 4] and result["recovered"] is True


async def test_subscribe_since_cursor_of_other_room_starts_live(hub: Hub) -> None:
    other = (await fill(hub, "other", 2))[-1]
    await fill(hub, "r", 3)
    s = await hub.open_session(user(), "ws")
    result = await sub(hub, s, "r", since=other["cursor"])
    assert kinds(take(s)) == ["reply"]
    assert result["offset"] == 3 and result["recovered"] is False


async def test_subscribe_small_max_queue_with_replay(make_hub: HubFactory) -> None:
    """Replayed frames do not count against HUB_MAX_QUEUE (regression: the reply that follows a
    replay longer than max_queue used to close the session with 4001)."""
    hub = await make_hub(max_queue=5)
    await fill(hub, "r", 20)
    s = await hub.open_session(user(), "ws")
    await sub(hub, s, "r", history=20)
    assert s.closed is None
    frames = take(s)
    assert offsets(frames) == list(range(1, 21)) and kinds(frames)[-1] == "reply"


async def _drain_into(session: Session, out: list[dict[str, Any]]) -> None:
    while True:
        batch = await session.next_batch()
        if not batch:
            return
        out.extend(decode(i) for i in batch)
        await asyncio.sleep(0)


def _check_seam(frames: list[dict[str, Any]], first: int, last: int) -> dict[str, Any]:
    """No gap, no duplicate, strictly increasing; the reply's offset is the last one before it."""
    assert "gap" not in kinds(frames)
    got = offsets(frames)
    assert got == list(range(first, last + 1)), (got[:5], got[-5:], len(got))
    replies = [i for i, f in enumerate(frames) if f["type"] == "reply"]
    assert len(replies) == 1
    before = offsets(frames[: replies[0]])
    result: dict[str, Any] = frames[replies[0]]["result"]
    assert result["offset"] == (before[-1] if before else first - 1)
    assert (
        parse_cursor(result["cursor"], [result["room"]])[result["room"]].offset == result["offset"]
    )
    return result


@pytest.mark.parametrize("yielding", [False, True], ids=["memory", "yielding"])
@pytest.mark.parametrize("mode", ["position", "cursor", "live"])
async def test_concurrent_publishes_during_subscribe(
    make_hub: HubFactory, mode: str, yielding: bool
) -> None:
    hub = await make_hub(history_size=5000, yielding=yielding)
    key = api(hub)
    results = await fill(hub, "r", 700)
    total = 1500
    published = [700]
    go = asyncio.Event()

    async def publisher() -> None:
        while published[0] < total:
            if published[0] >= 800:
                await go.wait()  # the subscribe starts now: race it
            for _ in range(min(3, total - published[0])):
                await hub.publish(key, "r", {"n": published[0]})
                published[0] += 1
            await asyncio.sleep(0)

    s = await hub.open_session(user(), "ws")
    frames: list[dict[str, Any]] = []
    consumer = asyncio.create_task(_drain_into(s, frames))
    pub_task = asyncio.create_task(publisher())
    await until(lambda: published[0] >= 800)
    start = published[0]
    go.set()
    if mode == "position":
        result = await sub(hub, s, "r", since={"epoch": results[0]["epoch"], "offset": 50})
    elif mode == "cursor":
        result = await sub(hub, s, "r", since=results[49]["cursor"])
    else:
        result = await sub(hub, s, "r")
    during = published[0] - start
    await pub_task
    await until(lambda: "reply" in kinds(frames) and offsets(frames)[-1] == total)
    s.close(1000, "done")
    await consumer
    if yielding or mode != "live":  # the memory broker never suspends a live-only subscribe
        assert during > 0, "the publisher did not run during the subscribe"
    if mode == "live":
        assert result["recovered"] is False
        _check_seam(frames, result["offset"] + 1, total)
        assert kinds(frames)[0] == "reply"
    else:
        assert result["recovered"] is True
        assert _check_seam(frames, 51, total) == result
    assert s.closed is not None and s.closed.code == 1000  # never a slow-consumer close


@pytest.mark.parametrize("yielding", [False, True], ids=["memory", "yielding"])
async def test_concurrent_subscribers_and_publisher_many_rooms(
    make_hub: HubFactory, yielding: bool
) -> None:
    """Several sessions join with since while a publisher writes to several rooms."""
    hub = await make_hub(history_size=5000, yielding=yielding)
    key = api(hub)
    rooms = ["r0", "r1", "r2"]
    for room in rooms:
        await fill(hub, room, 300)
    total = 800
    counts = dict.fromkeys(rooms, 300)

    async def publisher() -> None:
        while any(c < total for c in counts.values()):
            for room in rooms:
                if counts[room] < total:
                    await hub.publish(key, room, counts[room])
                    counts[room] += 1
            await asyncio.sleep(0)

    sessions = [await hub.open_session(user(f"u{i}"), "ws") for i in range(4)]
    sinks: list[list[dict[str, Any]]] = [[] for _ in sessions]
    consumers = [
        asyncio.create_task(_drain_into(s, o)) for s, o in zip(sessions, sinks, strict=True)
    ]
    pub_task = asyncio.create_task(publisher())
    for i, s in enumerate(sessions):
        for room in rooms:
            await hub.subscribe(s, room, since=10 * (i + 1))
    await pub_task

    def done() -> bool:
        for out in sinks:
            for room in rooms:
                got = [f["offset"] for f in out if f.get("room") == room and "offset" in f]
                if not got or got[-1] != total:
                    return False
        return True

    await until(done)
    for s in sessions:
        s.close(1000, "done")
    await asyncio.gather(*consumers)
    for i, out in enumerate(sinks):
        assert "gap" not in kinds(out)
        for room in rooms:
            got = [f["offset"] for f in out if f.get("room") == room and "offset" in f]
            assert got == list(range(10 * (i + 1) + 1, total + 1)), (i, room)


def _check_accounted(frames: list[dict[str, Any]], first: int, last: int) -> int:
    """Every offset first..last arrives exactly once, in order, or is covered by a gap frame
    sent in its place. Returns how many offsets were reported lost."""
    expected, lost = first, 0
    for f in frames:
        if f["type"] == "gap":
            assert f["from"] == expected and f["to"] >= f["from"], (f, expected)
            lost += f["to"] - f["from"] + 1
            expected = f["to"] + 1
        elif f["type"] == "message" and "offset" in f:
            assert f["offset"] == expected, (f["offset"], expected)
            expected += 1
    assert expected == last + 1
    return lost


@pytest.mark.parametrize("yielding", [False, True], ids=["memory", "yielding"])
async def test_history_trimmed_while_replaying(make_hub: HubFactory, yielding: bool) -> None:
    """History is trimmed between two replay pages (700 publications while the reader takes
    the first page): what is delivered is in order without duplicates, and whatever is missing
    is announced by gap frames in place."""
    hub = await make_hub(history_size=600, yielding=yielding)
    key = api(hub)
    await fill(hub, "r", 700)  # history holds 101..700
    s = await hub.open_session(user(), "ws")
    frames: list[dict[str, Any]] = []

    async def reader() -> None:
        burst = True
        while True:
            batch = await s.next_batch()
            if not batch:
                return
            frames.extend(decode(i) for i in batch)
            if burst:  # while the replay waits for this reader, the room moves on
                burst = False
                for i in range(700):
                    await hub.publish(key, "r", i)

    task = asyncio.create_task(reader())
    result = await sub(hub, s, "r", since=5)
    await until(lambda: "reply" in kinds(frames) and offsets(frames)[-1] == 1400)
    s.close(1000, "done")
    await task
    lost = _check_accounted(frames, 6, 1400)
    gaps = [(f["from"], f["to"]) for f in frames if f["type"] == "gap"]
    if not yielding:
        assert gaps == [(6, 100), (601, 800)]
    assert len(gaps) >= 2 and lost >= 295
    assert result["recovered"] is False
    reply_at = kinds(frames).index("reply")
    assert result["offset"] == offsets(frames[:reply_at])[-1]


async def test_trimmed_history_gives_one_gap(make_hub: HubFactory) -> None:
    hub = await make_hub(history_size=5)
    results = await fill(hub, "r", 10)
    epoch = results[0]["epoch"]
    s = await hub.open_session(user(), "ws")
    result = await sub(hub, s, "r", since={"epoch": epoch, "offset": 2})
    frames = take(s)
    assert kinds(frames) == ["gap"] + ["message"] * 5 + ["reply"]
    assert frames[0] == {"type": "gap", "room": "r", "epoch": epoch, "from": 3, "to": 5}
    assert offsets(frames) == [6, 7, 8, 9, 10]
    assert result["recovered"] is False and result["offset"] == 10


async def test_since_just_before_retained_history_is_recovered(make_hub: HubFactory) -> None:
    hub = await make_hub(history_size=5)
    results = await fill(hub, "r", 10)
    s = await hub.open_session(user(), "ws")
    result = await sub(hub, s, "r", since=results[4]["cursor"])  # has 5, history holds 6..10
    assert offsets(take(s)) == [6, 7, 8, 9, 10] and result["recovered"] is True


@pytest.mark.parametrize(
    "since",
    [
        pytest.param({"epoch": "OtherEp0", "offset": 3}, id="epoch-mismatch"),
        pytest.param("wrongEp1-cursor", id="unparseable"),
        pytest.param("AAAAAAAA.Ep.1~", id="malformed-cursor"),
        pytest.param({"offset": -1}, id="bad-position"),
        pytest.param({"epoch": None, "offset": 99}, id="past-head-any-epoch"),
        pytest.param("past-head", id="past-head"),
    ],
)
async def test_since_that_cannot_be_honoured_gaps_from_1(make_hub: HubFactory, since: Any) -> None:
    hub = await make_hub(history_size=5)
    results = await fill(hub, "r", 10)
    epoch = results[0]["epoch"]
    if since == "past-head":
        since = {"epoch": epoch, "offset": 11}
    s = await hub.open_session(user(), "ws")
    result = await sub(hub, s, "r", since=since)
    frames = take(s)
    assert kinds(frames) == ["gap"] + ["message"] * 5 + ["reply"]
    assert frames[0] == {"type": "gap", "room": "r", "epoch": epoch, "from": 1, "to": 5}
    assert offsets(frames) == [6, 7, 8, 9, 10]
    assert result["recovered"] is False and result["offset"] == 10 and result["epoch"] == epoch


async def test_epoch_mismatch_with_full_history(hub: Hub) -> None:
    results = await fill(hub, "r", 3)
    s = await hub.open_session(user(), "ws")
    result = await sub(hub, s, "r", since={"epoch": "gone", "offset": 2})
    frames = take(s)
    assert frames[0]["type"] == "gap" and frames[0]["from"] == 1
    assert frames[0]["epoch"] == results[0]["epoch"]
    assert offsets(frames) == [1, 2, 3] and result["recovered"] is False


async def test_buffered_live_publications_past_the_seam(make_hub: HubFactory) -> None:
    """Live publications that arrive while the replay is written are flushed after the reply,
    past the seam, without duplicates (the writer applies backpressure here: the replay is
    several pages of HUB_MAX_REPLY_BYTES, and the next is read once the writer took one)."""
    hub = await make_hub(max_reply_bytes=2048)
    results = await fill(hub, "r", 200)
    s = await hub.open_session(user(), "ws")
    frames: list[dict[str, Any]] = []
    key = api(hub)

    async def slow_writer() -> None:
        # Drain only after a few live publications were buffered.
        await until(lambda: bool(s.subs) and len(s.subs["r"].buffer) >= 5)
        await _drain_into(s, frames)

    async def publisher() -> None:
        await until(lambda: bool(s.subs))
        for i in range(5):
            await hub.publish(key, "r", i)

    tasks = [asyncio.create_task(slow_writer()), asyncio.create_task(publisher())]
    result = await sub(hub, s, "r", since=results[9]["cursor"])
    await tasks[1]
    await until(lambda: bool(offsets(frames)) and offsets(frames)[-1] == 205)
    s.close(1000, "done")
    await tasks[0]
    assert result["recovered"] is True
    _check_seam(frames, 11, 205)


async def test_replay_reads_the_next_page_once_the_writer_took_the_last(
    make_hub: HubFactory,
) -> None:
    """A replay of many pages holds one page at a time: with no writer it waits after the
    first page (HUB_MAX_REPLY_BYTES, here 2 KiB), and goes on page by page as one takes them;
    live publications meanwhile are buffered within the queue's byte bound."""
    hub = await make_hub(max_reply_bytes=2048)
    await fill(hub, "r", 100)
    size = len((await hub.broker.history("r", after=0, limit=1)).publications[0].body)
    s = await hub.open_session(user(), "ws")
    task = asyncio.create_task(sub(hub, s, "r", since=0))
    await until(lambda: len(s.queue) > 0)
    await asyncio.sleep(0.05)
    assert not task.done() and len(s.queue) == 2048 // size  # one page, nothing more
    frames: list[dict[str, Any]] = []
    while not task.done():
        frames += [decode(i) for i in s.take()]
        await asyncio.sleep(0)
    frames += [decode(i) for i in s.take()]
    assert offsets(frames) == list(range(1, 101)) and kinds(frames)[-1] == "reply"


async def test_live_publications_buffered_during_a_replay_are_bounded_in_bytes(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(max_reply_bytes=1024, max_queue_bytes=20_000)
    await fill(hub, "r", 50)
    s = await hub.open_session(user(), "ws")
    task = asyncio.create_task(sub(hub, s, "r", since=0))  # no writer: waits after a page
    await until(lambda: "r" in s.subs and len(s.queue) > 0)
    key = api(hub)
    for _ in range(30):  # about 30 KB while the replay waits
        await hub.publish(key, "r", "x" * 1000)
    assert s.closed is not None and s.closed.code == CLOSE_SLOW
    assert "recovery" in s.closed.reason
    await asyncio.wait_for(task, DEADLINE)


# ---- ephemeral, own publications, idempotency -----------------------------------------------------


async def test_ephemeral(hub: Hub) -> None:
    await fill(hub, "r", 2)
    s = await hub.open_session(user(), "ws")
    await sub(hub, s, "r")
    take(s)
    res = await hub.publish(user("bob"), "r", {"typing": True}, ephemeral=True, event="typing")
    assert res == {"room": "r", "ephemeral": True}
    (frame,) = take(s)
    assert frame["type"] == "message" and frame["event"] == "typing"
    assert "offset" not in frame and "epoch" not in frame
    assert frame["from"] == {"user": "bob"} and frame["data"] == {"typing": True}
    page = await hub.history(api(hub), "r")
    assert len(page["messages"]) == 2
    assert await hub.broker.position("r") == (page["epoch"], 2)
    # A later subscriber's history replay does not include it.
    s2 = await hub.open_session(user(), "ws")
    await sub(hub, s2, "r", since=0)
    assert offsets(take(s2)) == [1, 2]


async def test_own_publication_has_from(hub: Hub) -> None:
    s = await hub.open_session(user(), "ws")
    await sub(hub, s, "r")
    take(s)
    res = await hub.publish(s.identity, "r", "hi", session=s, event="chat")
    (frame,) = take(s)
    assert frame["from"] == {"user": "alice", "session": s.id}
    assert frame["offset"] == res["offset"] and frame["event"] == "chat"


async def test_idempotency(hub: Hub) -> None:
    s = await hub.open_session(user("watcher"), "ws")
    await sub(hub, s, "r")
    take(s)
    alice = user()
    first = await hub.publish(alice, "r", {"x": 1}, key="k1")
    again = await hub.publish(alice, "r", {"x": 1}, key="k1")
    assert again == first
    assert offsets(take(s)) == [first["offset"]]  # published once
    with pytest.raises(Conflict):
        await hub.publish(alice, "r", {"x": 2}, key="k1")
    with pytest.raises(Conflict):
        await hub.publish(alice, "r", {"x": 1}, key="k1", event="other")
    # Scoped per credential and per room.
    bob = await hub.publish(user("bob"), "r", {"x": 1}, key="k1")
    other_room = await hub.publish(alice, "r2", {"x": 1}, key="k1")
    assert bob["offset"] == first["offset"] + 1 and other_room["offset"] == 1
    k = api(hub)
    kr = await hub.publish(k, "r", 5, key="k1")
    assert await hub.publish(k, "r", 5, key="k1") == kr
    assert (await hub.broker.position("r"))[1] == kr["offset"]
    assert hub.metrics.publications == 4


@pytest.mark.parametrize("key", ["", "x" * 257, 5, ["k"]])
async def test_bad_idempotency_key(hub: Hub, key: Any) -> None:
    with pytest.raises(BadRequest):
        await hub.publish(user(), "r", 1, key=key)


# ---- bad input -----------------------------------------------------------------------------------


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"room": "../etc"}, BadRequest),
        ({"room": "a" * 129}, BadRequest),
        ({"room": "a\x00"}, BadRequest),
        ({"room": "..."}, BadRequest),
        ({"event": "hub.join"}, BadRequest),
        ({"event": ""}, BadRequest),
        ({"ephemeral": "yes"}, BadRequest),
        ({"data": "x" * 2000}, TooLarge),
        ({"data": {"n": 2**70}}, BadRequest),
        ({"data": _deep(70)}, BadRequest),
    ],
)
async def test_publish_bad_input(
    make_hub: HubFactory, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    hub = await make_hub(max_message_bytes=1000)
    args: dict[str, Any] = {"room": "r", "data": 1, **kwargs}
    room = args.pop("room")
    with pytest.raises(error):
        await hub.publish(user(), room, args.pop("data"), **args)
    assert (await hub.broker.position("r"))[1] == 0


@pytest.mark.parametrize("room", ["", "../x", "a b", "chаt", "x" * 129, "a\x00b", None, 5])
async def test_subscribe_bad_room(hub: Hub, room: Any) -> None:
    s = await hub.open_session(user(), "ws")
    with pytest.raises(BadRequest):
        await sub(hub, s, room)
    assert s.subs == {} and len(hub.rooms) == 0


# ---- conflicts, limits, grants ---------------------------------------------------------------------


async def test_double_subscribe_is_conflict(hub: Hub) -> None:
    s = await hub.open_session(user(), "ws")
    await sub(hub, s, "r", presence=True)
    take(s)
    with pytest.raises(Conflict):
        await sub(hub, s, "r")
    assert s.subs["r"].presence is True  # nothing changed
    await fill(hub, "r", 1)
    assert offsets(take(s)) == [1]  # still delivered once


async def test_max_subscriptions(make_hub: HubFactory) -> None:
    hub = await make_hub(max_subscriptions=3)
    s = await hub.open_session(user(), "ws")
    for i in range(3):
        await sub(hub, s, f"r{i}")
    with pytest.raises(Forbidden) as info:
        await sub(hub, s, "r3")
    assert "HUB_MAX_SUBSCRIPTIONS" in info.value.message and "3" in info.value.message
    assert info.value.details == {"limit": 3}
    assert set(s.subs) == {"r0", "r1", "r2"}
    await hub.unsubscribe(s, "r0")
    await sub(hub, s, "r3")


async def test_grants_enforced(hub: Hub) -> None:
    alice = Identity(
        sub="alice",
        grants={"subscribe": ("chat:*", "news"), "publish": ("chat:*",), "presence": ("chat:1",),
                "signal": ()},
        scope="sub:alice",
    )  # fmt: skip
    s = await hub.open_session(alice, "ws")
    for room in ("other", "chat", "user:bob", "newsx"):
        with pytest.raises(Forbidden):
            await sub(hub, s, room)
    with pytest.raises(Forbidden):
        await sub(hub, s, "chat:2", presence=True)
    await sub(hub, s, "chat:1", presence=True)
    await sub(hub, s, "news")
    await sub(hub, s, "user:alice")  # always her own personal room
    with pytest.raises(Forbidden):
        await hub.publish(alice, "news", "x")
    with pytest.raises(Forbidden):
        await hub.publish(alice, "user:alice", "x")  # publishing there needs a user: grant
    with pytest.raises(Forbidden):
        await hub.publish(alice, "user:bob", "x")
    assert (await hub.broker.position("news"))[1] == 0  # nothing stored
    with pytest.raises(Forbidden):
        await hub.history(alice, "other")
    with pytest.raises(Forbidden):
        await hub.presence(alice, "news")
    assert (await hub.presence(alice, "chat:1"))["sessions"] == 1
    # A "*" grant never opens someone else's personal room.
    star = await hub.open_session(user("carol"), "ws")
    with pytest.raises(Forbidden):
        await sub(hub, star, "user:alice")
    with pytest.raises(Forbidden):
        await hub.publish(star.identity, "user:alice", "x")
    # A backend (API key) may write to a personal room.
    take(s)
    await hub.publish(api(hub), "user:alice", {"note": 1})
    assert [f["room"] for f in take(s) if f["type"] == "message"] == ["user:alice"]
    # An explicit user: grant works.
    dave = Identity(sub="dave", grants={"publish": ("user:*",)}, scope="sub:dave")
    assert (await hub.publish(dave, "user:alice", 1))["offset"] == 2


@pytest.mark.parametrize("room", ["Chat:1", "chat", "chatroom", "news:1", "user:bob"])
async def test_refused_subscribe_leaks_nothing(hub: Hub, room: str) -> None:
    await fill(hub, room, 3)
    await hub.state.presence_add(
        Member(room=room, session="S" * 22, user="bob", transport="ws", node=hub.node_id)
    )
    alice = Identity(
        sub="alice", grants={"subscribe": ("chat:*",), "presence": ("chat:*",)}, scope="sub:alice"
    )
    s = await hub.open_session(alice, "ws")
    for kw in ({"history": 3}, {"since": 0}, {"presence": True}):
        with pytest.raises(Forbidden):
            await sub(hub, s, room, **kw)
    assert take(s) == [] and s.subs == {} and hub.rooms.get(room) is None
    with pytest.raises(Forbidden):
        await hub.history(alice, room)
    with pytest.raises(Forbidden):
        await hub.presence(alice, room)


# ---- presence --------------------------------------------------------------------------------------


async def test_presence_join_leave_and_snapshot(hub: Hub) -> None:
    a = await hub.open_session(user("alice"), "ws")
    b = await hub.open_session(user("bob"), "sse")
    c = await hub.open_session(user("carol"), "ws")
    ra = await sub(hub, a, "r", presence=True)
    assert [m["user"] for m in ra["presence"]] == ["alice"]
    assert ra["presence"][0] == {
        "user": "alice",
        "session": a.id,
        "name": "Alice",
        "transport": "ws",
    }
    await sub(hub, c, "r")  # not a presence member
    take(a)
    take(c)
    rb = await sub(hub, b, "r", presence=True)
    assert sorted(m["session"] for m in rb["presence"]) == sorted([a.id, b.id])
    joins = take(a)
    assert joins == [
        {
            "type": "join",
            "room": "r",
            "user": "bob",
            "session": b.id,
            "name": "Bob",
            "transport": "sse",
        }
    ]
    assert "join" not in kinds(take(b))  # not its own join
    assert take(c) == []  # non-members get no presence traffic
    body = await hub.presence(api(hub), "r")
    assert body["users"] == 2 and body["sessions"] == 2 and len(body["members"]) == 2
    await hub.unsubscribe(b, "r")
    assert take(a) == [
        {
            "type": "leave",
            "room": "r",
            "user": "bob",
            "session": b.id,
            "name": "Bob",
            "transport": "sse",
        }
    ]
    assert take(c) == []
    # Closing a session leaves its rooms: the others see a leave.
    await sub(hub, b, "r", presence=True)
    take(a)
    await hub.close_session(b)
    assert kinds(take(a)) == ["leave"]
    assert (await hub.presence(api(hub), "r"))["sessions"] == 1


async def test_call_room_full(make_hub: HubFactory) -> None:
    hub = await make_hub(signal_max_peers=2)
    peers = [await hub.open_session(user(f"p{i}"), "ws") for i in range(3)]
    await sub(hub, peers[0], "call:1", presence=True)
    await sub(hub, peers[1], "call:1", presence=True)
    with pytest.raises(RoomFull) as info:
        await sub(hub, peers[2], "call:1", presence=True)
    assert info.value.code == "room_full" and info.value.status == 403
    assert "call:1" not in peers[2].subs
    await sub(hub, peers[2], "call:1")  # watching without presence is not joining the call
    await hub.unsubscribe(peers[2], "call:1")
    for i in range(3):  # not a call room: no peer limit
        await sub(hub, peers[i], "chat:1", presence=True)
    await hub.unsubscribe(peers[0], "call:1")
    await sub(hub, peers[2], "call:1", presence=True)  # a place was freed


async def test_direct_frames(hub: Hub) -> None:
    a = await hub.open_session(user("alice"), "ws")
    b = await hub.open_session(user("bob"), "ws")
    await sub(hub, a, "call:1", presence=True)
    with pytest.raises(Forbidden):
        await hub.direct(b, "call:1", a.id, {"type": "signal"})
    await sub(hub, b, "call:1", presence=True)
    take(a)
    await hub.direct(b, "call:1", a.id, {"type": "signal", "data": {"kind": "bye"}})
    assert take(a) == [{"type": "signal", "data": {"kind": "bye"}}]
    with pytest.raises(NotFound):
        await hub.direct(b, "call:1", "nobody-here-0000000", {"type": "signal"})


# ---- node catch-up -------------------------------------------------------------------------------


async def test_catch_up_fills_a_hole_from_history(hub: Hub) -> None:
    s = await hub.open_session(user(), "ws")
    await sub(hub, s, "r")
    await fill(hub, "r", 2)
    take(s)
    epoch, _ = await hub.broker.position("r")
    # The node misses 3..5 (as if pub/sub dropped them) ...
    await hub.broker.unsubscribe("r")
    for i in range(3, 7):
        await hub.broker.publish("r", make_body("r", orjson.dumps(i)))
    await hub.broker.subscribe("r")
    # ... and then sees 6: a jump. The node reads 3..5 from history and fans out in order.
    page = await hub.broker.history("r", after=5, limit=1)
    (six,) = page.publications
    hub.deliver(Publication("r", 6, epoch, six.body))
    await until(lambda: 6 in offsets([decode(i) for i in s.queue]))
    await fill(hub, "r", 2)  # live again
    await until(lambda: not hub.rooms.get("r").catching_up)  # type: ignore[union-attr]
    frames = take(s)
    assert offsets(frames) == [3, 4, 5, 6, 7, 8]
    assert [f["data"] for f in frames if f["offset"] <= 6] == [3, 4, 5, 6]
    assert "gap" not in kinds(frames)
    hub.deliver(Publication("r", 8, epoch, six.body))  # a duplicate is dropped
    assert take(s) == []


async def test_catch_up_does_not_resend_what_a_new_session_already_has(hub: Hub) -> None:
    """Regression: a session that subscribed while the node lagged behind the broker (held
    publications, catch-up pending) got offsets at or before its seam again after the reply."""
    a = await hub.open_session(user("a"), "ws")
    await sub(hub, a, "r")
    take(a)
    await hub.broker.unsubscribe("r")  # the node misses 1..3
    for i in range(1, 4):
        await hub.broker.publish("r", make_body("r", orjson.dumps(i)))
    await hub.broker.subscribe("r")
    b = await hub.open_session(user("b"), "ws")
    c = await hub.open_session(user("c"), "ws")
    rb = await sub(hub, b, "r")  # live: its seam is the broker's head, 3
    rc = await sub(hub, c, "r", since=0)  # replays 1..3 itself
    assert rb["offset"] == 3 and rc["offset"] == 3
    await fill(hub, "r", 1)  # offset 4: a jump for the node, which catches up from history
    await until(lambda: not hub.rooms.get("r").catching_up)  # type: ignore[union-attr]
    assert offsets(take(a)) == [1, 2, 3, 4]
    assert offsets(take(b)) == [4]
    assert offsets(take(c)) == [1, 2, 3, 4]


async def test_resync_catches_up_every_room(hub: Hub) -> None:
    """After a broker reconnect (resync) the node reads what it missed from history; with
    nothing missed it sends nothing."""
    s = await hub.open_session(user(), "ws")
    await sub(hub, s, "a")
    await sub(hub, s, "b")
    await fill(hub, "a", 1)
    take(s)
    hub.resync()
    await until(lambda: not any(r.catching_up for r in hub.rooms))
    assert take(s) == []
    await hub.broker.unsubscribe("a")
    await hub.broker.unsubscribe("b")
    await fill(hub, "a", 2)
    await fill(hub, "b", 3)
    await hub.broker.subscribe("a")
    await hub.broker.subscribe("b")
    hub.resync()
    await until(lambda: not any(r.catching_up for r in hub.rooms))
    frames = take(s)
    assert [(f["room"], f["offset"]) for f in frames] == [
        ("a", 2),
        ("a", 3),
        ("b", 1),
        ("b", 2),
        ("b", 3),
    ]
    assert hub.metrics.resyncs == 2


async def test_catch_up_gap_when_the_hole_was_trimmed(make_hub: HubFactory) -> None:
    hub = await make_hub(history_size=3)
    s = await hub.open_session(user(), "ws")
    await sub(hub, s, "r")
    await fill(hub, "r", 1)
    take(s)
    await hub.broker.unsubscribe("r")
    for i in range(2, 11):
        await hub.broker.publish("r", make_body("r", orjson.dumps(i)))
    await hub.broker.subscribe("r")
    epoch, _ = await hub.broker.position("r")
    last = (await hub.broker.history("r", after=9, limit=1)).publications[0]
    hub.deliver(Publication("r", 10, epoch, last.body))
    await until(lambda: 10 in offsets([decode(i) for i in s.queue]))
    frames = take(s)
    assert frames[0] == {"type": "gap", "room": "r", "epoch": epoch, "from": 2, "to": 7}
    assert offsets(frames) == [8, 9, 10]


async def test_catch_up_gap_only_to_sessions_that_lost_something(make_hub: HubFactory) -> None:
    """A node-level gap before a session's seam is not a loss for that session."""
    hub = await make_hub(history_size=3)
    a = await hub.open_session(user("a"), "ws")
    await sub(hub, a, "r")
    take(a)
    await hub.broker.unsubscribe("r")  # the node misses 1..10; history keeps 8..10
    for i in range(1, 11):
        await hub.broker.publish("r", make_body("r", orjson.dumps(i)))
    await hub.broker.subscribe("r")
    b = await hub.open_session(user("b"), "ws")
    assert (await sub(hub, b, "r"))["offset"] == 10
    take(b)
    epoch, _ = await hub.broker.position("r")
    await fill(hub, "r", 1)  # 11: the node catches up, finds 1..8 trimmed
    await until(lambda: not hub.rooms.get("r").catching_up)  # type: ignore[union-attr]
    fa = take(a)
    assert fa[0] == {"type": "gap", "room": "r", "epoch": epoch, "from": 1, "to": 8}
    assert offsets(fa) == [9, 10, 11]
    assert take(b) == [d for d in fa if d.get("offset") == 11]  # no gap, no duplicate


async def test_epoch_change_under_live_subscription(hub: Hub) -> None:
    s = await hub.open_session(user(), "ws")
    await sub(hub, s, "r")
    old = (await fill(hub, "r", 3))[0]["epoch"]
    take(s)
    hub.broker._rooms.clear()  # type: ignore[attr-defined]  # the broker lost the room
    new = (await fill(hub, "r", 2))[0]
    assert new["epoch"] != old
    await until(lambda: len(offsets([decode(i) for i in s.queue])) == 2)
    frames = take(s)
    assert (
        frames[0]["type"] == "gap" and frames[0]["epoch"] == new["epoch"] and frames[0]["from"] == 1
    )
    assert offsets(frames) == [1, 2] and all(f["epoch"] == new["epoch"] for f in frames)


class Outage:
    """A switch that makes every call of the backends below fail like an unreachable one."""

    down = False


def _failing_when_down(name: str, attr: Any, outage: Outage) -> Any:
    if name in _BACKEND_CALLS and outage.down:

        async def fail(*a: Any, **k: Any) -> Any:
            raise BrokerError("backend unreachable")

        return fail
    return attr


class DownBroker(MemoryBroker):
    """The memory broker, failing while its outage is on."""

    def __init__(self, outage: Outage) -> None:
        super().__init__()
        self.outage = outage

    def __getattribute__(self, name: str) -> Any:
        outage = object.__getattribute__(self, "outage")
        return _failing_when_down(name, super().__getattribute__(name), outage)


class DownState(MemoryStateStore):
    """The memory state store, failing while its outage is on."""

    def __init__(self, outage: Outage) -> None:
        super().__init__()
        self.outage = outage

    def __getattribute__(self, name: str) -> Any:
        outage = object.__getattribute__(self, "outage")
        return _failing_when_down(name, super().__getattribute__(name), outage)


def down_hub() -> tuple[Hub, Outage, DownState]:
    outage = Outage()
    state = DownState(outage)
    return Hub(make_settings(), DownBroker(outage), state), outage, state


_BACKEND_CALLS = {
    "ready", "publish", "publish_frame", "subscribe", "history", "position", "presence_add",
    "presence_remove", "presence_list", "send_control", "connection_add", "connection_count",
    "room_sessions",
}  # fmt: skip


async def test_broker_down_maps_to_unavailable() -> None:
    hub, outage, _ = down_hub()
    await hub.start()
    try:
        s = await hub.open_session(user(), "ws")
        await sub(hub, s, "live")
        take(s)
        outage.down = True
        hub.broker_state(False)  # as a real broker's link reports it
        assert not await hub.ready()
        with pytest.raises(Unavailable) as info:
            await hub.publish(user(), "r", 1)
        assert info.value.temporary and info.value.status == 503 and info.value.retry_after
        with pytest.raises(Unavailable):
            await hub.open_session(user("bob"), "ws")
        with pytest.raises(Unavailable):
            await sub(hub, s, "r")
        assert "r" not in s.subs and hub.rooms.get("r") is None
        with pytest.raises(Unavailable):
            await hub.history(user(), "r")
        with pytest.raises(Unavailable):
            await hub.presence(user(), "r")
        with pytest.raises(Unavailable):
            await hub.disconnect_user("alice")
        await hub.close_session(s)  # never raises, even with the broker down
        assert hub.sessions == {}
        outage.down = False
        hub.broker_state(True)
        assert await hub.ready()
        again = await hub.open_session(user(), "ws")
        await sub(hub, again, "r", presence=True)
        assert (await hub.publish(user(), "r", 1))["offset"] == 1
    finally:
        await hub.stop()


async def test_presence_subscribe_when_the_broker_fails_midway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub, outage, state = down_hub()
    await hub.start()
    try:
        s = await hub.open_session(user(), "ws")

        async def failing(member: Member, **_: Any) -> None:
            outage.down = True
            raise BrokerError("lost")

        monkeypatch.setattr(state, "presence_add", failing)
        with pytest.raises(Unavailable):
            await sub(hub, s, "r", presence=True)
        outage.down = False
        assert "r" not in s.subs and hub.rooms.get("r") is None
        assert take(s) == []  # no reply for a failed subscribe
    finally:
        await hub.stop()


# ---- slow consumers, kicks, drain, limits -----------------------------------------------------------


async def test_slow_consumer_is_closed_others_get_everything(make_hub: HubFactory) -> None:
    hub = await make_hub(max_queue=10)
    slow = await hub.open_session(user("slow"), "ws")
    fast = await hub.open_session(user("fast"), "ws")
    await sub(hub, slow, "r")
    await sub(hub, fast, "r")
    take(slow)
    take(fast)
    got: list[dict[str, Any]] = []
    consumer = asyncio.create_task(_drain_into(fast, got))
    key = api(hub)
    for i in range(100):
        await hub.publish(key, "r", i)
        await asyncio.sleep(0)
    await until(lambda: len(offsets(got)) == 100)
    assert slow.closed is not None and slow.closed.code == CLOSE_SLOW and not slow.queue
    assert fast.closed is None
    assert offsets(got) == list(range(1, 101))
    fast.close(1000, "done")
    await consumer
    # The slow client reconnects and resumes from history: nothing lost.
    await hub.close_session(slow)
    again = await hub.open_session(user("slow"), "ws")
    frames: list[dict[str, Any]] = []
    consumer = asyncio.create_task(_drain_into(again, frames))
    await sub(hub, again, "r", since=0)
    await until(lambda: "reply" in kinds(frames))
    again.close(1000, "done")
    await consumer
    assert offsets(frames) == list(range(1, 101))


async def test_slow_consumer_by_bytes(make_hub: HubFactory) -> None:
    hub = await make_hub(max_queue=1000, max_queue_bytes=2000)
    s = await hub.open_session(user(), "ws")
    await sub(hub, s, "r")
    for _ in range(10):
        await hub.publish(api(hub), "r", "x" * 300)
    assert s.closed is not None and s.closed.code == CLOSE_SLOW


async def test_disconnect_user(hub: Hub) -> None:
    a1 = await hub.open_session(user("alice"), "ws")
    a2 = await hub.open_session(user("alice"), "sse")
    b = await hub.open_session(user("bob"), "ws")
    assert await hub.disconnect_user("alice", "bye") == 2
    for s in (a1, a2):
        assert s.closed is not None and s.closed.code == CLOSE_KICKED
        assert s.closed.reason == "bye" and not s.closed.reconnect
    assert b.closed is None
    assert await hub.disconnect_user("nobody") == 0


async def test_drain_and_stop(hub: Hub) -> None:
    sessions = [await hub.open_session(user(f"u{i}"), "ws") for i in range(3)]
    assert await hub.ready()
    await hub.drain(window=0.01)
    assert all(s.closed is not None and s.closed.code == CLOSE_SHUTDOWN for s in sessions)
    assert all(s.closed.reconnect for s in sessions if s.closed)
    assert not await hub.ready()
    with pytest.raises(Disconnect) as info:
        await hub.open_session(user(), "ws")
    assert info.value.code == CLOSE_SHUTDOWN


async def test_stop_closes_sessions(make_hub: HubFactory) -> None:
    hub = await make_hub()
    s = await hub.open_session(user(), "ws")
    await hub.stop()
    assert s.closed is not None and s.closed.code == CLOSE_SHUTDOWN


async def test_max_connections_per_user(make_hub: HubFactory) -> None:
    hub = await make_hub(max_connections_per_user=2)
    first = await hub.open_session(user(), "ws")
    await hub.open_session(user(), "sse")
    with pytest.raises(Disconnect) as info:
        await hub.open_session(user(), "ws")
    assert info.value.code == CLOSE_LIMIT and not info.value.reconnect
    assert await hub.state.connection_count("alice") == 2  # the refused one is not counted
    await hub.open_session(user("bob"), "ws")  # other users are not affected
    await hub.close_session(first)
    await hub.open_session(user(), "ws")  # a freed place can be used
    for _ in range(3):  # backends (API keys) are not limited
        await hub.open_session(api(hub), "http")


async def test_close_session_leaves_rooms(hub: Hub) -> None:
    s = await hub.open_session(user(), "ws")
    await sub(hub, s, "r1")
    await sub(hub, s, "r2", presence=True)
    assert {r.name for r in hub.rooms} == {"r1", "r2"}
    await hub.close_session(s)
    await hub.close_session(s)  # idempotent
    assert len(hub.rooms) == 0 and hub.sessions == {} and hub.by_user == {}
    assert s.closed is not None
    assert await hub.state.presence_list("r2") == []
    assert await hub.state.connection_count("alice") == 0


async def test_unsubscribe_stops_delivery(hub: Hub) -> None:
    s = await hub.open_session(user(), "ws")
    await sub(hub, s, "r")
    await hub.unsubscribe(s, "r")
    await hub.unsubscribe(s, "r")  # not subscribed: no error
    take(s)
    await fill(hub, "r", 2)
    assert take(s) == []
    assert hub.rooms.get("r") is None


async def test_history_body(hub: Hub) -> None:
    results = await fill(hub, "r", 10)
    key = api(hub)
    newest = orjson.loads(orjson.dumps(await hub.history(key, "r", limit=3)))
    assert [m["offset"] for m in newest["messages"]] == [8, 9, 10]
    assert newest["more"] is True and newest["complete"] is True
    page = orjson.loads(
        orjson.dumps(await hub.history(key, "r", since=results[2]["cursor"], limit=4))
    )
    assert [m["offset"] for m in page["messages"]] == [4, 5, 6, 7]
    assert page["more"] is True and page["complete"] is True
    assert parse_cursor(page["cursor"], ["r"])["r"].offset == 7
    with pytest.raises(BadRequest):
        await hub.history(key, "r", limit=0)
    with pytest.raises(BadRequest):
        await hub.history(key, "r", since="not a cursor!")
