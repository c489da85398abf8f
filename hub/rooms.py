"""The local room index: which sessions of this node are in which room, and where the node
stands in each room's offsets.

The hub subscribes the node to a room's broker channel when the first local session joins and
unsubscribes when the last leaves. ``RoomState.offset`` is the last offset the node fanned out;
continuity is checked once per node, not once per subscriber.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hubbub.hub.envelope import Publication
from hubbub.hub.session import Session, Subscription

MAX_PENDING = 10_000


@dataclass(eq=False)
class RoomState:
    """One room as this node sees it."""

    name: str
    subs: dict[Session, Subscription] = field(default_factory=dict)
    epoch: str | None = None
    offset: int = 0
    ready: asyncio.Future[None] | None = None
    catching_up: bool = False
    pending: list[Publication] = field(default_factory=list)
    # Stored publications were dropped from ``pending`` (overload): the catch-up reads them
    # back from history.
    overflowed: bool = False

    @property
    def is_ready(self) -> bool:
        return self.ready is not None and self.ready.done() and self.ready.exception() is None

    def hold(self, pub: Publication) -> None:
        """Keep a publication until the room is ready or caught up (bounded)."""
        if len(self.pending) >= MAX_PENDING:
            self.pending = [p for p in self.pending if p.offset is None][-MAX_PENDING // 2 :]
            self.overflowed = True
        self.pending.append(pub)


class RoomIndex:
    """Local rooms by name."""

    def __init__(self) -> None:
        self.rooms: dict[str, RoomState] = {}

    def get(self, name: str) -> RoomState | None:
        return self.rooms.get(name)

    def create(self, name: str) -> RoomState:
        room = self.rooms[name] = RoomState(name)
        return room

    def drop(self, name: str) -> None:
        self.rooms.pop(name, None)

    def __len__(self) -> int:
        return len(self.rooms)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self.rooms.values()))
