"""Token revocation: the node's table of revoked users (PROTOCOL.md §8 "Limits and abuse").

A revocation of user ``sub`` at ``cutoff`` (Unix seconds, whole) refuses every token of that
``sub`` whose ``iat`` is at or before ``cutoff``, or that has no ``iat``; tokens minted later
(``iat > cutoff``) pass. An entry is kept for ``keep`` seconds (``HUB_JWT_MAX_TTL``): every token
the hub accepted at the moment of the revocation expires within that time.

The table is what :class:`~hub.auth.Authenticator` reads on every token check, so a check costs
one dict lookup: no broker round trip. The cluster keeps the tables of its nodes in sync (each
revocation is stored by the state store and announced on the broker's control channel; a node
loads the stored ones when it starts and after every broker reconnection, see
:meth:`hub.hub.Hub.load_revocations`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

Clock = Callable[[], float]


class Revocations:
    """Revoked users of this node: ``{sub: cutoff}``, pruned as entries outlive ``keep``."""

    __slots__ = ("_clock", "_next_prune", "keep", "table")

    def __init__(self, keep: float, clock: Clock = time.time) -> None:
        self.keep = keep
        self.table: dict[str, float] = {}
        self._clock = clock
        self._next_prune = 0.0

    def __len__(self) -> int:
        return len(self.table)

    def add(self, sub: str, cutoff: float) -> None:
        """Record a revocation; a later cutoff of the same user replaces an earlier one (never
        the other way round, so announcements may arrive in any order)."""
        if cutoff + self.keep <= self._clock():
            return
        if cutoff > self.table.get(sub, float("-inf")):
            self.table[sub] = cutoff

    def merge(self, entries: Mapping[str, float]) -> None:
        """Add every ``{sub: cutoff}`` of ``entries`` (a load from the state store)."""
        for sub, cutoff in entries.items():
            self.add(sub, cutoff)
        self.prune()

    def refuses(self, sub: str, iat: object) -> bool:
        """Whether a token of ``sub`` issued at ``iat`` (its claim, maybe absent or not a
        number) is revoked."""
        if not self.table:
            return False
        now = self._clock()
        if now >= self._next_prune:
            self.prune(now)
        cutoff = self.table.get(sub)
        if cutoff is None or cutoff + self.keep <= now:
            return False
        if isinstance(iat, bool) or not isinstance(iat, int | float):
            return True
        return iat <= cutoff

    def prune(self, now: float | None = None) -> None:
        """Forget the entries older than ``keep`` (at most once a minute from :meth:`refuses`)."""
        now = self._clock() if now is None else now
        self._next_prune = now + 60.0
        old = [sub for sub, cutoff in self.table.items() if cutoff + self.keep <= now]
        for sub in old:
            del self.table[sub]
