"""Recovery without gaps or duplicates (docs/design.md, "Recovery"), shared by every transport.

Two places need it:

* :func:`replay` — a session subscribes with ``since``/``history``. The session's subscription is
  already registered in *buffering* mode (live publications are kept aside), so reading history
  afterwards cannot miss anything; :func:`go_live` then flushes the buffer past the seam.
* :func:`catch_up` — the node's own view of a room skipped offsets (pub/sub lost something, or
  the broker reconnected): read the missing part from history and fan it out in order, or send a
  ``gap`` to every local subscriber when it is gone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubbub.hub.brokers.base import Broker, HistoryPage
from hubbub.hub.envelope import Position, Publication, make_cursor
from hubbub.hub.session import Session, Subscription

if TYPE_CHECKING:
    from hubbub.hub.rooms import RoomState

PAGE = 500


def gap_frame(room: str, epoch: str, first: int, last: int) -> dict[str, Any]:
    return {"type": "gap", "room": room, "epoch": epoch, "from": first, "to": last}


@dataclass(slots=True)
class Seam:
    """Where a replay stopped: the last position handed to the session."""

    epoch: str
    offset: int
    recovered: bool


async def replay(
    broker: Broker,
    session: Session,
    room: str,
    since: Position | None,
    history: int | None,
    *,
    page_bytes: int | None = None,
    patience: float | None = None,
) -> Seam:
    """Send what the session asked for before going live; returns the seam.

    Replayed frames bypass the queue limits. They are read from the broker and pushed a page
    at a time (at most :data:`PAGE` publications and ``page_bytes`` bytes, at least one), and
    the next page is read only once the transport wrote the previous one
    (:meth:`Session.drained`, which closes the session with 4001 after ``patience`` seconds
    without that): whatever the history holds, a replay keeps at most about a page in memory.
    A replay that fits in one page does not wait. Each page taken counts as a sign of life
    (:meth:`Session.touch`): the client's own frames wait until the subscribe is answered."""
    if since is None:
        if not history:
            epoch, head = await broker.position(room)
            return Seam(epoch, head, False)
        # The newest ``history`` as of the first read, a page at a time from the oldest.
        page = await broker.history(room, after=None, limit=min(history, 1000),
                                    max_bytes=page_bytes)  # fmt: skip
        pubs = page.publications
        run = _Run(session, room, page.epoch, page.head, page_bytes, patience)
        run.after = page.head if not pubs else (pubs[0].offset or 1) - 1
        del pubs
        if not run.push(page):
            del page  # (what was pushed is the transport's now)
            await run.rest(broker)
        return Seam(run.epoch, run.after, False)

    page = await broker.history(room, after=since.offset, limit=PAGE, max_bytes=page_bytes)
    recovered = True
    after = since.offset
    if (since.epoch is not None and since.epoch != page.epoch) or since.offset > page.head:
        # Another epoch or a position from the future: everything retained, after a gap from 1.
        recovered = False
        page = await broker.history(room, after=0, limit=PAGE, max_bytes=page_bytes)
        session.send(gap_frame(room, page.epoch, 1, page.first - 1))
        after = page.first - 1
    elif since.offset + 1 < page.first:
        recovered = False
        session.send(gap_frame(room, page.epoch, since.offset + 1, page.first - 1))
        after = page.first - 1
    run = _Run(session, room, page.epoch, None, page_bytes, patience)
    run.after = after
    if not run.push(page):
        del page
        await run.rest(broker)
    return Seam(run.epoch, run.after, recovered and run.whole)


class _Run:
    """A replay's pages after the first: each read once the previous one is written."""

    __slots__ = ("after", "end", "epoch", "page_bytes", "patience", "room", "session", "whole")

    def __init__(self, session: Session, room: str, epoch: str, end: int | None,
                 page_bytes: int | None, patience: float | None) -> None:  # fmt: skip
        self.session = session
        self.room = room
        self.epoch = epoch
        self.end = end  # the last offset to send (None: the head, as each read finds it)
        self.page_bytes = page_bytes
        self.patience = patience
        self.after = 0  # the last offset handed to the session
        self.whole = True  # no hole (history trimmed while paging)

    def push(self, page: HistoryPage) -> bool:
        """Push ``page``'s publications after :attr:`after` (a hole: a gap in place). True
        when the replay is over: the end is reached or the session closed."""
        session, after, end = self.session, self.after, self.end
        for pub in page.publications:
            assert pub.offset is not None
            if pub.offset <= after:
                continue
            if end is not None and pub.offset > end:
                break
            if pub.offset > after + 1:  # trimmed while we were paging
                self.whole = False
                session.send(gap_frame(self.room, self.epoch, after + 1, pub.offset - 1))
            session.push(pub)
            after = pub.offset
        self.after = after
        pubs = page.publications
        if not pubs or session.closed is not None:
            return True
        return (pubs[-1].offset or 0) >= (page.head if end is None else end)

    async def rest(self, broker: Broker) -> None:
        """Read and push the following pages, each once the previous one is written."""
        session = self.session
        while True:
            await session.drained(self.patience)
            if session.closed is not None:
                return
            # The client took a page: it is alive, though its frames (pongs) wait behind
            # this replay to be handled.
            session.touch()
            limit = PAGE if self.end is None else min(PAGE, self.end - self.after)
            page = await broker.history(self.room, after=self.after, limit=limit,
                                        max_bytes=self.page_bytes)  # fmt: skip
            if page.epoch != self.epoch:
                return  # the room was lost meanwhile: go_live reports the epoch change
            done = self.push(page)
            del page  # (not kept while the next wait lasts)
            if done:
                return


def go_live(
    session: Session,
    sub: Subscription,
    seam: Seam,
    reply: Callable[[dict[str, Any]], None] | None,
    result: dict[str, Any],
) -> None:
    """The seam, in one synchronous step: send the reply, flush buffered live publications
    with an offset past the seam (gap on a hole or an epoch change), then go live."""
    result.update(
        epoch=seam.epoch,
        offset=seam.offset,
        recovered=seam.recovered,
        cursor=make_cursor({sub.room: Position(seam.epoch, seam.offset)}),
    )
    if reply is not None:
        reply(result)
    epoch, last = seam.epoch, seam.offset
    for pub in sub.buffer:
        if pub.offset is None:
            session.offer(pub)
            continue
        if pub.epoch != epoch:
            assert pub.epoch is not None
            if last > 0 or pub.offset > 1:  # offset 0 and nothing lost: not a gap
                session.send(gap_frame(sub.room, pub.epoch, 1, pub.offset - 1))
            epoch, last = pub.epoch, pub.offset - 1
        if pub.offset <= last:
            continue
        if pub.offset > last + 1:
            session.send(gap_frame(sub.room, epoch, last + 1, pub.offset - 1))
        session.offer(pub)
        last = pub.offset
    sub.buffer = []
    sub.buffered_bytes = 0
    sub.buffering = False
    sub.epoch, sub.offset = epoch, last


async def catch_up(
    broker: Broker,
    room: RoomState,
    fanout: Callable[[RoomState, Publication], None],
    send_gap: Callable[[RoomState, dict[str, Any]], None],
    page_bytes: int | None = None,
) -> None:
    """Bring the node's view of ``room`` up to the broker's head, then release held
    publications. Reads pages of at most :data:`PAGE` publications and ``page_bytes`` bytes.
    The caller sets ``room.catching_up`` and retries on BrokerError."""
    stuck: Publication | None = None
    while True:
        page = await broker.history(room.name, after=room.offset, limit=PAGE,
                                    max_bytes=page_bytes)  # fmt: skip
        if room.epoch != page.epoch:
            page = await broker.history(room.name, after=0, limit=PAGE, max_bytes=page_bytes)
            if room.offset > 0 or page.first > 1:  # offset 0 and nothing lost: not a gap
                send_gap(room, gap_frame(room.name, page.epoch, 1, page.first - 1))
            room.epoch, room.offset = page.epoch, page.first - 1
        elif page.first > room.offset + 1:
            send_gap(room, gap_frame(room.name, page.epoch, room.offset + 1, page.first - 1))
            room.offset = page.first - 1
        for pub in page.publications:
            assert pub.offset is not None
            if pub.offset == room.offset + 1:
                room.offset = pub.offset
                fanout(room, pub)
            elif pub.offset > room.offset + 1:
                send_gap(room, gap_frame(room.name, page.epoch, room.offset + 1, pub.offset - 1))
                room.offset = pub.offset
                fanout(room, pub)
        if page.publications and (page.publications[-1].offset or 0) < page.head:
            continue  # more after this page
        # Release held publications in order; stop at a hole and read history again.
        held, room.pending = room.pending, []
        room.overflowed = False
        hole = False
        for i, pub in enumerate(held):
            if pub.offset is None:
                fanout(room, pub)
            elif pub.epoch != room.epoch or pub.offset > room.offset + 1:
                if pub is stuck:  # history did not explain it twice: a stale straggler
                    continue
                stuck = pub
                room.pending = held[i:] + room.pending
                hole = True
                break
            elif pub.offset == room.offset + 1:
                room.offset = pub.offset
                fanout(room, pub)
        if not hole:
            return
