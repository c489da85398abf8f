"""MemoryBroker (``memory://``): one process, nothing to install (its state store:
:mod:`hub.brokers.memory_state`).

Rooms live in dicts; history is a deque per room bounded by size and age. Delivery is a direct
call into the node listener, so it is never lost and ``resync`` is never needed. A restart loses
everything, and rooms then start a new epoch.

Reading a room keeps nothing: a room (epoch, offset, history) is forgotten once it has no
subscriber and no retained publication, so subscribing to, or reading, rooms that are never
published leaves nothing behind (presence needs a subscription, so "no subscriber" also means
"no presence member"). A room read or subscribed again after that starts a new epoch at offset 0,
which is never a gap. Bookkeeping is O(1) amortized per call: idempotency keys expire in
insertion order (their TTL is constant), and rooms whose publications may all have expired are
found in order of their last publication.
"""

from __future__ import annotations

import itertools
import secrets
import string
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hubbub.hub.brokers.base import (
    IDEMPOTENCY_TTL,
    HistoryPage,
    Idempotency,
    NodeListener,
    PublishResult,
    within_bytes,
)
from hubbub.hub.envelope import Publication
from hubbub.hub.errors import Conflict

_ALNUM = string.ascii_letters + string.digits


def new_epoch() -> str:
    """A fresh epoch name: 8 random alphanumerics (from one 64-bit draw: every read of a room
    that may not exist yet proposes one, so it is on the subscribe path)."""
    n = int.from_bytes(secrets.token_bytes(8))
    out = []
    for _ in range(8):
        n, i = divmod(n, 62)
        out.append(_ALNUM[i])
    return "".join(out)


@dataclass(slots=True)
class _Room:
    epoch: str
    size: int  # history bounds of this room (per-room options, else the broker's)
    ttl: float
    offset: int = 0
    history: deque[tuple[float, Publication]] = field(default_factory=deque)


class MemoryBroker:
    """In-process broker. Safe to use from one event loop only."""

    def __init__(
        self,
        *,
        history_size: int = 1000,
        history_ttl: float = 3600.0,
        clock: Any = time.monotonic,
        room_history: Callable[[str], tuple[int, float]] | None = None,
        longest_ttl: float | None = None,
        **_: Any,
    ) -> None:
        self.history_size = history_size
        self.history_ttl = history_ttl
        # Per-room (size, ttl), when rooms differ; rooms whose publications may have expired
        # are then looked for with the longest ttl of any room.
        self._room_history = room_history
        self._sweep_ttl = history_ttl if longest_ttl is None else longest_ttl
        self._clock = clock
        self._rooms: dict[str, _Room] = {}
        # rooms with publications, oldest last publication first (for forgetting expired rooms)
        self._published: OrderedDict[str, float] = OrderedDict()
        self._subscribed: set[str] = set()
        # idempotency keys, in insertion order = expiry order (constant TTL, monotonic clock)
        self._idem: OrderedDict[tuple[str, str, str], tuple[float, str, PublishResult]] = (
            OrderedDict()
        )
        self._listener: NodeListener | None = None
        self._node = ""

    async def start(self, listener: NodeListener, node_id: str) -> None:
        self._listener = listener
        self._node = node_id
        listener.broker_state(True)

    async def close(self) -> None:
        self._listener = None

    async def ready(self) -> bool:
        return True

    # ---- rooms and history ----------------------------------------------------------------
    def _room(self, room: str) -> _Room:
        r = self._rooms.get(room)
        if r is None:
            if self._room_history is None:
                size, ttl = self.history_size, self.history_ttl
            else:
                size, ttl = self._room_history(room)
            r = self._rooms[room] = _Room(new_epoch(), size, ttl)
        return r

    def _trim(self, r: _Room) -> None:
        h = r.history
        while len(h) > r.size:
            h.popleft()
        if r.ttl > 0:
            cutoff = self._clock() - r.ttl
            while h and h[0][0] < cutoff:
                h.popleft()

    def room_count(self) -> int:
        """Rooms this broker holds state for (epoch, offset, history)."""
        return len(self._rooms)

    def idempotency_count(self) -> int:
        """Idempotency keys held (expired ones go at the next keyed publish)."""
        return len(self._idem)

    def _expire_idem(self, now: float) -> None:
        """Drop expired keys from the front: touches only the expired ones and the first live."""
        idem = self._idem
        while idem:
            k, v = next(iter(idem.items()))
            if v[0] >= now:
                return
            del idem[k]

    def _forget_if_idle(self, room: str) -> None:
        """Forget ``room`` if no node subscribes to it and it retains no publication."""
        r = self._rooms.get(room)
        if r is None or room in self._subscribed:
            return
        self._trim(r)
        if not r.history:
            del self._rooms[room]
            self._published.pop(room, None)

    def _sweep(self, now: float) -> None:
        """Forget up to two rooms whose publications have all expired (amortized O(1))."""
        if self._sweep_ttl <= 0:
            return
        cutoff = now - self._sweep_ttl
        for _ in range(2):
            if not self._published:
                return
            room, last = next(iter(self._published.items()))
            if last >= cutoff:
                return
            del self._published[room]  # no retained publication: only a subscriber keeps it
            self._forget_if_idle(room)

    async def publish(
        self,
        room: str,
        body: bytes,
        *,
        ephemeral: bool = False,
        idempotency: Idempotency | None = None,
    ) -> PublishResult:
        now = self._clock()
        if idempotency is not None:
            self._expire_idem(now)
            k = (idempotency.scope, room, idempotency.key)
            seen = self._idem.get(k)
            if seen is not None and seen[0] >= now:
                if seen[1] != idempotency.fingerprint:
                    raise Conflict("Idempotency-Key reused with a different request")
                first = seen[2]
                return PublishResult(first.room, first.offset, first.epoch, duplicate=True)
        if ephemeral:
            pub = Publication(room, None, None, body)
            result = PublishResult(room, None, None)
        else:
            r = self._room(room)
            r.offset += 1
            pub = Publication(room, r.offset, r.epoch, body)
            r.history.append((now, pub))
            self._trim(r)
            result = PublishResult(room, r.offset, r.epoch)
            self._published[room] = now
            self._published.move_to_end(room)
            self._sweep(now)
        if idempotency is not None:
            k = (idempotency.scope, room, idempotency.key)
            self._idem.pop(k, None)  # an expired entry not yet dropped: re-insert at the end
            self._idem[k] = (now + IDEMPOTENCY_TTL, idempotency.fingerprint, result)
        if room in self._subscribed and self._listener is not None:
            self._listener.deliver(pub)
        if not ephemeral:
            self._forget_if_idle(room)  # history_size 0: nothing retained
        return result

    async def publish_frame(self, room: str, frame: bytes) -> None:
        if room in self._subscribed and self._listener is not None:
            self._listener.deliver(Publication(room, None, None, frame))

    async def subscribe(self, room: str) -> None:
        self._subscribed.add(room)

    async def unsubscribe(self, room: str) -> None:
        self._subscribed.discard(room)
        self._forget_if_idle(room)
        self._sweep(self._clock())

    async def history(
        self,
        room: str,
        *,
        after: int | None = None,
        limit: int = 100,
        max_bytes: int | None = None,
    ) -> HistoryPage:
        r = self._room(room)
        self._trim(r)
        h = r.history
        first = h[0][1].offset if h else r.offset + 1
        assert first is not None
        if limit <= 0:
            start = len(h)
        elif after is None:
            start = max(0, len(h) - limit)
        else:
            start = min(len(h), max(0, after + 1 - first))
        # Offsets are contiguous in the deque: slice it without copying the rest.
        picked = [p for _, p in itertools.islice(h, start, start + max(0, limit))]
        picked = within_bytes(picked, max_bytes)
        self._forget_if_idle(room)
        return HistoryPage(epoch=r.epoch, head=r.offset, first=first, publications=picked)

    async def position(self, room: str) -> tuple[str, int]:
        r = self._room(room)
        self._forget_if_idle(room)
        return r.epoch, r.offset

    # ---- control ---------------------------------------------------------------------------
    async def send_control(self, message: dict[str, Any], node: str | None = None) -> None:
        if self._listener is not None and (node is None or node == self._node):
            self._listener.on_control(message)
