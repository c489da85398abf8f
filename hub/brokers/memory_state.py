"""MemoryStateStore (``memory://``): presence, connections, the rooms listing and rate buckets
of one process. Nothing expires on its own: the hub removes what it added, and a restart loses
everything. Rate buckets are bounded: beyond ``bucket_capacity`` keys the least recently used
bucket is forgotten (:class:`~hub.ratelimit.BucketStore`).
"""

from __future__ import annotations

import time
from typing import Any

from hubbub.hub.brokers.base import Member
from hubbub.hub.errors import RoomFull
from hubbub.hub.ratelimit import BucketStore


class MemoryStateStore:
    """In-process StateStore. Safe to use from one event loop only."""

    def __init__(self, *, clock: Any = time.monotonic, bucket_capacity: int = 100_000) -> None:
        self._presence: dict[str, dict[str, Member]] = {}
        self._conns: dict[str, set[str]] = {}
        self._room_sessions: dict[str, int] = {}
        self.buckets = BucketStore(bucket_capacity, clock)
        self._revoked: dict[str, float] = {}

    async def start(self, node_id: str) -> None:
        pass

    async def close(self) -> None:
        pass

    # ---- presence --------------------------------------------------------------------------
    async def presence_add(self, member: Member, *, limit: int | None = None) -> None:
        presence = self._presence.setdefault(member.room, {})
        if limit and member.session not in presence and len(presence) >= limit:
            if not presence:
                del self._presence[member.room]
            raise RoomFull(
                f"call room {member.room} is full ({limit} peers)",
                details={"room": member.room, "limit": limit},
            )
        presence[member.session] = member

    async def presence_remove(self, room: str, session: str) -> None:
        presence = self._presence.get(room)
        if presence is not None:
            presence.pop(session, None)
            if not presence:
                del self._presence[room]

    async def presence_list(self, room: str) -> list[Member]:
        return list(self._presence.get(room, {}).values())

    # ---- connections and the rooms listing -------------------------------------------------
    async def connection_add(self, user: str, session: str) -> int:
        s = self._conns.setdefault(user, set())
        s.add(session)
        return len(s)

    def connection_add_nowait(self, user: str, session: str) -> None:
        self._conns.setdefault(user, set()).add(session)

    async def connection_remove(self, user: str, session: str) -> None:
        s = self._conns.get(user)
        if s is not None:
            s.discard(session)
            if not s:
                del self._conns[user]

    async def connection_count(self, user: str) -> int:
        return len(self._conns.get(user, ()))

    async def room_sessions(self, room: str, delta: int) -> None:
        self.room_sessions_nowait(room, delta)

    def room_sessions_nowait(self, room: str, delta: int) -> None:
        n = self._room_sessions.get(room, 0) + delta
        if n > 0:
            self._room_sessions[room] = n
        else:
            self._room_sessions.pop(room, None)

    async def list_rooms(
        self, prefix: str, cursor: str | None, limit: int
    ) -> tuple[list[tuple[str, int]], str | None]:
        names = sorted(r for r in self._room_sessions if r.startswith(prefix))
        if cursor:
            names = [r for r in names if r > cursor]
        page = names[:limit] if limit > 0 else []
        nxt = page[-1] if page and len(names) > limit else None
        return [(r, self._room_sessions[r]) for r in page], nxt

    # ---- rate limits -----------------------------------------------------------------------
    async def take(self, key: str, rate: float, burst: float) -> tuple[bool, float, float]:
        return self.buckets.take(key, rate, burst)

    async def take_many(self, key: str, rate: float, burst: float, n: int) -> int:
        taken = 0
        while taken < n and self.buckets.take(key, rate, burst)[0]:
            taken += 1
        return taken

    # ---- revocations -----------------------------------------------------------------------
    async def revoke(self, user: str, cutoff: float, keep: float) -> None:
        if cutoff > self._revoked.get(user, float("-inf")):
            self._revoked[user] = cutoff
        await self.revocations(keep)

    async def revocations(self, keep: float) -> dict[str, float]:
        oldest = time.time() - keep
        for user in [u for u, c in self._revoked.items() if c < oldest]:
            del self._revoked[user]
        return dict(self._revoked)
