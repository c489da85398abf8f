"""Cluster-wide transitions behind ``room.*`` and ``member.*`` webhooks.

A node reports its own transitions (its first local session joined room R: ``room_up``; its last
one left: ``room_down``; a presence session was added or removed: ``member_up`` /
``member_down``); the store decides, atomically for the whole cluster, whether that is an event:

* ``room_up`` → 1 (``room.occupied``) when no node had the room and no vacate was pending;
  0 when a pending vacate is cancelled (a reconnect within the delay: no event); 2 when a
  pending vacate was overdue (its checker never ran): ``room.vacated`` then ``room.occupied``.
* ``room_down`` → a token when this was the last node: the caller runs ``vacate_check(room,
  token)`` after ``HUB_WEBHOOK_VACATED_DELAY``; True there means ``room.vacated``.
* ``member_up`` → True for the user's first presence session in the room (``member.joined``);
  ``member_down`` → True for the last one (``member.left``).
* ``reap`` (Redis): the transitions of nodes that died without leaving (SIGKILL, a lost
  machine). Each node registers itself in ``<prefix>{wh}:nodes`` with an expiry it pushes
  forward (``alive``), and lists the rooms and presence sessions it reported in
  ``<prefix>{whnode:<node>}:rooms`` / ``…:members``. Any node finding an expired node runs
  ``room_down`` and ``member_down`` for it; those scripts are idempotent, so two nodes reaping
  the same dead node still make one event each.
* ``reap`` also sweeps vacates whose check never ran (the node that emptied the room stopped or
  died within the delay): ``room_down`` lists the room in ``<prefix>{wh}:vacating`` with its
  deadline, and a vacate still pending a second after it is decided by whichever node sweeps.

:class:`MemoryTransitions` keeps this in the process; :class:`RedisTransitions` in Redis, with
Lua scripts on the room's hash tag (``<prefix>{room:<name>}:wh:nodes``, ``…:wh:vac``,
``…:wh:m:<user>``), server time for deadlines. Redis failures raise BrokerError.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from hubbub.hub.brokers.base import Member
from hubbub.hub.brokers.redis_lua import room_key

_NOW_MS = """
local _t = redis.call('TIME')
local now = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)
"""

OP_TTL = 3600  # seconds a decision is remembered for a retry of the same report


def _once(body: str) -> str:
    """A decision script that runs at most once per operation: its last KEY records the result
    (as text), and a retry of the same operation (the first attempt timed out, but Redis ran it)
    gets the recorded result instead of deciding again, so no event is lost or doubled."""
    return (
        "local op = KEYS[#KEYS]\n"
        "local prev = redis.call('GET', op)\n"
        "if prev then return prev end\n"
        "local function decide()\n" + body + "\nend\n"
        "local res = decide()\n"
        "if res == false or res == nil then res = '' end\n"
        "res = tostring(res)\n"
        f"redis.call('SET', op, res, 'EX', {OP_TTL})\n"
        "return res\n"
    )


# KEYS nodes, vac, op; ARGV node
ROOM_UP = _once(
    _NOW_MS
    + """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 or redis.call('SCARD', KEYS[1]) ~= 1 then
  return 0
end
local v = redis.call('GET', KEYS[2])
if not v then return 1 end
redis.call('DEL', KEYS[2])
local deadline = tonumber(string.match(v, ':(%d+)$') or '0')
if now >= deadline then return 2 end
return 0
"""
)

# KEYS nodes, vac, op; ARGV node, token, delay ms. The token when the room went empty.
ROOM_DOWN = _once(
    _NOW_MS
    + """
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 or redis.call('SCARD', KEYS[1]) ~= 0 then
  return false
end
redis.call('SET', KEYS[2], ARGV[2] .. ':' .. (now + tonumber(ARGV[3])), 'EX', 86400)
return ARGV[2]
"""
)

# KEYS nodes, vac, op; ARGV token
VACATE_CHECK = _once("""
local v = redis.call('GET', KEYS[2])
if not v or string.sub(v, 1, #ARGV[1] + 1) ~= ARGV[1] .. ':' then return 0 end
if redis.call('SCARD', KEYS[1]) ~= 0 then return 0 end
redis.call('DEL', KEYS[2])
return 1
""")

# KEYS user's sessions, op; ARGV session
MEMBER_UP = _once("""
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 and redis.call('SCARD', KEYS[1]) == 1 then
  return 1
end
return 0
""")

MEMBER_DOWN = _once("""
if redis.call('SREM', KEYS[1], ARGV[1]) == 1 and redis.call('SCARD', KEYS[1]) == 0 then
  return 1
end
return 0
""")


# KEYS nodes; ARGV node, ttl ms: refresh this node, return up to 10 expired nodes.
ALIVE = (
    _NOW_MS
    + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, 10)
"""
)

# KEYS nodes, vac, op: the vacate is due (the node that scheduled it never checked): vacated?
VACATE_DUE = _once(
    _NOW_MS
    + """
local v = redis.call('GET', KEYS[2])
if not v then return 0 end
local deadline = tonumber(string.match(v, ':(%d+)$') or '0')
if now < deadline or redis.call('SCARD', KEYS[1]) ~= 0 then return 0 end
redis.call('DEL', KEYS[2])
return 1
"""
)

# KEYS vacating; ARGV grace ms: rooms whose vacate deadline passed more than grace ago.
DUE = (
    _NOW_MS
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1])),
                  'LIMIT', 0, 100)
"""
)

# KEYS vacating; ARGV room, score: forget the entry unless a later vacate replaced it.
UNDUE = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) <= tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""

SWEEP_GRACE_MS = 1000  # the local check normally runs first; the sweep is the fallback


@dataclass
class Reaped:
    """What ``reap`` found: vacates to check after the delay (room, token), members that left
    (room, member object), rooms vacated now."""

    checks: list[tuple[str, str]] = field(default_factory=list)
    left: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    vacated: list[str] = field(default_factory=list)


class Transitions(Protocol):
    async def start(self) -> None: ...

    # ``op``: the report's id; a retry after an unknown outcome passes the same one.
    async def room_up(self, room: str, op: str) -> int: ...

    async def room_down(self, room: str, op: str) -> str | None: ...

    async def vacate_check(self, room: str, token: str, op: str) -> bool: ...

    async def member_up(self, member: Member, op: str) -> bool: ...

    async def member_down(self, member: Member, op: str) -> bool: ...

    async def reap(self, ttl: float) -> Reaped:
        """Refresh this node's liveness (``ttl`` seconds) and undo what expired nodes left."""

    async def forget(self) -> None:
        """A graceful stop: this node is no longer alive (and left everything)."""


class MemoryTransitions:
    """One process: the same decisions as the Redis scripts, on dictionaries."""

    def __init__(self, node: str, delay: float) -> None:
        self.node = node
        self.delay = delay
        self._nodes: dict[str, set[str]] = {}
        self._vac: dict[str, tuple[str, float]] = {}
        self._members: dict[tuple[str, str], set[str]] = {}

    async def start(self) -> None:
        pass

    async def room_up(self, room: str, op: str) -> int:
        nodes = self._nodes.setdefault(room, set())
        if self.node in nodes:
            return 0
        nodes.add(self.node)
        if len(nodes) != 1:
            return 0
        pending = self._vac.pop(room, None)
        if pending is None:
            return 1
        return 2 if time.time() >= pending[1] else 0

    async def room_down(self, room: str, op: str) -> str | None:
        nodes = self._nodes.get(room)
        if nodes is None or self.node not in nodes:
            return None
        nodes.discard(self.node)
        if nodes:
            return None
        del self._nodes[room]
        token = secrets.token_hex(8)
        self._vac[room] = (token, time.time() + self.delay)
        return token

    async def vacate_check(self, room: str, token: str, op: str) -> bool:
        pending = self._vac.get(room)
        if pending is None or pending[0] != token or self._nodes.get(room):
            return False
        del self._vac[room]
        return True

    async def member_up(self, member: Member, op: str) -> bool:
        s = self._members.setdefault((member.room, member.user), set())
        if member.session in s:
            return False
        s.add(member.session)
        return len(s) == 1

    async def member_down(self, member: Member, op: str) -> bool:
        key = (member.room, member.user)
        s = self._members.get(key)
        if s is None or member.session not in s:
            return False
        s.discard(member.session)
        if s:
            return False
        del self._members[key]
        return True

    async def reap(self, ttl: float) -> Reaped:
        return Reaped()  # one process: nobody else to die, and the local timers always run

    async def forget(self) -> None:
        pass


class RedisTransitions:
    """The cluster's transitions in Redis (see the module docstring). ``conn``: the node's
    RedisBroker (its ``prefix``, ``client`` and ``call``)."""

    def __init__(self, conn: Any, node: str, delay: float) -> None:
        self._conn = conn
        self.prefix: str = conn.prefix
        self.node = node
        self._delay_ms = int(delay * 1000)
        self._s: dict[str, Any] = {}
        self._vacating = f"{self.prefix}{{wh}}:vacating"

    async def start(self) -> None:
        for name, text in (("up", ROOM_UP), ("down", ROOM_DOWN), ("check", VACATE_CHECK),
                           ("mup", MEMBER_UP), ("mdown", MEMBER_DOWN),
                           ("alive", ALIVE), ("due", VACATE_DUE), ("list_due", DUE),
                           ("undue", UNDUE)):  # fmt: skip
            self._s[name] = self._conn.script(text)

    def _reg(self, node: str, what: str) -> str:
        return f"{self.prefix}{{whnode:{node}}}:{what}"

    def _room_keys(self, room: str, op: str) -> list[str]:
        return [
            room_key(self.prefix, room, "wh:nodes"),
            room_key(self.prefix, room, "wh:vac"),
            room_key(self.prefix, room, "wh:op:" + op),
        ]

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._conn.run(self._s[name], keys, args)

    async def room_up(self, room: str, op: str) -> int:
        # Registered first: a death between the two calls leaves a registry entry whose
        # room_down (by the reaper) finds nothing to remove, so makes no event.
        await self._conn.call(self._conn.client.sadd(self._reg(self.node, "rooms"), room))
        return int(await self._run("up", self._room_keys(room, op), [self.node]))

    async def room_down(self, room: str, op: str) -> str | None:
        token = await self._room_down(room, self.node, op)
        await self._conn.call(self._conn.client.srem(self._reg(self.node, "rooms"), room))
        return token

    async def _room_down(self, room: str, node: str, op: str) -> str | None:
        token = secrets.token_hex(8)
        res = await self._run("down", self._room_keys(room, op), [node, token, self._delay_ms])
        if not res:
            return None
        # Listed for the sweep, in case the check after the delay never runs (this node stops
        # or dies first). Local clock: the sweep waits a grace period beyond it anyway.
        deadline = int(time.time() * 1000) + self._delay_ms
        await self._conn.call(self._conn.client.zadd(self._vacating, {room: deadline}))
        return res.decode() if isinstance(res, bytes) else str(res)  # a retry: the first token

    async def vacate_check(self, room: str, token: str, op: str) -> bool:
        return _yes(await self._run("check", self._room_keys(room, op), [token]))

    def _member_keys(self, room: str, user: str, op: str) -> list[str]:
        return [room_key(self.prefix, room, "wh:m:" + user), room_key(self.prefix, room,
                                                                     "wh:op:" + op)]  # fmt: skip

    async def member_up(self, m: Member, op: str) -> bool:
        field = m.room + "\0" + m.session
        entry = orjson.dumps({"room": m.room, "member": m.public()})
        await self._conn.call(self._conn.client.hset(self._reg(self.node, "members"), field, entry))
        return _yes(await self._run("mup", self._member_keys(m.room, m.user, op), [m.session]))

    async def member_down(self, m: Member, op: str) -> bool:
        keys = self._member_keys(m.room, m.user, op)
        left = _yes(await self._run("mdown", keys, [m.session]))
        field = m.room + "\0" + m.session
        await self._conn.call(self._conn.client.hdel(self._reg(self.node, "members"), field))
        return left

    async def reap(self, ttl: float) -> Reaped:
        """Operation ids name this reaper, the dead node and the entry: a retry of an attempt
        whose outcome was unknown gets the same decision; another reaper finds nothing left."""
        redis = self._conn.client
        alive_key = f"{self.prefix}{{wh}}:nodes"
        dead = await self._run("alive", [alive_key], [self.node, max(1, int(ttl * 1000))])
        out = Reaped()
        for raw in dead:
            node = raw.decode() if isinstance(raw, bytes) else str(raw)
            rooms = await self._conn.call(redis.smembers(self._reg(node, "rooms")))
            for r in sorted(x.decode() for x in rooms):
                token = await self._room_down(r, node, f"reap.{self.node}.{node}")
                if token is not None:
                    out.checks.append((r, token))
            members = await self._conn.call(redis.hgetall(self._reg(node, "members")))
            for entry in members.values():
                d = orjson.loads(entry)
                room, member = d["room"], d["member"]
                op = f"reap.{self.node}.{node}.{member['session']}"
                keys = self._member_keys(room, member["user"], op)
                if _yes(await self._run("mdown", keys, [member["session"]])):
                    out.left.append((room, member))
            await self._conn.call(redis.delete(self._reg(node, "rooms")))
            await self._conn.call(redis.delete(self._reg(node, "members")))
            await self._conn.call(redis.zrem(alive_key, node))
        due = await self._run("list_due", [self._vacating], [SWEEP_GRACE_MS])
        for raw in due:
            room = raw.decode() if isinstance(raw, bytes) else str(raw)
            score = await self._conn.call(redis.zscore(self._vacating, room))
            op = f"due.{self.node}.{int(score or 0)}"
            if _yes(await self._run("due", self._room_keys(room, op), [])):
                out.vacated.append(room)
            if score is not None:
                await self._run("undue", [self._vacating], [room, int(score)])
        return out

    async def forget(self) -> None:
        """Leave the list of live nodes when this node left every room and presence (after a
        drain); otherwise stay, so that another node reaps what is left once it expires."""
        redis = self._conn.client
        rooms = await self._conn.call(redis.scard(self._reg(self.node, "rooms")))
        members = await self._conn.call(redis.hlen(self._reg(self.node, "members")))
        if not rooms and not members:
            await self._conn.call(redis.zrem(f"{self.prefix}{{wh}}:nodes", self.node))


def _yes(reply: Any) -> bool:
    """A decision script's recorded answer (text): ``1`` means yes."""
    return reply in (b"1", "1", 1)
