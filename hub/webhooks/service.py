"""The webhooks of one node: what the hub reports, which events that makes, and delivery.

The hub calls plain, non-blocking methods (:meth:`Webhooks.room_up`, ``room_down``,
``member_up``, ``member_down``, ``connected``, ``disconnected``, ``published``); each only
appends to a local list when its event type is enabled: in ``HUB_WEBHOOK_EVENTS``, or for the
room events (``room.*``, ``member.*``, ``message.published``) in the room's ``webhook_events``
when a ``[[rooms]]`` table sets it (:class:`~hub.room_options.RoomRules`, looked up per room
only when some table sets the key; the lookup is cached). A room whose events include neither
``room.*`` nor ``member.*`` makes no reports, so no transition is tracked for it. One task
turns room and member reports into events, in order, through the cluster-wide transitions
(:mod:`hub.webhooks.transitions`); another writes events to every endpoint's queue
(:mod:`hub.webhooks.queues`); one :class:`~hub.webhooks.dispatch.Dispatcher` per endpoint
delivers. A node built without ``HUB_WEBHOOK_URLS`` has no Webhooks object at all.

Event shape (docs/webhooks.md): ``{"id", "type", "ts", ...}`` with ``room`` (a name),
``member`` (the presence member object), ``user`` and ``session`` (ids), ``transport`` or
``message`` (the ``message`` frame) as the type needs. ``id`` is unique per event (receivers
deduplicate by it: delivery is at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets as _secrets
import time
from collections import deque
from typing import Any

import httpx
import orjson

from hubbub.hub.brokers.base import Broker, Member
from hubbub.hub.errors import BrokerError
from hubbub.hub.room_options import RoomRules
from hubbub.hub.settings import Settings
from hubbub.hub.webhooks.dispatch import Dispatcher
from hubbub.hub.webhooks.queues import MemoryQueue, Queue, RedisQueue
from hubbub.hub.webhooks.transitions import MemoryTransitions, RedisTransitions, Transitions

log = logging.getLogger("hubbub.webhooks")

MAX_BUFFER = 100_000  # reports or events held while Redis is unreachable; beyond: dropped
_ROOM_KINDS = frozenset({"room.occupied", "room.vacated"})
_MEMBER_KINDS = frozenset({"member.joined", "member.left"})


def endpoint_id(url: str) -> str:
    """A short stable id of an endpoint URL, for its Redis keys (the URL itself may hold a
    token)."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


class Webhooks:
    """Events and delivery of one node. ``start`` after the broker, ``stop`` before it.
    ``rules``: the node's per-room options, for the tables' ``webhook_events`` (without it,
    or when no table sets the key, ``HUB_WEBHOOK_EVENTS`` applies to every room).
    Keyword arguments tune timing for tests: ``window`` (batch gathering, 1 s), ``backoff``
    (first retry wait, 1 s) and ``backoff_cap`` (60 s), ``poll`` (0.25 s), ``visibility``
    (lease life, 2 * HUB_WEBHOOK_TIMEOUT + 1 s)."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        node: str,
        rules: RoomRules | None = None,
        **tuning: Any,
    ) -> None:
        self.settings = settings
        self.node = node
        self.enabled = frozenset(settings.webhook_events)
        # Per-room events when a [[rooms]] table sets webhook_events; None: HUB_WEBHOOK_EVENTS.
        self.rules = rules if rules is not None and rules.webhooks_vary else None
        possible = self.enabled if self.rules is None else self.rules.webhook_events()
        # Whether any room may want each kind; per room, _sends decides.
        self.rooms = bool(possible & _ROOM_KINDS)
        self.members = bool(possible & _MEMBER_KINDS)
        self.messages = "message.published" in possible
        self.visibility = float(tuning.pop("visibility", 2 * settings.webhook_timeout + 1))
        redis = _redis_of(broker)
        self.transitions: Transitions
        if redis is not None:
            self.transitions = RedisTransitions(redis, node, settings.webhook_vacated_delay)
        else:
            self.transitions = MemoryTransitions(node, settings.webhook_vacated_delay)
        # One connection pool for every endpoint; created here, closed by stop().
        self.client = httpx.AsyncClient(
            timeout=settings.webhook_timeout, follow_redirects=False, trust_env=False
        )
        self.dispatchers: list[Dispatcher] = []
        for url in settings.webhook_urls:
            queue: Queue
            if redis is not None:
                queue = RedisQueue(redis, endpoint_id(url), node, self.visibility)
            else:
                queue = MemoryQueue()
            self.dispatchers.append(
                Dispatcher(
                    url, queue, self.client, settings.webhook_secret,
                    timeout=settings.webhook_timeout, max_age=settings.webhook_max_age,
                    visibility=self.visibility, **tuning,
                )
            )  # fmt: skip
        self._reports: deque[tuple[str, Any, str]] = deque()  # (kind, argument, op id)
        self._events: deque[tuple[int, bytes]] = deque()
        self._reports_wake = asyncio.Event()
        self._events_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self.lost = 0  # reports and events dropped because the buffer was full
        self.stopped = False

    # ---- life cycle --------------------------------------------------------------------------
    async def start(self) -> None:
        with contextlib.suppress(BrokerError):
            await self.transitions.start()
        for d in self.dispatchers:
            with contextlib.suppress(BrokerError):
                await d.queue.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._report_loop(), name="webhook-reports"))
        self._tasks.append(loop.create_task(self._event_loop(), name="webhook-events"))
        if self.rooms or self.members:
            self._tasks.append(loop.create_task(self._reap_loop(), name="webhook-reaper"))
        for d in self.dispatchers:
            self._tasks.append(loop.create_task(d.run(), name=f"webhook {d.label}"))

    async def stop(self, flush: float = 1.0) -> None:
        """Turn pending reports into events and queue them, and (memory queues) give delivery
        a chance to empty the queues, for at most ``flush`` seconds in all; then stop
        delivering (a batch in flight stays queued: with Redis another node sends it; in
        memory it is lost) and give the leases back."""
        if self.stopped:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush):
                while self._reports or self._events or self._busy or self._in_memory():
                    await asyncio.sleep(0.01)
        if self.rooms or self.members:
            with contextlib.suppress(BrokerError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.transitions.forget()
        self.stopped = True
        for timer in self._timers:
            timer.cancel()
        for d in self.dispatchers:
            d.stopped = True
            d.wake.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for d in self.dispatchers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await d.queue.close()
        await self.client.aclose()

    def _in_memory(self) -> bool:
        """Events still waiting in an in-process queue."""
        return any(isinstance(d.queue, MemoryQueue) and d.queue.pending for d in self.dispatchers)

    @property
    def _busy(self) -> bool:
        return self._reports_wake.is_set() or self._events_wake.is_set()

    # ---- what the hub reports (plain defs, never block) -------------------------------------
    def _report(self, kind: str, arg: Any) -> None:
        if self.stopped:
            return
        if len(self._reports) >= MAX_BUFFER:
            self.lost += 1
            return
        self._reports.append((kind, arg, _secrets.token_hex(8)))
        self._reports_wake.set()

    def _room_wants(self, room: str, kinds: frozenset[str]) -> bool:
        """Whether ``room`` sends any of ``kinds`` (only asked when tables set the events)."""
        assert self.rules is not None
        return not kinds.isdisjoint(self.rules.get(room).webhook_events)

    def room_up(self, room: str) -> None:
        """This node's first local session subscribed to ``room``."""
        if self.rooms and (self.rules is None or self._room_wants(room, _ROOM_KINDS)):
            self._report("up", room)

    def room_down(self, room: str) -> None:
        """This node's last local session left ``room``."""
        if self.rooms and (self.rules is None or self._room_wants(room, _ROOM_KINDS)):
            self._report("down", room)

    def member_up(self, member: Member) -> None:
        if self.members and (self.rules is None or self._room_wants(member.room, _MEMBER_KINDS)):
            self._report("mup", member)

    def member_down(self, member: Member) -> None:
        if self.members and (self.rules is None or self._room_wants(member.room, _MEMBER_KINDS)):
            self._report("mdown", member)

    def connected(self, user: str, session: str, transport: str) -> None:
        """A session opened (reported in order with the room and member reports)."""
        if "user.connected" in self.enabled:
            self._report("conn", ("user.connected", user, session, transport))

    def disconnected(self, user: str, session: str, transport: str) -> None:
        if "user.disconnected" in self.enabled:
            self._report("conn", ("user.disconnected", user, session, transport))

    def published(self, room: str, body: bytes, offset: int | None, epoch: str | None) -> None:
        """A publication was accepted (not an idempotent repeat). ``body``: its message body
        (:func:`hub.envelope.make_body`); offset and epoch are added when stored. The hub
        calls it only when :attr:`messages` is True."""
        if self.rules is not None and not self._sends("message.published", room):
            return
        if offset is not None:
            body = body[:-1] + b',"offset":%d,"epoch":%b}' % (offset, orjson.dumps(epoch))
        self.emit("message.published", room=room, message=orjson.Fragment(body))

    # ---- events -------------------------------------------------------------------------------
    def _sends(self, kind: str, room: str | None) -> bool:
        """Whether events of type ``kind`` about ``room`` (None: about no room) are sent."""
        if self.rules is None or room is None:
            return kind in self.enabled
        return kind in self.rules.get(room).webhook_events

    def emit(self, kind: str, **fields: Any) -> None:
        """Queue one event of type ``kind`` (if enabled, for its ``room`` when it has one) for
        every endpoint."""
        if self.stopped or not self._sends(kind, fields.get("room")):
            return
        if len(self._events) >= MAX_BUFFER:
            self.lost += 1
            return
        ts = int(time.time() * 1000)
        event = {"id": "evt_" + _secrets.token_hex(12), "type": kind, "ts": ts, **fields}
        self._events.append((ts, orjson.dumps(event)))
        self._events_wake.set()

    async def _event_loop(self) -> None:
        while True:
            await self._events_wake.wait()
            items = list(self._events)
            try:
                for d in self.dispatchers:
                    await d.queue.push(items)
            except BrokerError as exc:
                log.debug("webhook events not queued yet (redis): %r", exc.__cause__)
                await asyncio.sleep(0.5)
                continue  # all again: a partial push repeats some events (at least once)
            for _ in items:
                self._events.popleft()
            if not self._events:
                self._events_wake.clear()
            for d in self.dispatchers:
                d.wake.set()

    async def _report_loop(self) -> None:
        while True:
            await self._reports_wake.wait()
            while self._reports:
                kind, arg, op = self._reports[0]
                try:
                    await self._apply(kind, arg, op)
                except BrokerError as exc:
                    log.debug("webhook transition waits for redis: %r", exc.__cause__)
                    await asyncio.sleep(0.5)
                    continue
                self._reports.popleft()
            self._reports_wake.clear()

    async def _apply(self, kind: str, arg: Any, op: str) -> None:
        """Turn one report into events. Raises BrokerError; then it is applied again with the
        same ``op``, so the transition is decided once even if the failed attempt ran."""
        t = self.transitions
        if kind == "up":
            res = await t.room_up(arg, op)
            if res == 2:
                self.emit("room.vacated", room=arg)
            if res:
                self.emit("room.occupied", room=arg)
        elif kind == "down":
            token = await t.room_down(arg, op)
            if token is not None:
                self._schedule_check(arg, token)
        elif kind == "check":
            room, token = arg
            if await t.vacate_check(room, token, op):
                self.emit("room.vacated", room=room)
        elif kind == "mup":
            m: Member = arg
            if await t.member_up(m, op):
                self.emit("member.joined", room=m.room, member=m.public())
        elif kind == "mdown":
            m = arg
            if await t.member_down(m, op):
                self.emit("member.left", room=m.room, member=m.public())
        elif kind == "reap":
            reaped = await t.reap(self.settings.presence_ttl)
            for room, member in reaped.left:
                self.emit("member.left", room=room, member=member)
            for room in reaped.vacated:
                self.emit("room.vacated", room=room)
            for room, token in reaped.checks:
                self._schedule_check(room, token)
        elif kind == "conn":
            kind, user, session, transport = arg
            self.emit(kind, user=user, session=session, transport=transport)

    async def _reap_loop(self) -> None:
        """Every third of ``HUB_PRESENCE_TTL``: this node is alive, and the nodes that stopped
        saying so are reaped (in order with the other reports)."""
        while True:
            if not any(r[0] == "reap" for r in self._reports):
                self._report("reap", None)
            await asyncio.sleep(self.settings.presence_ttl / 3)

    def _schedule_check(self, room: str, token: str) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(handle)
            self._report("check", (room, token))

        handle = loop.call_later(self.settings.webhook_vacated_delay, fire)
        self._timers.add(handle)

    # ---- numbers --------------------------------------------------------------------------------
    def stats(self) -> list[dict[str, Any]]:
        """Per endpoint: deliveries by result, dropped events, queue depth, oldest age."""
        return [d.stats() for d in self.dispatchers]

    def metric_lines(self) -> list[str]:
        """Prometheus lines: ``hubbub_webhook_deliveries_total{endpoint,result}``,
        ``hubbub_webhook_dropped_events_total``, ``hubbub_webhook_queue_depth`` and
        ``hubbub_webhook_oldest_event_age_seconds`` per endpoint."""
        out = [
            "# HELP hubbub_webhook_deliveries_total Webhook batches by result (ok, failed "
            "attempt, dropped after HUB_WEBHOOK_MAX_AGE).",
            "# TYPE hubbub_webhook_deliveries_total counter",
        ]
        stats = self.stats()
        for s in stats:
            for result, n in s["deliveries"].items():
                out.append(
                    f'hubbub_webhook_deliveries_total{{endpoint="{_label(s["endpoint"])}",'
                    f'result="{result}"}} {n}'
                )
        out.append(
            "# HELP hubbub_webhook_lost_total Webhook reports and events this node "
            "dropped because its buffer was full while Redis was unreachable."
        )
        out.append("# TYPE hubbub_webhook_lost_total counter")
        out.append(f"hubbub_webhook_lost_total {self.lost}")
        for name, key, kind, help_ in (
            ("webhook_dropped_events_total", "dropped_events", "counter",
             "Webhook events dropped after HUB_WEBHOOK_MAX_AGE."),
            ("webhook_queue_depth", "queue_depth", "gauge",
             "Webhook events waiting or in flight (as last read, about once a second)."),
            ("webhook_oldest_event_age_seconds", "oldest_age_seconds", "gauge",
             "Age of the oldest queued webhook event (0 when none)."),
        ):  # fmt: skip
            out.append(f"# HELP hubbub_{name} {help_}")
            out.append(f"# TYPE hubbub_{name} {kind}")
            for s in stats:
                value = s[key] or 0
                out.append(f'hubbub_{name}{{endpoint="{_label(s["endpoint"])}"}} {value:g}')
        return out


def _redis_of(broker: Broker) -> Any:
    """The broker when it is a RedisBroker (its connection pool carries the queues), else
    None."""
    from hubbub.hub.brokers.redis import RedisBroker

    return broker if isinstance(broker, RedisBroker) else None


def _label(value: str) -> str:
    """A Prometheus label value, escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
