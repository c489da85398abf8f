"""Hub: sessions, rooms, subscribe with recovery, publish, deliver, presence, control, drain.

The hub is transport-agnostic: WebSocket, SSE and HTTP all call the same methods and receive
errors from the one tree in :mod:`hub.errors`. Fan-out (:meth:`Hub.deliver`) is a plain ``def``
that never awaits: each local session's :meth:`Session.offer` either queues the frame or closes
a slow session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from hubbub.hub.auth import Authenticator, Identity
from hubbub.hub.brokers.base import Broker, Idempotency, Member, StateStore, backends_from_url
from hubbub.hub.brokers.memory_state import MemoryStateStore
from hubbub.hub.budgets import UserBudget
from hubbub.hub.delivery import Delivery
from hubbub.hub.envelope import (
    Position,
    check_event,
    check_room,
    encode_data,
    make_body,
    make_cursor,
    parse_since,
)
from hubbub.hub.errors import (
    CLOSE_KICKED,
    CLOSE_LIMIT,
    CLOSE_SHUTDOWN,
    BadRequest,
    BrokerError,
    Conflict,
    Disconnect,
    Forbidden,
    NotFound,
    RateLimited,
    RoomFull,
    Unavailable,
)
from hubbub.hub.metrics import Metrics
from hubbub.hub.ratelimit import TokenBucket
from hubbub.hub.recovery import Seam, gap_frame, go_live, replay
from hubbub.hub.room_agreement import RoomAgreement
from hubbub.hub.room_options import RoomOptions, RoomRules, check_room_access
from hubbub.hub.rooms import RoomIndex, RoomState
from hubbub.hub.session import SIGNAL, Control, Session, Subscription
from hubbub.hub.settings import Settings

if TYPE_CHECKING:
    from hubbub.hub.webhooks.service import Webhooks

log = logging.getLogger("hubbub.hub")

Reply = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class PreparedPublish:
    """A publication that passed every check but the broker's (see Hub.prepare_publish)."""

    room: str
    body: bytes
    ephemeral: bool
    idempotency: Idempotency | None
    session: Session | None


class Hub(Delivery):
    """One per node. Start with ``await hub.start()``, stop with ``await hub.stop()``.

    The broker and the state store come from ``settings.broker_url`` unless given; a broker
    given without a state store gets an in-process one (:mod:`hub.brokers.memory_state`)."""

    def __init__(
        self, settings: Settings, broker: Broker | None = None, state: StateStore | None = None
    ) -> None:
        self.settings = settings
        self.room_rules = RoomRules(settings)
        if broker is None:
            broker, default_state = backends_from_url(
                settings.broker_url,
                history_size=settings.history_size,
                history_ttl=settings.history_ttl,
                room_history=self.room_rules.history_of if self.room_rules.history_varies else None,
                longest_ttl=self.room_rules.longest_ttl(),
                prefix=settings.redis_prefix,
                presence_ttl=settings.presence_ttl,
                timeout=settings.broker_timeout,
            )
            state = state or default_state
        elif state is None:
            state = MemoryStateStore()
        self.broker: Broker = broker
        self.state: StateStore = state
        self.auth = Authenticator(settings)
        # HUB_USER_PUBLISH_RATE: cluster-wide through the state store unless it is this node's.
        shared = None if isinstance(state, MemoryStateStore) else state
        self.budget = UserBudget(settings.user_publish_rate, shared)
        self.node_id = secrets.token_hex(6)
        self.sessions: dict[str, Session] = {}
        self.by_user: dict[str, set[Session]] = {}
        self.rooms = RoomIndex()
        self.metrics = Metrics(node=self)
        # Admission control: sessions opening and subscriptions joining do their broker work
        # at most this many at once; the rest wait their turn here, and a broker call's
        # deadline starts only once it is let in. A reconnect storm then queues on the node
        # instead of timing out in the broker, which would be reported as an outage.
        self.admission = asyncio.Semaphore(settings.admission_concurrency)
        # The transports' handshakes (token check, upgrade, session) take turns the same way.
        self.handshakes = asyncio.Semaphore(settings.handshake_concurrency)
        self.broker_up = False
        self.draining = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.room_agreement: RoomAgreement | None = None  # Redis: do all nodes agree?
        # Built by start() when HUB_WEBHOOK_URLS is set; None costs one check per hook.
        self.webhooks: Webhooks | None = None
        self._state_started = False  # resync loads revocations once the state store started

    # ---- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.broker.start(self, self.node_id)
        await self.state.start(self.node_id)
        self._state_started = True
        if self.broker_up:  # else the load follows the broker's first connection (resync)
            await self.load_revocations()
        if hasattr(self.broker, "script") and hasattr(self.broker, "run"):  # Redis
            ttl = self.settings.presence_ttl
            self.room_agreement = RoomAgreement(
                self.broker, self.node_id, self.room_rules.digest(), ttl=ttl,
                interval=min(5.0, ttl / 3),
            )  # fmt: skip
            self.room_agreement.start()
        if self.settings.webhook_urls and self.webhooks is None:
            from hubbub.hub.webhooks.service import Webhooks

            self.webhooks = Webhooks(self.settings, self.broker, self.node_id, self.room_rules)
            await self.webhooks.start()

    async def stop(self) -> None:
        if self.webhooks is not None:
            await self.webhooks.stop()
        for task in list(self._tasks):
            task.cancel()
        for s in list(self.sessions.values()):
            s.close(CLOSE_SHUTDOWN, "server shutting down")
        if self.room_agreement is not None:
            await self.room_agreement.close()
        try:
            await self.state.close()
        finally:
            await self.broker.close()

    async def drain(self, window: float = 1.0) -> None:
        """Refuse new sessions and close existing ones with 4000, spread over ``window`` s."""
        self.draining = True
        sessions = list(self.sessions.values())
        batch = max(1, len(sessions) // 10)
        for i in range(0, len(sessions), batch):
            for s in sessions[i : i + batch]:
                s.close(CLOSE_SHUTDOWN, "server shutting down: reconnect elsewhere")
            if i + batch < len(sessions):
                await asyncio.sleep(window / 10)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def ready(self) -> bool:
        if self.draining:
            return False
        if self.room_agreement is not None and self.room_agreement.mismatch:
            return False  # its room options differ from the cluster's (logged)
        try:
            return await asyncio.wait_for(self.broker.ready(), self.settings.broker_timeout)
        except (TimeoutError, BrokerError, OSError):
            return False

    # ---- sessions --------------------------------------------------------------------------
    async def open_session(self, identity: Identity, transport: str) -> Session:
        """Register a session. Raises Disconnect(4000) while draining, Disconnect(4510) over the
        per-user connection limit, Disconnect(4509) when the user's token was revoked since it
        was checked, Unavailable when the broker is down."""
        if self.draining:
            raise Disconnect(CLOSE_SHUTDOWN, "server draining")
        s = self.settings
        session = Session(
            identity,
            transport,
            max_queue=s.max_queue,
            max_queue_bytes=s.max_queue_bytes,
            # Backends (API keys) are limited per key over HTTP, not per session.
            publish_rate=None if identity.api_key else s.client_publish_rate,
        )
        limit = 0 if identity.api_key else s.max_connections_per_user
        if limit:  # the cluster-wide count decides: wait for it
            try:
                async with self.admission:
                    count = await self.state.connection_add(identity.sub, session.id)
            except BrokerError:
                with contextlib.suppress(BrokerError):  # forget it locally too
                    await self.state.connection_remove(identity.sub, session.id)
                raise Unavailable("broker unavailable") from None
            if count > limit:
                with contextlib.suppress(BrokerError):
                    await self.state.connection_remove(identity.sub, session.id)
                raise Disconnect(CLOSE_LIMIT, "connection limit reached")
        else:
            # Nothing waits on the count: the registration is written in the background (one
            # Redis round trip fewer per connect); the state store keeps it and its refresh
            # loop writes it again should this write fail. A broker known to be down (its
            # link says so, no round trip) still refuses the session, as the count would.
            if not self.broker_up:
                raise Unavailable("broker unavailable")
            self.state.connection_add_nowait(identity.sub, session.id)
        if not identity.api_key and self.auth.revocations.refuses(identity.sub, identity.iat):
            # Revoked while it was opening: the kick came before the session was registered.
            with contextlib.suppress(BrokerError):
                await self.state.connection_remove(identity.sub, session.id)
            raise Disconnect(CLOSE_KICKED, "token revoked")
        self.sessions[session.id] = session
        self.by_user.setdefault(identity.sub, set()).add(session)
        self.metrics.connections[transport] += 1
        if self.webhooks is not None:
            self.webhooks.connected(identity.sub, session.id, transport)
        log.info("session %s opened: user %s via %s", session.id, identity.sub, transport,
                 extra=_log_context(session))  # fmt: skip
        return session

    async def close_session(self, session: Session) -> None:
        """Forget a session: leave its rooms and presence. Idempotent; never raises."""
        if self.sessions.pop(session.id, None) is None:
            return
        session.cancel_timers()
        if session.closed is None:
            session.close(1000, "closed")
        users = self.by_user.get(session.identity.sub)
        if users is not None:
            users.discard(session)
            if not users:
                del self.by_user[session.identity.sub]
        self.metrics.connections[session.transport] -= 1
        closed = session.closed
        if closed is not None:  # every transport: slow consumer 4001, heartbeat 4002, drain…
            self.metrics.disconnects[closed.code] += 1
        log.info("session %s closed: %s %s", session.id, closed and closed.code,
                 closed and closed.reason, extra=_log_context(session))  # fmt: skip
        for room in list(session.subs):
            with contextlib.suppress(Exception):
                await self.unsubscribe(session, room)
        with contextlib.suppress(Exception):
            await self.state.connection_remove(session.identity.sub, session.id)
        if self.webhooks is not None:
            self.webhooks.disconnected(session.identity.sub, session.id, session.transport)

    # ---- rooms -------------------------------------------------------------------------------
    def is_call_room(self, room: str) -> bool:
        return self.room_rules.is_call_room(room)

    def room_options(self, ident: Identity, room: str, action: str) -> RoomOptions | None:
        """The options of ``room`` when [[rooms]] tables exist (None otherwise: the global
        settings apply), after refusing a guest where guests are not allowed."""
        if not self.room_rules.active:
            return None
        opts = self.room_rules.get(room)
        check_room_access(opts, ident, room, action)
        return opts

    async def _join_room(self, name: str) -> RoomState:
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms.create(name)
            room.ready = asyncio.get_running_loop().create_future()
            subscribed = False
            try:
                await self.broker.subscribe(name)
                subscribed = True
                room.epoch, room.offset = await self.broker.position(name)
            except BaseException as exc:
                self.rooms.drop(name)
                if subscribed:  # do not stay on the room's channel with no room behind it
                    with contextlib.suppress(BrokerError):
                        await self.broker.unsubscribe(name)
                room.ready.set_exception(Unavailable("broker unavailable"))
                room.ready.exception()  # mark retrieved
                if isinstance(exc, BrokerError):
                    raise Unavailable("broker unavailable") from None
                raise
            room.ready.set_result(None)
            if self.webhooks is not None:
                self.webhooks.room_up(name)
            if room.pending:
                self._start_catch_up(room)
        else:
            assert room.ready is not None
            await asyncio.shield(room.ready)
        return room

    async def subscribe(
        self,
        session: Session,
        name: str,
        *,
        since: Any = None,
        history: Any = None,
        presence: bool = False,
        reply: Reply | None = None,
    ) -> dict[str, Any]:
        """Join ``name`` with recovery (PROTOCOL.md §3 "Subscribe, recovery and the live
        boundary"). Replayed frames are queued before ``reply(result)`` is called; live ones
        after. A replay goes a page at a time (``HUB_MAX_REPLY_BYTES``) as the transport
        writes it; a client that does not take a page within ``HUB_PING_INTERVAL`` is closed
        with 4001 (:func:`hub.recovery.replay`). Raises Forbidden, Conflict, BadRequest,
        RoomFull, Unavailable."""
        check_room(name)
        ident = session.identity
        if not ident.can("subscribe", name):
            raise Forbidden(f"no subscribe grant for room {name}", details={"room": name})
        if presence and not ident.can("presence", name):
            raise Forbidden(f"no presence grant for room {name}", details={"room": name})
        opts = self.room_options(ident, name, "presence" if presence else "subscribe")
        if name in session.subs:
            raise Conflict(f"already subscribed to {name}", details={"room": name})
        limit = self.settings.max_subscriptions
        if len(session.subs) >= limit:
            raise Forbidden(
                f"subscription limit reached: at most {limit} rooms per session "
                "(HUB_MAX_SUBSCRIPTIONS)",
                details={"limit": limit},
            )
        if history is not None and (
            isinstance(history, bool) or not isinstance(history, int) or history < 0
        ):
            raise BadRequest("history must be an integer >= 0")
        pos: Position | None = None
        if since is not None:
            try:
                pos = parse_since(since, [name]).get(name)
            except BadRequest:
                pos = Position("-", 0)  # unparseable: gap from 1, then everything retained
        resumed = None
        if opts is not None:
            await self._check_subscribers(opts, name)
            if pos is not None and not opts.recover:  # no replay: a gap, then live
                resumed, pos, history = pos, None, None
        if presence and self.is_call_room(name):
            members = await self._presence_members(name)
            peers = self.room_rules.max_peers(name)
            if len(members) >= peers:
                raise RoomFull(
                    f"call room {name} is full ({peers} peers)",
                    details={"room": name, "limit": peers},
                )
        sub = Subscription(name, presence=presence)
        session.subs[name] = sub
        counted = False
        try:
            async with self.admission:
                room = await self._join_room(name)
                room.subs[session] = sub
                # The rooms listing's count: written in the background (the state store keeps
                # this node's counts and its refresh loop writes them again after a failure).
                self.state.room_sessions_nowait(name, 1)
                counted = True
                seam: Seam = await replay(
                    self.broker, session, name, pos, history,
                    page_bytes=self.settings.max_reply_bytes,
                    patience=self.settings.ping_interval,
                )  # fmt: skip
                if resumed is not None:
                    _send_resume_gap(session, name, resumed, seam)
        except BaseException:
            session.subs.pop(name, None)
            if counted:
                self.state.room_sessions_nowait(name, -1)
            r = self.rooms.get(name)
            if r is not None and session in r.subs:
                del r.subs[session]
                await self._maybe_leave_room(r)
            raise
        result: dict[str, Any] = {"room": name}
        if presence:
            member = self._member(session, name)
            # Call rooms: the cap is enforced atomically by the broker (the check above only
            # saves a replay); concurrent joins on several nodes cannot overfill the room.
            cap = self.room_rules.max_peers(name) if self.is_call_room(name) else None
            try:
                await self.state.presence_add(member, limit=cap)
                if self.webhooks is not None:
                    self.webhooks.member_up(member)
                if opts is None or opts.join_leave:
                    await self.broker.publish_frame(name, self._presence_frame("join", member))
                result["presence"] = [m.public() for m in await self._presence_members(name)]
            except RoomFull:
                sub.presence = False  # never announced: leave without a leave frame
                await self.unsubscribe(session, name)
                raise
            except BrokerError:
                await self.unsubscribe(session, name)
                raise Unavailable("broker unavailable") from None
        go_live(session, sub, seam, reply, result)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("session %s subscribed to %s (recovered %s)", session.id, name,
                      seam.recovered, extra={**_log_context(session), "room": name})  # fmt: skip
        self.metrics.recoveries["recovered" if seam.recovered else "live"] += 1
        return result

    async def unsubscribe(self, session: Session, name: str) -> None:
        """Leave a room (no error when not subscribed)."""
        sub = session.subs.pop(name, None)
        room = self.rooms.get(name)
        if sub is None or room is None:
            return
        room.subs.pop(session, None)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("session %s left %s", session.id, name,
                      extra={**_log_context(session), "room": name})  # fmt: skip
        self.state.room_sessions_nowait(name, -1)
        try:
            if sub.presence:
                member = self._member(session, name)
                if self.webhooks is not None:
                    self.webhooks.member_down(member)
                await self.state.presence_remove(name, session.id)
                if self.room_rules.get(name).join_leave:
                    await self.broker.publish_frame(name, self._presence_frame("leave", member))
        finally:
            await self._maybe_leave_room(room)

    async def _check_subscribers(self, opts: RoomOptions, name: str) -> None:
        """Refuse with RoomFull when ``name`` already has ``max_subscribers`` sessions on all
        nodes (counted from the rooms listing: subscribers joining at the same moment on
        several nodes may pass the limit together)."""
        limit = opts.max_subscribers
        if not limit:
            return
        try:
            rooms, _ = await self.state.list_rooms(name, None, 1)
        except BrokerError:
            raise Unavailable("broker unavailable") from None
        if rooms and rooms[0][0] == name and rooms[0][1] >= limit:
            raise RoomFull(
                f"room {name} is full ({limit} subscribers)",
                details={"room": name, "limit": limit},
            )

    async def _maybe_leave_room(self, room: RoomState) -> None:
        if not room.subs and self.rooms.get(room.name) is room:
            self.rooms.drop(room.name)
            if self.webhooks is not None:
                self.webhooks.room_down(room.name)
            with contextlib.suppress(BrokerError):
                await self.broker.unsubscribe(room.name)

    # ---- presence ----------------------------------------------------------------------------
    def _member(self, session: Session, room: str) -> Member:
        ident = session.identity
        return Member(
            room=room,
            session=session.id,
            user=ident.sub,
            transport=session.transport,
            node=self.node_id,
            name=ident.name,
            info=ident.info,
        )

    @staticmethod
    def _presence_frame(kind: str, member: Member) -> bytes:
        return orjson.dumps({"type": kind, "room": member.room, **member.public()})

    async def _presence_members(self, room: str) -> list[Member]:
        try:
            return await self.state.presence_list(room)
        except BrokerError:
            raise Unavailable("broker unavailable") from None

    async def presence(self, ident: Identity, room: str) -> dict[str, Any]:
        """The presence body of PROTOCOL.md §5. Raises Forbidden without the presence grant."""
        check_room(room)
        if not ident.can("presence", room):
            raise Forbidden(f"no presence grant for room {room}", details={"room": room})
        self.room_options(ident, room, "presence")
        members = await self._presence_members(room)
        return {
            "members": [m.public() for m in members],
            "users": len({m.user for m in members}),
            "sessions": len(members),
        }

    # ---- publish -----------------------------------------------------------------------------
    async def publish(
        self,
        ident: Identity,
        room: str,
        data: Any,
        *,
        event: Any = None,
        ephemeral: Any = False,
        key: Any = None,
        session: Session | None = None,
    ) -> dict[str, Any]:
        """Publish and return the publish result of PROTOCOL.md §3/§5.

        Raises BadRequest, Forbidden, TooLarge, Conflict (idempotency), Unavailable."""
        prepared = self.prepare_publish(
            ident, room, data, event=event, ephemeral=ephemeral, key=key, session=session
        )
        if not ident.api_key:
            try:
                await self.budget.take(ident.sub)
            except RateLimited:
                self.metrics.rate_limited += 1
                raise
            if session is None and self.room_rules.active:
                await self._take_room_rate(ident, prepared.room)
        return await self.publish_prepared(prepared)

    async def _take_room_rate(self, ident: Identity, room: str) -> None:
        """A room's ``publish_rate`` for a client without a session (HTTP): one bucket per
        credential and room, shared by the cluster. Raises RateLimited, Unavailable."""
        rate = self.room_rules.get(room).publish_rate
        if not rate.enabled:
            return
        try:
            allowed, _, _ = await self.state.take(
                f"room-pub:{room}:{ident.scope or ident.sub}", rate.rate, rate.burst
            )
        except BrokerError:
            raise Unavailable("broker unavailable") from None
        if not allowed:
            self.metrics.rate_limited += 1
            raise RateLimited(
                f"publish rate of room {room} exceeded: {rate.rate:g}/s ([[rooms]] publish_rate)",
                limit="[[rooms]] publish_rate",
                details={"room": room},
                retry_after=max(1.0, 1.0 / rate.rate),
            )

    def prepare_publish(
        self,
        ident: Identity,
        room: str,
        data: Any,
        *,
        event: Any = None,
        ephemeral: Any = False,
        key: Any = None,
        session: Session | None = None,
    ) -> PreparedPublish:
        """Every check of :meth:`publish` that needs no broker (room, event, grant, size,
        idempotency key), and the body. Raises BadRequest, Forbidden, TooLarge."""
        check_room(room)
        check_event(event)
        if not isinstance(ephemeral, bool):
            raise BadRequest("ephemeral must be a boolean")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 256):
            raise BadRequest("idempotency key must be a string of 1 to 256 characters")
        if not ident.can("publish", room):
            raise Forbidden(f"no publish grant for room {room}", details={"room": room})
        limit = self.settings.max_message_bytes
        if self.room_rules.active:
            opts = self.room_rules.get(room)
            check_room_access(opts, ident, room, "publish")
            limit = opts.max_message_bytes
            if session is not None and opts.publish_rate.enabled and not ident.api_key:
                _take_session_room_rate(session, room, opts)
        data_json = encode_data(data, limit)
        sender = None
        if not ident.api_key:
            sender = {"user": ident.sub}
            if session is not None:
                sender["session"] = session.id
        body = make_body(room, data_json, event=event, sender=sender)
        idem = None
        if key is not None:
            fp = hashlib.sha256(
                orjson.dumps([room, event, ephemeral]) + b"\0" + data_json
            ).hexdigest()
            idem = Idempotency(scope=ident.scope or f"sub:{ident.sub}", key=key, fingerprint=fp)
        return PreparedPublish(room, body, ephemeral, idem, session)

    async def publish_prepared(self, p: PreparedPublish) -> dict[str, Any]:
        """The broker half of :meth:`publish`. The broker call is made before this coroutine
        first suspends, so publish coroutines started in some order reach the broker in that
        order (what lets a connection have several publications in flight and keep their
        order). Raises Conflict (idempotency), Unavailable."""
        room = p.room
        try:
            started = time.perf_counter()
            res = await self.broker.publish(
                room, p.body, ephemeral=p.ephemeral, idempotency=p.idempotency
            )
            self.metrics.publish_latency.observe(time.perf_counter() - started)
        except BrokerError:
            raise Unavailable("broker unavailable", retry_after=1.0) from None
        if not res.duplicate:
            self.metrics.publications += 1
            self.metrics.published[p.session.transport if p.session is not None else "http"] += 1
            wh = self.webhooks
            if wh is not None and wh.messages:
                wh.published(room, p.body, res.offset, res.epoch)
        if res.offset is None:
            return {"room": room, "ephemeral": True}
        assert res.epoch is not None
        return {
            "room": room,
            "offset": res.offset,
            "epoch": res.epoch,
            "cursor": make_cursor({room: Position(res.epoch, res.offset)}),
        }

    # ---- history -----------------------------------------------------------------------------
    async def history(
        self, ident: Identity, room: str, *, since: Any = None, limit: Any = 100
    ) -> dict[str, Any]:
        """The history body of PROTOCOL.md §5; messages are raw JSON fragments. A page stops
        before the message that would take it past ``HUB_MAX_REPLY_BYTES`` (it holds at least
        one), with ``more: true``: ``since=cursor`` continues it (PROTOCOL.md §8)."""
        check_room(room)
        if not ident.can("subscribe", room):
            raise Forbidden(f"no subscribe grant for room {room}", details={"room": room})
        self.room_options(ident, room, "history")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise BadRequest("limit must be an integer >= 1")
        limit = min(limit, 1000)
        pos: Position | None = None
        if since is not None:
            pos = parse_since(since, [room]).get(room)
        size = self.settings.max_reply_bytes
        try:
            if since is None:
                page = await self.broker.history(room, after=None, limit=limit, max_bytes=size)
                pubs = page.publications
                first = pubs[0].offset if pubs else page.head + 1
                complete = page.first <= 1
                # Older ones before the page, or (cut by bytes) newer ones after it.
                more = bool(pubs) and ((first or 0) > page.first
                                       or (pubs[-1].offset or 0) < page.head)  # fmt: skip
            elif pos is None:  # the cursor does not mention this room: start live
                epoch, head = await self.broker.position(room)
                return {"messages": [], "cursor": make_cursor({room: Position(epoch, head)}),
                        "epoch": epoch, "more": False, "complete": True}  # fmt: skip
            else:
                page = await self.broker.history(
                    room, after=pos.offset, limit=limit, max_bytes=size
                )
                complete = True
                if (pos.epoch is not None and pos.epoch != page.epoch) or pos.offset > page.head:
                    complete = False
                    page = await self.broker.history(room, after=0, limit=limit, max_bytes=size)
                elif pos.offset + 1 < page.first:
                    complete = False
                pubs = page.publications
                more = bool(pubs) and (pubs[-1].offset or 0) < page.head
        except BrokerError:
            raise Unavailable("broker unavailable") from None
        last = pubs[-1].offset if pubs else page.head
        return {
            "messages": [orjson.Fragment(p.frame) for p in pubs],
            "cursor": make_cursor({room: Position(page.epoch, last or 0)}),
            "epoch": page.epoch,
            "more": more,
            "complete": complete,
        }

    # ---- directed frames (signaling) -------------------------------------------------------
    async def direct(self, session: Session, room: str, to: Any, frame: dict[str, Any]) -> None:
        """Send ``frame`` (a signaling frame: a :class:`Control` of kind ``signal``) to session
        ``to``, a presence member of ``room`` on any node. The sender must be a presence
        member. Raises Forbidden, NotFound, Unavailable."""
        sub = session.subs.get(room)
        if sub is None or not sub.presence:
            raise Forbidden(f"not a presence member of {room}", details={"room": room})
        if not isinstance(to, str) or not 0 < len(to) <= 64:
            raise BadRequest("to must be a session id")
        text = orjson.dumps(frame).decode()
        local = self.sessions.get(to)
        if local is not None:  # on this node: its own subscription says whether it is a member
            local_sub = local.subs.get(room)
            if local_sub is None or not local_sub.presence:
                raise NotFound(f"no session {to} in {room}", details={"room": room})
            local.offer(Control(SIGNAL, text.encode()))
            return
        target = next((m for m in await self._presence_members(room) if m.session == to), None)
        if target is None:
            raise NotFound(f"no session {to} in {room}", details={"room": room})
        try:
            await self.broker.send_control({"t": "direct", "to": to, "frame": text}, target.node)
        except BrokerError:
            raise Unavailable("broker unavailable") from None

    # ---- kicks -------------------------------------------------------------------------------
    async def disconnect_user(self, user: str, reason: str = "disconnected by the server") -> int:
        """Close every session of ``user`` on every node with 4509; returns how many."""
        try:
            n = await self.state.connection_count(user)
            await self.broker.send_control({"t": "kick", "user": user, "reason": reason})
        except BrokerError:
            raise Unavailable("broker unavailable") from None
        return n

    # ---- revocation (PROTOCOL.md §8 "Limits and abuse") -----------------------------------
    async def revoke_user(
        self, user: str, reason: str = "disconnected by the server"
    ) -> tuple[int, int]:
        """Revoke every token of ``user`` issued until now (``iat`` at or before the cutoff, or
        none), on every node, and close the user's sessions everywhere with 4509. Returns
        (sessions closed, cutoff in Unix seconds). The cutoff is stored first (a node that
        starts or reconnects later loads it), then announced with the kick on the control
        channel (each node adds it to its table). Raises Unavailable."""
        cutoff = int(time.time())
        keep = self.settings.jwt_max_ttl
        self.auth.revocations.add(user, cutoff)  # this node refuses at once
        try:
            await self.state.revoke(user, cutoff, keep)
            n = await self.state.connection_count(user)
            await self.broker.send_control(
                {"t": "kick", "user": user, "reason": reason, "revoked_before": cutoff}
            )
        except BrokerError:
            raise Unavailable("broker unavailable") from None
        log.info("tokens of user %s issued until %d revoked", user, cutoff)
        return n, cutoff

    async def load_revocations(self) -> None:
        """Add the revocations the state store holds to this node's table (at start and after
        every broker reconnection: announcements sent meanwhile may have been missed). Never
        raises; a failure is logged and repaired by the next reconnection."""
        try:
            entries = await self.state.revocations(self.settings.jwt_max_ttl)
        except BrokerError:
            log.warning("could not load token revocations (broker unavailable)")
            return
        self.auth.revocations.merge(entries)

    def resync(self) -> None:
        super().resync()
        if self._state_started:
            self.spawn(self.load_revocations())


def _take_session_room_rate(session: Session, room: str, opts: RoomOptions) -> None:
    """A room's ``publish_rate`` for one session. Raises RateLimited."""
    rates = session.room_rates
    if rates is None:
        rates = session.room_rates = {}
    bucket = rates.get(room)
    if bucket is None:
        if len(rates) >= 1024:  # bounded: a session publishing to many rooms starts afresh
            rates.clear()
        bucket = rates[room] = TokenBucket.of(opts.publish_rate)
    if not bucket.take():
        raise RateLimited(
            f"publish rate of room {room} exceeded: {opts.publish_rate.rate:g}/s "
            "([[rooms]] publish_rate)",
            limit="[[rooms]] publish_rate",
            details={"room": room},
        )


def _send_resume_gap(session: Session, room: str, since: Position, seam: Seam) -> None:
    """A room without recovery: what the session asked to resume is skipped, said by a gap."""
    if (since.epoch is not None and since.epoch != seam.epoch) or since.offset > seam.offset:
        session.send(gap_frame(room, seam.epoch, 1, seam.offset))
    elif since.offset < seam.offset:
        session.send(gap_frame(room, seam.epoch, since.offset + 1, seam.offset))


def _log_context(session: Session) -> dict[str, Any]:
    """Fields for structured (``HUB_LOG_FORMAT=json``) log lines about a session."""
    return {
        "session": session.id,
        "user": session.identity.sub,
        "transport": session.transport,
    }
