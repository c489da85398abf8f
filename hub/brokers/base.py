"""The two backends of a node: the Broker (messages) and the StateStore (what nodes assert).

Implementations: :mod:`hub.brokers.memory` with :mod:`hub.brokers.memory_state` (one process),
and :mod:`hub.brokers.redis` with :mod:`hub.brokers.redis_state` (many processes and machines,
sharing one connection pool). All pass the contract suites in ``tests/hub/brokers``.

Broker contract, for every implementation:

* ``publish`` of a stored publication assigns the room's next offset (1, 2, 3 … no holes) in the
  room's current epoch, appends it to history bounded by ``history_size`` and ``history_ttl``, and
  hands it to every node subscribed to the room, in offset order. Ephemeral publications and
  ``publish_frame`` frames get no offset and are never stored.
* A node receives a room's traffic (``NodeListener.deliver``) only between ``subscribe(room)`` and
  ``unsubscribe(room)``. Delivery may be lost in transit (Redis pub/sub); when the broker may have
  lost some, it calls ``NodeListener.resync()`` so the node catches up from history.
* The epoch and the offset counter outlive the history. If they are lost a new epoch starts at 1.

StateStore contract: presence members, live sessions per user and per room (the rooms listing),
token buckets and token revocations, as seen by the whole cluster. What a node adds stays until the node removes
it, closes, or stops refreshing it (a dead node's entries expire; Redis: after ``presence_ttl``).

Every method of either may raise :class:`~hub.errors.BrokerError` when the backend is unreachable;
none hangs longer than the configured broker timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from hubbub.hub.envelope import Publication

IDEMPOTENCY_TTL = 300.0


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where a publication landed. Ephemeral: ``offset`` and ``epoch`` are None."""

    room: str
    offset: int | None
    epoch: str | None
    duplicate: bool = False  # an idempotent repeat: nothing was published this time


@dataclass(frozen=True, slots=True)
class Idempotency:
    """An idempotency key scoped to a credential and a room, with a fingerprint of the request.

    A repeat with the same fingerprint within IDEMPOTENCY_TTL returns the first result; a repeat
    with another fingerprint raises Conflict.
    """

    scope: str
    key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A slice of a room's history.

    ``first`` is the smallest offset still stored (``head + 1`` when history is empty), ``head``
    the room's latest offset; ``publications`` are in ascending offset order.
    """

    epoch: str
    head: int
    first: int
    publications: list[Publication]


@dataclass(frozen=True, slots=True)
class Member:
    """A presence member: the public fields plus the node that hosts the session."""

    room: str
    session: str
    user: str
    transport: str
    node: str
    name: str | None = None
    info: Any = None

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"user": self.user, "session": self.session}
        if self.name is not None:
            out["name"] = self.name
        if self.info is not None:
            out["info"] = self.info
        out["transport"] = self.transport
        return out


def within_bytes(pubs: list[Publication], max_bytes: int | None) -> list[Publication]:
    """The longest prefix of ``pubs`` whose bodies total at most ``max_bytes``, and at least
    the first publication (None: all of them)."""
    if max_bytes is None:
        return pubs
    total = 0
    for i, pub in enumerate(pubs):
        total += len(pub.body)
        if total > max_bytes and i > 0:
            return pubs[:i]
    return pubs


class NodeListener(Protocol):
    """What a broker calls back into. Every method is a plain ``def`` and must not block."""

    def deliver(self, pub: Publication) -> None:
        """A room publication or room frame (ephemeral, join, leave) for a subscribed room."""

    def on_control(self, message: dict[str, Any]) -> None:
        """A control message sent to this node or to all nodes (kicks, signals)."""

    def resync(self) -> None:
        """Delivery may have lost messages (reconnect): catch every room up from history."""

    def broker_state(self, up: bool) -> None:
        """The broker became reachable (True) or unreachable (False)."""


class Broker(Protocol):
    """Connects nodes: publish, subscribe, history, positions, control messages. See the
    module docstring."""

    async def start(self, listener: NodeListener, node_id: str) -> None:
        """Begin; must not raise when the backend is down (report it through broker_state)."""

    async def close(self) -> None: ...

    async def ready(self) -> bool:
        """True when a round trip to the backend works now."""

    async def publish(
        self,
        room: str,
        body: bytes,
        *,
        ephemeral: bool = False,
        idempotency: Idempotency | None = None,
    ) -> PublishResult:
        """Publish a ``message`` body (see :func:`hub.envelope.make_body`)."""

    async def publish_frame(self, room: str, frame: bytes) -> None:
        """Fan out a non-stored room frame (``join``/``leave``) to the nodes subscribed to it."""

    async def subscribe(self, room: str) -> None: ...

    async def unsubscribe(self, room: str) -> None: ...

    async def history(
        self,
        room: str,
        *,
        after: int | None = None,
        limit: int = 100,
        max_bytes: int | None = None,
    ) -> HistoryPage:
        """``after=None``: the newest ``limit`` publications; else the first ``limit`` with
        offset > ``after``. Creates the room's epoch if the room has none.

        With ``max_bytes`` the page is also bounded in bytes (:func:`within_bytes`): it ends
        before the publication that would take the bodies' total past ``max_bytes``, keeping
        at least one. It starts where it would without the bound (for ``after=None``: at the
        oldest of the newest ``limit``), so the next page continues after its last offset. The
        backend reads no more than the page (Redis: the script stops there)."""

    async def position(self, room: str) -> tuple[str, int]:
        """(epoch, head offset) of the room, creating the epoch if needed."""

    async def send_control(self, message: dict[str, Any], node: str | None = None) -> None:
        """Send a control message to one node, or to every node (self included) when None."""


class StateStore(Protocol):
    """Presence, connection counts, the rooms listing and rate buckets, shared by the cluster.
    Start after the broker (``start`` must not raise when the backend is down), close before
    it (``close`` removes what this node added, best effort). See the module docstring."""

    async def start(self, node_id: str) -> None: ...

    async def close(self) -> None: ...

    async def presence_add(self, member: Member, *, limit: int | None = None) -> None:
        """Add (or refresh) a member. With ``limit``, refuse atomically with RoomFull when the
        room already holds ``limit`` other live members (call rooms, PROTOCOL.md §6)."""

    async def presence_remove(self, room: str, session: str) -> None: ...

    async def presence_list(self, room: str) -> list[Member]: ...

    async def connection_add(self, user: str, session: str) -> int:
        """Register a live session of ``user``; returns the user's session count, cluster-wide.
        The registration stands locally even when the write fails with BrokerError (it is
        written again with the store's refresh); a caller that gives up on the session calls
        :meth:`connection_remove`."""

    def connection_add_nowait(self, user: str, session: str) -> None:
        """:meth:`connection_add` without waiting for the count: the write goes out in the
        background (ordered before any later call of this store) and its failure is repaired
        by the store's refresh."""

    async def connection_remove(self, user: str, session: str) -> None: ...

    async def connection_count(self, user: str) -> int: ...

    async def room_sessions(self, room: str, delta: int) -> None:
        """Adjust this node's count of sessions in ``room`` (for the rooms listing). The count
        stands locally even when the write fails (written again with the store's refresh)."""

    def room_sessions_nowait(self, room: str, delta: int) -> None:
        """:meth:`room_sessions` in the background, as :meth:`connection_add_nowait`."""

    async def list_rooms(
        self, prefix: str, cursor: str | None, limit: int
    ) -> tuple[list[tuple[str, int]], str | None]:
        """Rooms with sessions on any node, sorted by name: ([(room, sessions)], next cursor)."""

    async def take(self, key: str, rate: float, burst: float) -> tuple[bool, float, float]:
        """Take a token from the cluster's bucket ``key`` (:mod:`hub.ratelimit` semantics;
        rate 0: no limit): (allowed, remaining tokens, seconds until full)."""

    async def take_many(self, key: str, rate: float, burst: float, n: int) -> int:
        """Take up to ``n`` tokens at once from the cluster's bucket ``key`` (as :meth:`take`):
        how many were taken (0 when it holds less than one; ``n`` at rate 0)."""

    async def revoke(self, user: str, cutoff: float, keep: float) -> None:
        """Store that the tokens of ``user`` issued at or before ``cutoff`` (Unix seconds) are
        revoked, for ``keep`` seconds after ``cutoff``; a later cutoff replaces an earlier one
        (an earlier one is ignored). Unlike the rest, revocations do not belong to a node."""

    async def revocations(self, keep: float) -> dict[str, float]:
        """Every stored revocation younger than ``keep`` seconds: ``{user: cutoff}``."""


def backends_from_url(url: str, **options: Any) -> tuple[Broker, StateStore]:
    """The broker and state store of a URL: ``memory://`` (both in this process), or
    ``redis://…`` / ``rediss://…`` (a Redis pair sharing one connection pool). ``options``:
    ``history_size``, ``history_ttl``, ``prefix``, ``presence_ttl``, ``timeout``."""
    scheme = url.split("://", 1)[0]
    if scheme == "memory":
        from hubbub.hub.brokers.memory import MemoryBroker
        from hubbub.hub.brokers.memory_state import MemoryStateStore

        return MemoryBroker(**options), MemoryStateStore()
    if scheme in ("redis", "rediss"):
        from hubbub.hub.brokers.redis import RedisBroker
        from hubbub.hub.brokers.redis_state import RedisStateStore

        presence_ttl = options.pop("presence_ttl", 30.0)
        broker = RedisBroker(url, **options)
        return broker, RedisStateStore(broker, presence_ttl=presence_ttl)
    raise ValueError(f"unknown broker URL scheme {scheme!r}")
