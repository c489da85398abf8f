"""The node's side of fan-out: what the broker calls back into (:class:`NodeListener`).

:meth:`Delivery.deliver` is a plain ``def`` that never awaits. It checks continuity once per
room (not once per subscriber): the next offset is fanned out at once, a duplicate is dropped,
a hole or a new epoch holds the publication and starts a catch-up from history
(:func:`hub.recovery.catch_up`), which ends with the held publications or a ``gap``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hubbub.hub.auth import Authenticator
from hubbub.hub.brokers.base import Broker
from hubbub.hub.envelope import Publication
from hubbub.hub.errors import CLOSE_KICKED, CLOSE_SLOW, BrokerError
from hubbub.hub.metrics import Metrics
from hubbub.hub.recovery import catch_up
from hubbub.hub.rooms import RoomIndex, RoomState
from hubbub.hub.session import SIGNAL, Control, PresenceChange, Session
from hubbub.hub.settings import Settings

log = logging.getLogger("hubbub.hub")


class Delivery:
    """Mixin of :class:`hub.hub.Hub`: the NodeListener methods and the room fan-out."""

    broker: Broker
    rooms: RoomIndex
    metrics: Metrics
    sessions: dict[str, Session]
    by_user: dict[str, set[Session]]
    broker_up: bool
    auth: Authenticator
    settings: Settings

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        raise NotImplementedError

    # ---- NodeListener (called by the broker; never await) ----------------------------------
    def deliver(self, pub: Publication) -> None:
        room = self.rooms.get(pub.room)
        if room is None:
            return
        if not room.is_ready or room.catching_up:
            room.hold(pub)
            return
        if pub.offset is None:
            self._fanout(room, pub)
        elif pub.epoch == room.epoch and pub.offset == room.offset + 1:
            room.offset = pub.offset
            self._fanout(room, pub)
        elif pub.epoch == room.epoch and pub.offset <= room.offset:
            return  # duplicate
        else:  # a hole or a new epoch: read history first
            room.hold(pub)
            self._start_catch_up(room)

    def _fanout(self, room: RoomState, pub: Publication) -> None:
        kind = pub.kind
        if kind == "message":
            self.metrics.deliveries += len(room.subs)
            self.metrics.observe_lag(pub.body)
            off = pub.offset
            for session, sub in room.subs.items():
                if sub.buffering:
                    size = sub.buffered_bytes + len(pub.body)
                    if len(sub.buffer) >= session.max_queue or size > session.max_queue_bytes:
                        session.close(
                            CLOSE_SLOW, "slow consumer: too much to buffer during recovery"
                        )
                        continue
                    sub.buffer.append(pub)
                    sub.buffered_bytes = size
                elif off is not None and off <= sub.offset and pub.epoch == sub.epoch:
                    # The node's view lagged behind this session's seam (a catch-up released
                    # held publications after go_live): the replay already sent it.
                    continue
                else:
                    session.offer(pub)
        elif kind in ("join", "leave"):
            subject = str(pub.decoded().get("session"))
            # One object for every member (cached by identity); sessions coalesce it by subject.
            control = PresenceChange(kind, pub.body, room.name, subject)
            for session, sub in room.subs.items():
                if sub.presence and session.id != subject:
                    session.offer(control)

    def _send_gap(self, room: RoomState, gap: dict[str, Any]) -> None:
        self.metrics.recoveries["gap"] += 1
        for session, sub in room.subs.items():
            if sub.buffering:
                continue
            if sub.epoch == gap["epoch"] and sub.offset >= gap["from"]:
                # Part or all of the range precedes this session's seam: not lost to it.
                if sub.offset >= gap["to"]:
                    continue
                session.send({**gap, "from": sub.offset + 1})
            else:
                session.send(gap)

    def _start_catch_up(self, room: RoomState) -> None:
        if room.catching_up:
            return
        room.catching_up = True

        async def run() -> None:
            delay = 0.1
            try:
                while self.rooms.get(room.name) is room:
                    try:
                        await catch_up(
                            self.broker,
                            room,
                            self._fanout,
                            self._send_gap,
                            self.settings.max_reply_bytes,
                        )
                        return
                    except BrokerError:
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 2.0)
            except Exception:
                log.exception("catch-up of room %s failed", room.name)
            finally:
                room.catching_up = False

        self.spawn(run())

    def on_control(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "kick":
            cutoff = message.get("revoked_before")
            if isinstance(cutoff, int | float) and not isinstance(cutoff, bool):
                self.auth.revocations.add(str(message.get("user")), float(cutoff))
            for s in list(self.by_user.get(str(message.get("user")), ())):
                s.close(CLOSE_KICKED, str(message.get("reason") or "disconnected by the server"))
        elif kind == "direct":
            target = self.sessions.get(str(message.get("to")))
            if target is not None and isinstance(message.get("frame"), str):
                # Directed frames are signaling frames (Hub.direct, signaling/relay.py).
                target.offer(Control(SIGNAL, message["frame"].encode()))

    def resync(self) -> None:
        self.metrics.resyncs += 1
        for room in self.rooms:
            if room.is_ready:
                self._start_catch_up(room)

    def broker_state(self, up: bool) -> None:
        if up != self.broker_up:
            log.log(logging.INFO if up else logging.WARNING, "broker %s", "up" if up else "down")
        self.broker_up = up
