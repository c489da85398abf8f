"""Session: one authenticated connection through one transport. Nearly no I/O.

A session owns a bounded outbound queue that the hub fills with :meth:`Session.offer` (a plain
``def``: fan-out never waits) and the transport drains with :meth:`Session.next_batch`. When the
queue passes ``max_queue`` frames or ``max_queue_bytes`` the session is closed with 4001 (slow
consumer); the client resumes from history and loses nothing still stored.

Presence changes are coalesced in the queue (:class:`PresenceChange`): a session's queue holds
at most one ``join``/``leave`` per room and member, so members joining and leaving faster than a
client reads (a presence flood) never fill its queue.

Queue items are typed: a :class:`~hub.envelope.Publication` (a room's message, the same object
for every subscriber) or a :class:`Control`, a frame the hub makes itself, with its kind and its
encoded bytes. Transports decide what to write from the type and the kind alone.

Heartbeat and token expiry (PROTOCOL.md §3) are deadlines in the event loop's timer wheel
(:mod:`hub.clock`), not tasks or timer handles, so an idle session costs a few objects.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from hubbub.hub.auth import Identity
from hubbub.hub.clock import Wheel, wheel
from hubbub.hub.envelope import Publication, frame_bytes
from hubbub.hub.errors import (
    CLOSE_EXPIRED,
    CLOSE_NO_HEARTBEAT,
    CLOSE_SLOW,
    Disconnect,
)
from hubbub.hub.ratelimit import UNLIMITED, TokenBucket
from hubbub.hub.settings import Rate


class Control:
    """A frame the hub writes on its own behalf (not a room's message): its ``kind`` (the frame's
    ``type``: ``ping``, ``pong``, ``reply``, ``error``, ``welcome``, ``join``, ``leave``,
    ``presence``, ``gap``, ``signal``, ``ice_servers``, ``expiring``, ``disconnect``…) and
    ``frame``, its JSON text as bytes, encoded once. Like :attr:`Publication.frame`, ``frame`` is
    exactly what a WebSocket client receives; :attr:`text` is the same as ``str``.

    One object may go to many sessions (a presence ``join`` fanned out to a room): transports
    cache what they build from it by identity."""

    __slots__ = ("_decoded", "frame", "kind")

    def __init__(self, kind: str, frame: bytes) -> None:
        self.kind = kind
        self.frame = frame
        self._decoded: dict[str, Any] | None = None

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Control:
        """The control frame of ``obj`` (a dict with a string ``type``, its kind)."""
        return cls(obj["type"], frame_bytes(obj))

    @property
    def text(self) -> str:
        """The frame as ``str`` (ASGI text frames need str)."""
        return self.frame.decode()

    def decoded(self) -> dict[str, Any]:
        """The frame as a dict (decoded once, for the few transports that read a field)."""
        d = self._decoded
        if d is None:
            d = self._decoded = orjson.loads(self.frame)
        return d

    def __repr__(self) -> str:
        return f"<Control {self.kind} {self.frame[:60]!r}>"


# Kinds the transports tell apart (SSE writes these and drops the others).
GAP, JOIN, LEAVE, PRESENCE, SIGNAL = "gap", "join", "leave", "presence", "signal"


class PresenceChange(Control):
    """A ``join`` or ``leave`` frame of one member: ``room`` and ``member`` (the member's
    session id) say whose, so that a session's queue can coalesce them (:meth:`Session.offer`)."""

    __slots__ = ("member", "room")

    def __init__(self, kind: str, frame: bytes, room: str, member: str) -> None:
        super().__init__(kind, frame)
        self.room = room
        self.member = member


class _Coalesced:
    """The presence changes in one session's queue: the latest per (room, member), and those
    superseded by a later one (by ``id``: still in the deque, so the ids stay theirs; skipped
    by :meth:`Session.take`)."""

    __slots__ = ("dropped", "latest")

    def __init__(self) -> None:
        self.latest: dict[tuple[str, str], PresenceChange] = {}
        self.dropped: set[int] = set()


Item = Publication | Control
"""What a session's queue holds and what its ``direct`` writer is offered."""

PING = Control("ping", b'{"type":"ping"}')
"""The heartbeat ping: one shared object for every session."""


def new_session_id() -> str:
    """Base64url, 22 characters, 128 random bits (PROTOCOL.md §1)."""
    return secrets.token_urlsafe(16)


@dataclass(slots=True)
class Subscription:
    """A session's membership of one room.

    While ``buffering`` (during recovery) live publications are kept in ``buffer`` instead of
    being offered, up to the session's queue limits (else 4001); :meth:`Hub.subscribe`
    flushes them past the replay seam.
    """

    room: str
    presence: bool = False
    buffering: bool = True
    buffer: list[Publication] = field(default_factory=list)
    buffered_bytes: int = 0  # bodies in ``buffer``: bounded by HUB_MAX_QUEUE_BYTES
    epoch: str | None = None
    offset: int = 0  # last offset handed to the session (for gap detection while buffering)


_NEVER = float("inf")


class Session:
    """State of one connection. The transport owns the I/O; the hub owns membership.

    Kept small (an idle node holds thousands): ``__slots__``, the outbound deque created on the
    first queued frame and dropped when taken, no Event (``next_batch`` waits on a future made
    when it has to wait), and no loop timer of its own: its deadlines (heartbeat ping and
    liveness check, token expiry warning and close) are four floats in slots and one entry in
    the loop's timer wheel (:mod:`hub.clock`)."""

    __slots__ = (
        "_dead_at",
        "_drained",
        "_expire",
        "_expire_at",
        "_hb_interval",
        "_hb_limit",
        "_on_close",
        "_ping_at",
        "_presence",
        "_queue",
        "_tick",
        "_waiter",
        "_warn",
        "_warn_at",
        "_wheel",
        "bad_frames",
        "closed",
        "direct",
        "id",
        "identity",
        "last_seen",
        "max_queue",
        "max_queue_bytes",
        "pushed",
        "queued_bytes",
        "rate",
        "refused_at",
        "refused_since",
        "room_rates",
        "subs",
        "transport",
        "waker",
        "writing",
    )

    def __init__(
        self,
        identity: Identity,
        transport: str,
        *,
        max_queue: int = 1000,
        max_queue_bytes: int = 4 * 1024 * 1024,
        publish_rate: Rate | None = None,
    ) -> None:
        self.id = new_session_id()
        self.identity = identity
        self.transport = transport
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.subs: dict[str, Subscription] = {}
        self._queue: deque[Item] | None = None
        self._presence: _Coalesced | None = None  # made when a presence change is queued
        self.queued_bytes = 0
        self.pushed = 0  # replayed frames in ``queue``: not counted against ``max_queue``
        # The transport's writer holds frames it took and has not come back for more yet.
        self.writing = False
        self._drained: asyncio.Future[None] | None = None  # made by drained() when it waits
        self.closed: Disconnect | None = None
        self.last_seen = time.monotonic()
        self.rate = (
            TokenBucket.of(publish_rate) if publish_rate is not None and publish_rate.rate > 0
            else UNLIMITED
        )  # fmt: skip
        # The session's run of rate_limited refusals (0.0: none): when it started and the
        # latest refusal, monotonic seconds (``FrameHandler.refused``).
        self.refused_since = self.refused_at = 0.0
        # Per-room publish buckets ([[rooms]] publish_rate), made on the first publish there.
        self.room_rates: dict[str, TokenBucket] | None = None
        self.bad_frames = 0
        self._waiter: asyncio.Future[None] | None = None
        # Set by a transport that can write a frame synchronously; returns False to make the
        # session queue the frame instead (socket not writable, writer busy, closing…).
        self.direct: Callable[[Item], bool] | None = None
        # Set by a transport that starts its writer on demand: called whenever a frame gets
        # queued and when the session closes (the writer then takes what is queued).
        self.waker: Callable[[], None] | None = None
        # Deadlines (loop time) and the one loop timer at the earliest (see "timers" below).
        self._ping_at = self._dead_at = self._warn_at = self._expire_at = _NEVER
        self._wheel: Wheel | None = None
        self._tick = 0  # the wheel tick this session is in (0: none)
        self._hb_interval = 0.0
        self._hb_limit = 0.0
        self._warn: Callable[[float], None] | None = None
        self._expire: Callable[[], None] | None = None
        self._on_close: list[Callable[[Disconnect], None]] | None = None

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.identity.sub} {self.transport}>"

    @property
    def queue(self) -> deque[Item]:
        """Frames waiting for the transport's writer (oldest first)."""
        q = self._queue
        if q is None:
            q = self._queue = deque()
        return q

    @property
    def queued_frames(self) -> int:
        """Frames waiting in the queue, replayed ones included, superseded presence changes
        not (what the next :meth:`take` returns)."""
        q = self._queue
        if not q:
            return 0
        coalesced = self._presence
        return len(q) - (len(coalesced.dropped) if coalesced is not None else 0)

    # ---- outbound ----------------------------------------------------------------------------
    def offer(self, item: Item) -> None:
        """Hand one frame to the transport. Never blocks; a full queue closes with 4001.

        When nothing is queued and the transport installed a :attr:`direct` writer that accepts
        the frame (its socket is open and writable), the frame is written at once: no queue, no
        task wake-up. Otherwise it is queued for the transport's writer, which keeps the order:
        ``direct`` must refuse while the writer still holds frames it took from the queue.

        A :class:`PresenceChange` supersedes the queued change of the same room and member (the
        client has not read it): that one is dropped, and the new one is queued, except a
        ``leave`` that supersedes a ``join``: the client never heard of that member, so
        neither is sent."""
        if self.closed is not None:
            return
        q = self._queue
        if not q:
            if self.direct is not None and self.direct(item):
                return
            if q is None:
                q = self._queue = deque()
        size = len(item.frame)
        live = len(q) - self.pushed
        coalesced = self._presence
        if coalesced is not None:
            live -= len(coalesced.dropped)
        if isinstance(item, PresenceChange) and self._coalesce(item):
            return
        if live >= self.max_queue or self.queued_bytes + size > self.max_queue_bytes:
            self.close(CLOSE_SLOW, "slow consumer: outbound queue full")
            return
        q.append(item)
        self.queued_bytes += size
        self._wake()

    def _coalesce(self, change: PresenceChange) -> bool:
        """Record ``change`` as the latest of its member, dropping a queued one it supersedes
        (see :meth:`offer`). True when ``change`` itself need not be queued."""
        coalesced = self._presence
        if coalesced is None:
            coalesced = self._presence = _Coalesced()
        key = (change.room, change.member)
        old = coalesced.latest.get(key)
        if old is not None:
            coalesced.dropped.add(id(old))
            self.queued_bytes -= len(old.frame)
            if old.kind == JOIN and change.kind == LEAVE:
                del coalesced.latest[key]
                return True
        coalesced.latest[key] = change
        return False

    def send(self, obj: dict[str, Any]) -> None:
        """Offer the control frame of ``obj`` (reply, error, gap…: a dict with a string
        ``type``, see :class:`Control`)."""
        self.offer(Control.of(obj))

    def push(self, item: Item) -> None:
        """Queue a replayed frame: not counted against the queue limits (PROTOCOL.md §3).

        Callers push one page at a time and wait with :meth:`drained` before the next, so a
        replay holds at most a page of the session's memory."""
        if self.closed is None:
            self.queue.append(item)
            self.pushed += 1
            self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)
        if self.waker is not None:
            self.waker()

    async def drained(self, patience: float | None = None) -> None:
        """Wait until the transport has written everything queued so far: the queue is empty
        and its writer came back for more (:meth:`take` found nothing, or it waits in
        :meth:`next_batch` or on :meth:`arrival`), or the session closed. A writer's "written"
        is its connection's: handed to the socket below its high-water mark.

        ``patience``: seconds the writer may take; past that the client is not reading, and the
        session is closed with 4001 (slow consumer)."""
        if self.closed is not None or not (self._queue or self.writing):
            return
        loop = asyncio.get_running_loop()
        deadline = None if patience is None else loop.time() + patience
        while self.closed is None and (self._queue or self.writing):
            fut = self._drained
            if fut is None or fut.done():
                fut = self._drained = loop.create_future()
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(fut)
            except TimeoutError:
                self.close(CLOSE_SLOW, "slow consumer: replay not read")
                return

    def _idle(self) -> None:
        """The writer wrote all it took and found nothing more: wake :meth:`drained`."""
        self.writing = False
        fut = self._drained
        if fut is not None:
            self._drained = None
            if not fut.done():
                fut.set_result(None)

    def take(self) -> list[Item]:
        """Take every queued frame at once (oldest first) without waiting. May be empty while
        frames were queued: presence changes that cancelled out (:meth:`offer`). The caller is
        the session's writer: it calls again once it wrote them (:meth:`drained` relies on
        it)."""
        q = self._queue
        if not q:
            if self.writing:
                self._idle()
            return []
        self._queue = None
        self.queued_bytes = 0
        self.pushed = 0
        coalesced, self._presence = self._presence, None
        if coalesced is not None and coalesced.dropped:
            dropped = coalesced.dropped
            items = [item for item in q if id(item) not in dropped]
        else:
            items = list(q)
        if items:
            self.writing = True
        elif self.writing:
            self._idle()
        return items

    def arrival(self) -> asyncio.Future[None] | None:
        """A future that resolves once a frame is queued or the session closes, or None when
        there is nothing to wait for (frames are queued, or the session is closed). For a
        consumer that awaits it directly and then calls :meth:`take`: unlike with
        :meth:`next_batch`, no coroutine frame waits with an idle session. One consumer at a
        time."""
        if self._queue or self.closed is not None:
            return None
        if self.writing:
            self._idle()
        w = self._waiter
        if w is None or w.done():
            w = self._waiter = asyncio.get_running_loop().create_future()
        return w

    async def next_batch(self) -> list[Item]:
        """Wait for frames and take every queued one. Returns [] once the session is closed
        and its queue drained. One consumer at a time."""
        while True:
            while not self._queue:
                if self.closed is not None:
                    return []
                if self.writing:
                    self._idle()
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiter = fut
                try:
                    await fut
                finally:
                    if self._waiter is fut:
                        self._waiter = None
            items = self.take()
            if items:
                return items

    # ---- lifecycle ---------------------------------------------------------------------------
    def on_close(self, callback: Callable[[Disconnect], None]) -> None:
        if self._on_close is None:
            self._on_close = []
        self._on_close.append(callback)

    def close(self, code: int, reason: str) -> None:
        """Mark the session closed with a close code; the transport sends it and hangs up.
        The first close wins. Queued frames are dropped (the client resumes from history)."""
        if self.closed is not None:
            return
        self.closed = Disconnect(code, reason)
        self._queue = None
        self._presence = None
        self.queued_bytes = 0
        self.pushed = 0
        self.cancel_timers()
        self._idle()
        self._wake()
        for cb in self._on_close or ():
            cb(self.closed)

    # ---- timers ------------------------------------------------------------------------------
    # Four deadlines at most (ping, liveness check, expiry warning, expiry), each a loop time in
    # a slot (``_NEVER`` when not pending); the session sits in the loop's timer wheel
    # (:mod:`hub.clock`) at the earliest: no timer handle, closure or dict per deadline.
    # Deadlines run up to one wheel tick (50 ms) late, never early.
    def touch(self) -> None:
        """Any client frame counts as liveness."""
        self.last_seen = time.monotonic()

    @property
    def deadlines(self) -> dict[str, float]:
        """Pending deadlines by name (``ping``, ``dead``, ``expiring``, ``expired``): loop time."""
        named = (("ping", self._ping_at), ("dead", self._dead_at),
                 ("expiring", self._warn_at), ("expired", self._expire_at))  # fmt: skip
        return {name: when for name, when in named if when != _NEVER}

    def _arm(self) -> None:
        due = min(self._ping_at, self._dead_at, self._warn_at, self._expire_at)
        tick = self._tick
        if due == _NEVER or self.closed is not None:
            if tick:
                self._tick = 0
                if self._wheel is not None:
                    self._wheel.remove(self, tick)
            return
        w = self._wheel
        if w is None:
            w = self._wheel = wheel()
        new = Wheel.tick_of(due)
        if tick:
            if tick <= new:
                return  # fires first; it re-arms for what is left
            w.remove(self, tick)
        self._tick = new
        w.add(self, new)

    def on_tick(self) -> None:
        """The wheel's call at the earliest deadline: run what is due, re-arm for the rest."""
        self._tick = 0
        loop = asyncio.get_running_loop()
        now = loop.time()
        soon = now + 0.001  # the loop's clock has millisecond steps
        if self._ping_at <= soon:
            self._ping_at = now + self._hb_interval
            self.offer(PING)
        if self._dead_at <= soon:
            self._dead_at = _NEVER
            idle = time.monotonic() - self.last_seen
            if idle >= self._hb_limit:
                self.close(CLOSE_NO_HEARTBEAT, "no heartbeat")
            else:
                self._dead_at = now + self._hb_limit - idle + 0.01
        if self._warn_at <= soon:
            self._warn_at = _NEVER
            if self._warn is not None:
                self._warn(round(self.identity.expires_in() or 0.0, 3))
        if self._expire_at <= soon:
            self._expire_at = _NEVER
            if self._expire is not None:
                self._expire()
            else:
                self.close(CLOSE_EXPIRED, "token expired")
        self._arm()

    def cancel_timers(self) -> None:
        self._ping_at = self._dead_at = self._warn_at = self._expire_at = _NEVER
        self._arm()

    # ---- heartbeat and expiry ------------------------------------------------------------------
    def start_heartbeat(self, interval: float, timeout: float, *, client_pongs: bool) -> None:
        """Send ``ping`` every ``interval``; with ``client_pongs`` close 4002 after
        ``interval + timeout`` without any client frame."""
        if self.closed is not None:
            return
        now = asyncio.get_running_loop().time()
        self._hb_interval = interval
        self._ping_at = now + max(0.0, interval)
        if client_pongs:
            self._hb_limit = interval + timeout
            self._dead_at = now + max(0.0, self._hb_limit)
        self._arm()

    def arm_expiry(
        self, warn: Callable[[float], None], expire: Callable[[], None] | None = None
    ) -> None:
        """Schedule ``warn(seconds_left)`` ``min(60, remaining)`` before ``exp`` and the 4004
        close (or ``expire()``) at ``exp``. Re-arming replaces the earlier ones."""
        left = self.identity.expires_in()
        self._warn_at = self._expire_at = _NEVER
        self._warn = self._expire = None
        if left is not None and self.closed is None:
            self._warn, self._expire = warn, expire
            now = asyncio.get_running_loop().time()
            self._warn_at = now + max(0.0, left - min(60.0, left))
            self._expire_at = now + max(0.0, left)
        self._arm()
