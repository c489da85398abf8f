"""Client frame handlers for the WebSocket transport (PROTOCOL.md §3 "Frames").

:meth:`FrameHandler.handle` answers a frame carrying an ``id`` with exactly one ``reply`` (sent
here) or raises a :class:`~hub.errors.HubError` that the reader turns into the ``error`` frame.
Frames without an ``id`` get no ``reply``; their errors are sent with ``"id": null``.

Publishes are pipelined: once a ``publish`` frame passed every check that needs no broker (rate,
grant, size…, errors raised to the reader as for any frame), its broker call runs in a task of
its own and :meth:`FrameHandler.handle` returns, so the reader takes the next frame without
waiting for the round trip. Such a publish answers with its ``reply`` or ``error`` (with its
``id``) when the broker has answered; replies follow completion order. Order of publications
holds: the broker call is made in the task's first step (``Hub.publish_prepared``), and tasks'
first steps run in creation order. At most :data:`MAX_PUBLISHES_IN_FLIGHT` are in flight per
connection (the reader then waits, so a fast publisher meets TCP backpressure), and every other
frame waits until none is in flight, so it sees the effect of the publications sent before it.

Every frame is metered (PROTOCOL.md §8): every parsed client frame except ``ping`` and ``pong``
(unknown types, a second ``auth`` and frames that then fail validation included) takes a token
from the session's ``HUB_CLIENT_COMMAND_RATE`` bucket before anything else is done, and
``publish`` and ``signal`` frames then one from its ``HUB_CLIENT_PUBLISH_RATE`` bucket. Over
either, the frame is answered ``error rate_limited`` (temporary) naming the limit and nothing is
done. Frames that do not parse are not metered: they close the connection (4500), or, for a
lone surrogate escape, count towards the bad-frame limit. API-key sessions are not metered.

A client that keeps being refused is closed (:meth:`FrameHandler.refused`): a refusal starts a
*run* unless the session's previous refusal was less than :data:`RUN_GAP` seconds before; the
first refusal ``HUB_RATE_LIMIT_GRACE`` (10 s) or more after the start of its run closes the
session with 4005. Two timestamps on the session, written on refusals only: no timer.

Publishes and signals of a client session also draw on its user's ``HUB_USER_PUBLISH_RATE``
budget (:mod:`hub.budgets`): the node's bucket before the publish task starts; with Redis, a
token of the node's lease of the cluster's bucket, or else a new lease, awaited before the
publish task starts. While a publish awaits a lease, the later publishes of its connection are
held in order behind it (a deque, no task each), so the order still holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from hubbub.hub.errors import (
    CLOSE_INTERNAL,
    CLOSE_RATE,
    BadRequest,
    Forbidden,
    HubError,
    RateLimited,
    Unauthorized,
)
from hubbub.hub.hub import Hub, PreparedPublish
from hubbub.hub.ratelimit import UNLIMITED, TokenBucket
from hubbub.hub.session import Session

log = logging.getLogger("hubbub.ws")

MAX_PUBLISHES_IN_FLIGHT = 64

SignalRelay = Callable[[Hub, Session, dict[str, Any]], Awaitable[None]]


def _frame_id(frame: dict[str, Any]) -> int | None:
    fid = frame.get("id")
    if fid is None:
        return None
    if isinstance(fid, bool) or not isinstance(fid, int) or fid < 1 or fid > 2**53:
        raise BadRequest("id must be a positive integer")
    return fid


# Frame types, each handled by the FrameHandler method of that name (looked up per frame: a
# per-instance dict of bound methods cost about 0.9 KiB per idle connection).
_FRAME_TYPES = frozenset(("subscribe", "unsubscribe", "publish", "history", "presence",
                          "refresh", "signal", "ping", "pong", "auth"))  # fmt: skip
# Frame types that draw on no budget.
_FREE = frozenset(("ping", "pong"))
# Frame types that also draw on HUB_CLIENT_PUBLISH_RATE.
_PUBLISHING = frozenset(("publish", "signal"))
# A pause between two refusals of at least this many seconds ends a run of refusals.
RUN_GAP = 1.0


class FrameHandler:
    """Dispatches one session's frames to the hub."""

    def __init__(self, hub: Hub, session: Session, relay: SignalRelay) -> None:
        self.hub = hub
        self.session = session
        self.relay = relay
        self.in_flight = 0  # publishes whose broker call has not ended
        # Set whenever in_flight goes down; made on the first wait (idle connections carry none).
        self._changed: asyncio.Event | None = None
        # HUB_CLIENT_COMMAND_RATE, made on the first metered frame (idle connections carry none).
        self._commands: TokenBucket | None = None
        # Publishes held (in order) while one before them waits for the cluster's user budget.
        self._held: deque[tuple[PreparedPublish, int | None, bool]] | None = None

    async def handle(self, frame: dict[str, Any]) -> None:
        """Handle one parsed frame (a dict with a string ``type``). Raises HubError (the reader
        answers it; RateLimited goes to :meth:`refused`)."""
        kind = frame["type"]
        if kind not in _FREE:
            self._take_command()
            if kind in _PUBLISHING:
                self._take_rate()
        fid = _frame_id(frame)
        if kind not in _FRAME_TYPES:
            raise BadRequest(f"unknown frame type {kind[:32]!r}")
        if self.in_flight and kind != "publish":
            await self._wait_in_flight(0)
        await getattr(self, kind)(frame, fid)

    async def _wait_in_flight(self, at_most: int) -> None:
        while self.in_flight > at_most:
            if self._changed is None:
                self._changed = asyncio.Event()
            self._changed.clear()
            await self._changed.wait()

    def expiring(self, seconds: float) -> None:
        """The token expiry warning (PROTOCOL.md §3): ``Session.arm_expiry``'s ``warn``."""
        self.session.send({"type": "expiring", "in": seconds})

    def reply(self, fid: int | None, result: dict[str, Any]) -> None:
        if fid is not None:
            self.session.send({"type": "reply", "id": fid, "result": result})

    def _take_rate(self) -> None:
        if not self.session.rate.take():
            raise RateLimited("publish rate exceeded (HUB_CLIENT_PUBLISH_RATE)",
                              limit="HUB_CLIENT_PUBLISH_RATE")  # fmt: skip

    def _take_command(self) -> None:
        bucket = self._commands
        if bucket is None:
            rate = self.hub.settings.client_command_rate
            unmetered = self.session.identity.api_key or not rate.enabled
            bucket = self._commands = UNLIMITED if unmetered else TokenBucket.of(rate)
        if not bucket.take():
            raise RateLimited("frame rate exceeded (HUB_CLIENT_COMMAND_RATE)",
                              limit="HUB_CLIENT_COMMAND_RATE")  # fmt: skip

    def refused(self, exc: RateLimited, fid: int | None) -> None:
        """Answer a frame refused over a budget (any of them: the session's, a room's, the
        user's) and close the session with 4005 once it has kept being refused for
        ``HUB_RATE_LIMIT_GRACE`` (see the module docstring)."""
        session = self.session
        self.hub.metrics.rate_limited += 1
        session.send(exc.frame(fid))
        now = time.monotonic()
        if not session.refused_since or now - session.refused_at >= RUN_GAP:
            session.refused_since = now  # a new run
        session.refused_at = now
        grace = self.hub.settings.rate_limit_grace
        if now - session.refused_since >= grace:
            limit = exc.limit or "rate limit"
            session.close(CLOSE_RATE, f"rate limited for {grace:g} s ({limit})")

    # ---- handlers --------------------------------------------------------------------------
    async def auth(self, frame: dict[str, Any], fid: int | None) -> None:
        raise BadRequest("already authenticated; use refresh to replace the token")

    async def subscribe(self, frame: dict[str, Any], fid: int | None) -> None:
        presence = frame.get("presence", False)
        if not isinstance(presence, bool):
            raise BadRequest("presence must be a boolean")
        await self.hub.subscribe(
            self.session,
            frame.get("room"),  # type: ignore[arg-type]  # validated by the hub
            since=frame.get("since"),
            history=frame.get("history"),
            presence=presence,
            reply=lambda result: self.reply(fid, result),
        )

    async def unsubscribe(self, frame: dict[str, Any], fid: int | None) -> None:
        from hubbub.hub.envelope import check_room

        await self.hub.unsubscribe(self.session, check_room(frame.get("room")))
        self.reply(fid, {})

    async def publish(self, frame: dict[str, Any], fid: int | None) -> None:
        """Check now, publish in a task (see the module docstring)."""
        if "data" not in frame:
            raise BadRequest("publish needs data")
        ident = self.session.identity
        shared = not ident.api_key and self.hub.budget.take_local(ident.sub)
        prepared = self.hub.prepare_publish(
            self.session.identity,
            frame.get("room"),  # type: ignore[arg-type]
            frame["data"],
            event=frame.get("event"),
            ephemeral=frame.get("ephemeral", False),
            key=frame.get("key"),
            session=self.session,
        )
        if self.in_flight >= MAX_PUBLISHES_IN_FLIGHT:
            await self._wait_in_flight(MAX_PUBLISHES_IN_FLIGHT - 1)
        self.in_flight += 1
        if self._held is not None:  # a publish before this one waits for the user budget
            self._held.append((prepared, fid, shared))
        elif shared:
            self._held = deque([(prepared, fid, True)])
            self.hub.spawn(self._release_held())
        else:
            self.hub.spawn(self._publish(prepared, fid))

    async def _release_held(self) -> None:
        """Start the held publishes in their order. One that needs a token of the cluster's
        ``HUB_USER_PUBLISH_RATE`` bucket waits for it first (:mod:`hub.budgets`); the publish
        tasks started before that wait make their broker calls during it (they were scheduled
        first), so the order holds. When the broker is unavailable, every publish held then gets
        that error at once (not one broker timeout after another). Ends, and stops holding,
        when none is left."""
        held = self._held
        assert held is not None
        try:
            while held:
                prepared, fid, shared = held.popleft()
                if shared:
                    try:
                        await self.hub.budget.take_shared(self.session.identity.sub)
                    except RateLimited as exc:
                        self.refused(exc, fid)
                        self._publish_done()
                        continue
                    except HubError as exc:  # the broker is down: so for every one held
                        self.session.send(exc.frame(fid))
                        self._publish_done()
                        while held:
                            self.session.send(exc.frame(held.popleft()[1]))
                            self._publish_done()
                        return
                self.hub.spawn(self._publish(prepared, fid))
        finally:
            for _ in range(len(held)):  # cancelled (the node stops): nothing more is sent
                self._publish_done()
            held.clear()
            self._held = None

    def _publish_done(self) -> None:
        self.in_flight -= 1
        if self._changed is not None:
            self._changed.set()

    async def _publish(self, prepared: PreparedPublish, fid: int | None) -> None:
        try:
            result = await self.hub.publish_prepared(prepared)
        except HubError as exc:
            self.session.send(exc.frame(fid))
        except Exception:
            log.exception("publish failed (session %s)", self.session.id)
            self.session.close(CLOSE_INTERNAL, "internal error")
        else:
            self.reply(fid, result)
        finally:
            self._publish_done()

    async def history(self, frame: dict[str, Any], fid: int | None) -> None:
        result = await self.hub.history(
            self.session.identity,
            frame.get("room"),  # type: ignore[arg-type]
            since=frame.get("since"),
            limit=frame.get("limit", 100),
        )
        self.reply(fid, result)

    async def presence(self, frame: dict[str, Any], fid: int | None) -> None:
        result = await self.hub.presence(self.session.identity, frame.get("room"))  # type: ignore[arg-type]
        self.reply(fid, result)

    async def refresh(self, frame: dict[str, Any], fid: int | None) -> None:
        """Replace the token: same ``sub`` required; rooms the new grants no longer cover are
        left with an ``error forbidden`` each (PROTOCOL.md §3 "Tokens on a live connection")."""
        session, hub = self.session, self.hub
        token = frame.get("token")
        if not isinstance(token, str):
            raise BadRequest("refresh needs a token")
        try:
            ident = hub.auth.authenticate(token)
        except Unauthorized:
            hub.metrics.auth_failures += 1
            raise Forbidden("token refused; the old token stays") from None
        if ident.sub != session.identity.sub or ident.api_key != session.identity.api_key:
            raise Forbidden("the new token must have the same sub; the old token stays")
        session.identity = ident
        session.arm_expiry(self.expiring)
        for room, sub in list(session.subs.items()):
            if not ident.can("subscribe", room) or (
                sub.presence and not ident.can("presence", room)
            ):
                await hub.unsubscribe(session, room)
                session.send(
                    Forbidden(f"grant for room {room} withdrawn", details={"room": room}).frame(
                        None
                    )
                )
        left = ident.expires_in()
        self.reply(fid, {"expires_in": None if left is None else round(left, 3)})

    async def signal(self, frame: dict[str, Any], fid: int | None) -> None:
        ident = self.session.identity
        if not ident.api_key:  # a signal is a publish for HUB_USER_PUBLISH_RATE too
            await self.hub.budget.take(ident.sub)
        await self.relay(self.hub, self.session, frame)
        self.reply(fid, {})

    async def ping(self, frame: dict[str, Any], fid: int | None) -> None:
        self.session.send({"type": "pong"})
        self.reply(fid, {})

    async def pong(self, frame: dict[str, Any], fid: int | None) -> None:
        self.reply(fid, {})
