"""Per-room options: the ``[[rooms]]`` tables of the ``--config`` TOML file.

Each table has a ``pattern`` (a glob as in grants, PROTOCOL.md §2) and any of the keys of
:data:`KEYS`. The first table whose pattern matches a room sets that room's options; keys a
table leaves out, and rooms no table matches, take the global settings (``HUB_HISTORY_SIZE`` …).

Contracts:

* :func:`parse_tables` turns the TOML value into :class:`RoomTable` objects or raises
  :class:`~hub.errors.ConfigError` naming the file, the table (its number and pattern) and the
  key, and saying what is expected. No room option is secret, and a key the file should not
  hold is named without its value.
* :class:`RoomRules` answers ``room -> RoomOptions``. With no tables it returns one shared
  object without looking at the room (:attr:`RoomRules.active` is False, and callers skip the
  lookup on hot paths). With tables, answers are cached (at most :data:`CACHE_SIZE` rooms; the
  cache is emptied when full, the answers never change while a node runs).
* :meth:`RoomRules.digest` is the same on every node whose tables mean the same thing (the
  cluster agreement check compares it).
* ``webhook_events`` is always the room's effective set of room events (a subset of
  :data:`ROOM_WEBHOOK_EVENTS`, in that order): the table's list when it sets the key (``[]``:
  none), else those of ``HUB_WEBHOOK_EVENTS``. :attr:`RoomRules.webhooks_vary` is False when no
  table sets it; the webhooks then never look rooms up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from hubbub.hub.errors import ConfigError, Forbidden
from hubbub.hub.specs import Kind, Spec
from hubbub.hub.values import Invalid, Rate

if TYPE_CHECKING:
    from hubbub.hub.settings import Settings

CACHE_SIZE = 10_000
MAX_TABLES = 1000
# The webhook events about one room (docs/webhooks.md); a table's ``webhook_events`` picks
# among them. ``user.connected`` and ``user.disconnected`` concern no room: HUB_WEBHOOK_EVENTS.
ROOM_WEBHOOK_EVENTS = (
    "room.occupied", "room.vacated", "member.joined", "member.left", "message.published",
)  # fmt: skip
_ON_OFF = "true or false (or on/off)"
_PATTERN = re.compile(r"[A-Za-z0-9_.:*-]{1,128}")


def _check_events(value: tuple[str, ...]) -> None:
    for item in value:
        if item in ("user.connected", "user.disconnected"):
            raise Invalid(f"{item!r} concerns no room (only HUB_WEBHOOK_EVENTS sets it)")
        if item not in ROOM_WEBHOOK_EVENTS:
            raise Invalid(f"{item!r} is not one of them")


# key -> (spec, the global setting it overrides, or None)
KEYS: dict[str, tuple[Spec, str | None]] = {
    "history_size": (Spec(Kind.INT, "publications kept", low=0, high=10_000_000), "history_size"),
    "history_ttl": (
        Spec(
            Kind.FLOAT, "age limit of history (0: none)", unit="seconds", low=0, high=365 * 86400.0
        ),
        "history_ttl",
    ),
    "presence": (Spec(Kind.OPTIONAL_BOOL, "presence allowed", expect=_ON_OFF), None),
    "join_leave": (Spec(Kind.OPTIONAL_BOOL, "join/leave frames", expect=_ON_OFF), None),
    "max_subscribers": (
        Spec(Kind.INT, "sessions subscribed at once (0: no limit)", low=0, high=10_000_000),
        None,
    ),
    "client_publish": (
        Spec(Kind.OPTIONAL_BOOL, "clients may publish (false: API keys only)", expect=_ON_OFF),
        None,
    ),
    "publish_rate": (Spec(Kind.RATE, "publishes per client session in the room"), None),
    "recover": (Spec(Kind.OPTIONAL_BOOL, "resume with since allowed", expect=_ON_OFF), None),
    "anonymous": (Spec(Kind.OPTIONAL_BOOL, "guests allowed", expect=_ON_OFF), None),
    "max_message_bytes": (
        Spec(Kind.INT, "largest publication data", unit="bytes", low=1, high=64 * 1024 * 1024),
        "max_message_bytes",
    ),
    "webhook_events": (
        Spec(
            Kind.LIST,
            "room events sent to the webhooks (instead of HUB_WEBHOOK_EVENTS)",
            check=_check_events,
            expect="a list of room events: " + ", ".join(ROOM_WEBHOOK_EVENTS),
        ),
        "webhook_events",
    ),
    "signal": (Spec(Kind.OPTIONAL_BOOL, "a call room (WebRTC signaling)", expect=_ON_OFF), None),
}


@dataclass(frozen=True, slots=True)
class RoomTable:
    """One ``[[rooms]]`` table: its number (from 1), pattern, the keys it sets and its file."""

    index: int
    pattern: str
    values: tuple[tuple[str, Any], ...]
    file: str = ""

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in self.values:
            if k == key:
                return v
        return default

    def sets(self, key: str) -> bool:
        return any(k == key for k, _ in self.values)

    @property
    def name(self) -> str:
        """How messages name the table: ``[[rooms]] #2 (pattern 'chat:*')``."""
        return f"[[rooms]] #{self.index} (pattern {self.pattern!r})"


@dataclass(frozen=True, slots=True)
class RoomOptions:
    """The effective options of one room. ``table``: the table that matched (None: global)."""

    history_size: int
    history_ttl: float
    presence: bool
    join_leave: bool
    max_subscribers: int  # 0: no limit
    client_publish: bool
    publish_rate: Rate  # rate 0: no per-room limit
    recover: bool
    anonymous: bool
    max_message_bytes: int
    webhook_events: tuple[str, ...]
    signal: bool
    table: RoomTable | None = None

    def public(self) -> dict[str, Any]:
        """The options as JSON-able values (rates as ``<rate>/s:<burst>`` or ``0``)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "table":
                continue
            v = getattr(self, f.name)
            if isinstance(v, Rate):
                v = f"{v.rate:g}/s:{v.burst:g}" if v.enabled else "0"
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out


def parse_tables(raw: Any, file: str) -> tuple[RoomTable, ...]:
    """The ``rooms`` value of a TOML file (an array of tables) as RoomTables. Raises
    ConfigError naming ``file``, the table and the key."""
    where = f"config file {file}"
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError(f"{where}: rooms must be [[rooms]] tables")
    if len(raw) > MAX_TABLES:
        raise ConfigError(f"{where}: at most {MAX_TABLES} [[rooms]] tables")
    out: list[RoomTable] = []
    for i, table in enumerate(raw, 1):
        pattern = table.get("pattern")
        if not isinstance(pattern, str) or not _PATTERN.fullmatch(pattern):
            shown = repr(pattern) if isinstance(pattern, str) else "missing or not text"
            raise ConfigError(
                f"{where}: [[rooms]] #{i}: pattern must be a room glob like 'chat:*' "
                f"(room-name characters and *, 1 to 128 of them; got {shown[:120]})"
            )
        name = f"{where}: [[rooms]] #{i} (pattern {pattern!r})"
        values: list[tuple[str, Any]] = []
        for key, value in table.items():
            if key == "pattern":
                continue
            entry = KEYS.get(key)
            if entry is None:
                known = ", ".join(KEYS)
                raise ConfigError(f"{name}: unknown key {key!r} (known: pattern, {known})")
            spec = entry[0]
            try:
                if spec.kind is Kind.OPTIONAL_BOOL and value is None:
                    raise ValueError("missing")
                parsed = spec.parse(value)
                if key == "webhook_events":  # one spelling per meaning (digests compare it)
                    parsed = tuple(e for e in ROOM_WEBHOOK_EVENTS if e in parsed)
            except (ValueError, TypeError) as exc:
                raise ConfigError(spec.error(f"{name}: {key}", value, exc)) from None
            values.append((key, parsed))
        out.append(RoomTable(i, pattern, tuple(values), file))
    return tuple(out)


def _matches(pattern: str, room: str) -> bool:
    from hubbub.hub.auth import grant_matches  # auth imports settings, which imports this

    return grant_matches(pattern, room)


class RoomRules:
    """``room -> RoomOptions`` for one node's settings (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        s = settings
        self.settings = s
        self.tables: tuple[RoomTable, ...] = s.rooms
        self.active = bool(self.tables)
        # Once any table says whether its rooms are call rooms, HUB_SIGNAL_ROOMS is not used.
        self.signal_from_tables = any(t.sets("signal") for t in self.tables)
        self.default = RoomOptions(
            history_size=s.history_size,
            history_ttl=s.history_ttl,
            presence=True,
            join_leave=True,
            max_subscribers=0,
            client_publish=True,
            publish_rate=Rate(0.0, 0.0),
            recover=True,
            anonymous=s.dev_mode if s.allow_anonymous is None else s.allow_anonymous,
            max_message_bytes=s.max_message_bytes,
            webhook_events=tuple(e for e in ROOM_WEBHOOK_EVENTS if e in s.webhook_events),
            signal=False,
        )
        self._per_table = [
            dataclasses.replace(self.default, **dict(t.values), table=t) for t in self.tables
        ]
        self._cache: dict[str, RoomOptions] = {}
        self.history_varies = any(
            t.sets("history_size") or t.sets("history_ttl") for t in self.tables
        )
        # Once a table sets webhook_events, the webhooks look each room's events up (cached).
        self.webhooks_vary = any(t.sets("webhook_events") for t in self.tables)

    def get(self, room: str) -> RoomOptions:
        """The options of ``room`` (first matching table, else the global settings)."""
        if not self.active:
            return self.default
        opts = self._cache.get(room)
        if opts is None:
            opts = self._resolve(room)
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[room] = opts
        return opts

    def _resolve(self, room: str) -> RoomOptions:
        opts = self.default
        for table, resolved in zip(self.tables, self._per_table, strict=True):
            if _matches(table.pattern, room):
                opts = resolved
                break
        if not self.signal_from_tables and any(
            _matches(p, room) for p in self.settings.signal_rooms
        ):
            opts = dataclasses.replace(opts, signal=True)
        return opts

    def is_call_room(self, room: str) -> bool:
        if not self.active:
            return any(_matches(p, room) for p in self.settings.signal_rooms)
        return self.get(room).signal

    def max_peers(self, room: str) -> int:
        """Presence members a call room holds: its table's ``max_subscribers`` when set, else
        ``HUB_SIGNAL_MAX_PEERS``."""
        opts = self.get(room)
        return opts.max_subscribers or self.settings.signal_max_peers

    def history_of(self, room: str) -> tuple[int, float]:
        """(history size, history ttl in seconds) of ``room``: what the brokers keep."""
        opts = self.get(room)
        return opts.history_size, opts.history_ttl

    def max_message_bytes(self) -> int:
        """The largest ``max_message_bytes`` of any room (transport frame limits follow it)."""
        return max([self.default.max_message_bytes, *(o.max_message_bytes for o in self._per_table)])  # fmt: skip

    def webhook_events(self) -> frozenset[str]:
        """Every room event that some room sends: HUB_WEBHOOK_EVENTS' and the tables'."""
        sets = [self.default.webhook_events, *(o.webhook_events for o in self._per_table)]
        return frozenset(e for events in sets for e in events)

    def longest_ttl(self) -> float:
        """The longest history ttl of any room; 0 when some room keeps history for ever."""
        ttls = [self.default.history_ttl, *(o.history_ttl for o in self._per_table)]
        return 0.0 if any(t <= 0 for t in ttls) else max(ttls)

    def explain(self, room: str) -> list[tuple[str, Any, str]]:
        """``[(option, value, where it comes from)]`` for ``room``, in :data:`KEYS` order."""
        opts = self.get(room)
        shown = opts.public()
        t = opts.table
        rows: list[tuple[str, Any, str]] = []
        for key, (_, setting) in KEYS.items():
            if t is not None and t.sets(key):
                src = f"{t.name} in {t.file}" if t.file else t.name
            elif key == "signal":
                src = (
                    "default (tables set signal)" if self.signal_from_tables else "HUB_SIGNAL_ROOMS"
                )
            elif key == "anonymous":
                src = "HUB_ALLOW_ANONYMOUS"
            elif setting is not None:
                src = "HUB_" + setting.upper()
            else:
                src = "default"
            if key == "webhook_events" and not self.settings.webhook_urls:
                src += " (HUB_WEBHOOK_URLS is unset: nothing is sent)"
            rows.append((key, shown[key], src))
        return rows

    def digest(self) -> str:
        """A short hash of what the tables mean (patterns, order, keys and values)."""
        canon = [[t.pattern, sorted((k, _canonical(v)) for k, v in t.values)] for t in self.tables]
        return hashlib.sha256(orjson.dumps(canon)).hexdigest()[:16]


def check_room_access(opts: RoomOptions, ident: Any, room: str, action: str) -> None:
    """Refuse (Forbidden) what a room's options forbid to ``ident`` (an Identity): a guest where
    ``anonymous`` is false, presence where ``presence`` is false, a client publish where
    ``client_publish`` is false. ``action``: subscribe, presence, history or publish."""
    details = {"room": room}
    if ident.guest and not opts.anonymous:
        raise Forbidden(f"room {room} is not open to guests", details=details)
    if action == "presence" and not opts.presence:
        raise Forbidden(f"presence is off in room {room}", details=details)
    if action == "publish" and not opts.client_publish and not ident.api_key:
        raise Forbidden(f"only backends (API keys) publish to room {room}", details=details)


def guest_grants(settings: Settings) -> dict[str, tuple[str, ...]]:
    """The grants of a guest. Guests allowed globally (``HUB_ALLOW_ANONYMOUS``, dev mode):
    ``HUB_DEFAULT_GRANTS``. Guests let in only by tables with ``anonymous = true``: each kind
    ``HUB_DEFAULT_GRANTS`` gives, on those tables' patterns only; ``signal`` (and so TURN
    credentials) only on the tables that are call rooms too, when tables say which are."""
    s = settings
    grants = dict(s.default_grants)
    if s.dev_mode if s.allow_anonymous is None else s.allow_anonymous:
        return grants
    open_tables = [t for t in s.rooms if t.get("anonymous") is True]
    by_signal = any(t.sets("signal") for t in s.rooms)
    for kind, patterns in grants.items():
        tables = open_tables
        if kind == "signal" and by_signal:
            tables = [t for t in open_tables if t.get("signal") is True]
        grants[kind] = tuple(t.pattern for t in tables) if patterns else ()
    return grants


def _canonical(v: Any) -> Any:
    if isinstance(v, Rate):
        return [v.rate, v.burst]
    if isinstance(v, tuple):
        return list(v)
    return v


RoomLookup = Callable[[str], tuple[int, float]]
