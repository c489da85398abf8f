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

from hubbub.hub.brokers.base import Broker
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
) -> Seam:
    """Send what the session asked for before going live; returns the seam.

    Replayed frames bypass the queue limits and wait for the writer (backpressure).
    """
    if since is None:
        if history:
            page = await broker.history(room, after=None, limit=min(history, 1000))
            for pub in page.publications:
                session.push(pub)
            await session.drained()
            last = page.publications[-1].offset if page.publications else page.head
            return Seam(page.epoch, last or 0, False)
        epoch, head = await broker.position(room)
        return Seam(epoch, head, False)

    page = await broker.history(room, after=since.offset, limit=PAGE)
    recovered = True
    after = since.offset
    if (since.epoch is not None and since.epoch != page.epoch) or since.offset > page.head:
        # Another epoch or a position from the future: everything retained, after a gap from 1.
        recovered = False
        page = await broker.history(room, after=0, limit=PAGE)
        session.send(gap_frame(room, page.epoch, 1, page.first - 1))
        after = page.first - 1
    elif since.offset + 1 < page.first:
        recovered = False
        session.send(gap_frame(room, page.epoch, since.offset + 1, page.first - 1))
        after = page.first - 1
    epoch = page.epoch
    while True:
        for pub in page.publications:
            assert pub.offset is not None
            if pub.offset <= after:
                continue
            if pub.offset > after + 1:  # trimmed while we were paging
                recovered = False
                session.send(gap_frame(room, epoch, after + 1, pub.offset - 1))
            session.push(pub)
            after = pub.offset
        await session.drained()
        if len(page.publications) < PAGE or session.closed is not None:
            break
        page = await broker.history(room, after=after, limit=PAGE)
        if page.epoch != epoch:
            break  # the room was lost meanwhile: go_live reports the epoch change
    return Seam(epoch, after, recovered)


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
    sub.buffering = False
    sub.epoch, sub.offset = epoch, last


async def catch_up(
    broker: Broker,
    room: RoomState,
    fanout: Callable[[RoomState, Publication], None],
    send_gap: Callable[[RoomState, dict[str, Any]], None],
) -> None:
    """Bring the node's view of ``room`` up to the broker's head, then release held
    publications. The caller sets ``room.catching_up`` and retries on BrokerError."""
    stuck: Publication | None = None
    while True:
        page = await broker.history(room.name, after=room.offset, limit=PAGE)
        if room.epoch != page.epoch:
            page = await broker.history(room.name, after=0, limit=PAGE)
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
        if len(page.publications) >= PAGE:
            continue
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
