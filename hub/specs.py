"""What one setting is: its kind, bounds, whether it is secret, and its help text.

Every field of :class:`hub.settings.Settings` carries a :class:`Spec` in its metadata, and
everything else derives from that table: parsing a raw value (text from ``HUB_*``, a TOML value,
a command-line flag), checking a typed value, and the error message when either fails. An error
names the variable and says what is expected (``HUB_PORT must be an integer from 0 to 65535
(got 'abc')``); a secret's value is never part of a message.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import Field, dataclass
from enum import Enum
from typing import Any

from hubbub.hub.values import GRANT_KINDS, Invalid, Rate, parse_bool, parse_csv, parse_grants

SPEC = "spec"  # the key of a field's Spec in its dataclass metadata


class Kind(Enum):
    INT = "int"
    FLOAT = "float"
    TEXT = "text"
    OPTIONAL_TEXT = "optional text"  # empty text means unset (None)
    LIST = "list"  # comma-separated text, or a TOML array of strings
    OPTIONAL_BOOL = "optional bool"
    RATE = "rate"
    GRANTS = "grants"
    CHOICE = "choice"
    ROOMS = "rooms"  # [[rooms]] tables of the TOML file (hub.room_options), never text


@dataclass(frozen=True, slots=True)
class Spec:
    """One setting. ``low``/``high`` bound numbers (``above``: strictly greater than ``low``);
    ``choices`` are the allowed words of a CHOICE or the allowed items of a LIST; ``check``
    refuses a typed value with :class:`~hub.values.Invalid`; ``expect`` replaces the generated
    description of what is expected; ``show`` renders a bad value for an error message."""

    kind: Kind
    help: str
    unit: str = ""
    low: float | None = None
    high: float | None = None
    above: bool = False
    secret: bool = False
    choices: tuple[str, ...] = ()
    check: Callable[[Any], None] | None = None
    expect: str | None = None
    show: Callable[[Any], str] | None = None

    # ---- descriptions ------------------------------------------------------------------------
    def expected(self) -> str:
        """What a valid value looks like, in words (completes "HUB_X must be …")."""
        if self.expect:
            return self.expect
        k = self.kind
        if k in (Kind.INT, Kind.FLOAT):
            noun = "an integer" if k is Kind.INT else "a number"
            if self.unit:
                noun = ("a whole number" if k is Kind.INT else "a number") + f" of {self.unit}"
            low = f"greater than {_num(self.low)}" if self.above else f"at least {_num(self.low)}"
            if self.high is None:
                return f"{noun} {low}"
            if self.above:
                return f"{noun} {low} and at most {_num(self.high)}"
            return f"{noun} from {_num(self.low)} to {_num(self.high)}"
        if k is Kind.CHOICE:
            return "one of " + ", ".join(self.choices)
        if k is Kind.LIST:
            if self.choices:
                return "a comma-separated list of " + ", ".join(self.choices)
            return "a comma-separated list"
        if k is Kind.OPTIONAL_BOOL:
            return "true or false (or 1/0, yes/no, on/off)"
        if k is Kind.RATE:
            return "a rate like 20/s or 20/s:40 (<rate>/s[:<burst>]), or 0 for no limit"
        if k is Kind.ROOMS:
            return "[[rooms]] tables in the TOML file (--config), not an environment variable"
        if k is Kind.GRANTS:
            return "grants like subscribe=a,b;publish=c (kinds: " + ", ".join(GRANT_KINDS) + ")"
        return "text"

    def shown(self, raw: Any) -> str:
        """How a refused value appears in an error message."""
        if self.secret:
            return "value not shown: it is secret"
        text = self.show(raw) if self.show is not None and isinstance(raw, str) else repr(raw)
        return text if len(text) <= 120 else text[:117] + "..."

    # ---- parsing and checking ------------------------------------------------------------------
    def parse(self, raw: Any) -> Any:
        """A raw value (text, or a TOML/flag value) → the typed value, checked. Raises
        ValueError (an :class:`~hub.values.Invalid` when the reason is worth showing)."""
        value = _PARSE[self.kind](raw)
        self.validate(value)
        return value

    def validate(self, value: Any) -> None:
        """Check a typed value: its type, bounds, choices and ``check``. Raises ValueError."""
        if not _TYPE_OK[self.kind](value):
            raise ValueError("wrong type")
        if self.kind in (Kind.INT, Kind.FLOAT):
            if not math.isfinite(value):
                raise ValueError("not finite")
            if self.low is not None and (value <= self.low if self.above else value < self.low):
                raise ValueError("too small")
            if self.high is not None and value > self.high:
                raise ValueError("too large")
        elif self.kind is Kind.CHOICE and value not in self.choices:
            raise ValueError("not a choice")
        elif self.kind is Kind.LIST and self.choices:
            for item in value:
                if item not in self.choices:
                    raise Invalid(f"{item!r} is not one of them")
        elif self.kind is Kind.RATE and value.problem():
            raise Invalid(value.problem())
        if self.check is not None:
            self.check(value)

    def error(self, name: str, raw: Any, exc: BaseException | None = None) -> str:
        """The message for a refused value of the setting called ``name`` (``HUB_PORT``,
        ``HUB_PORT in hub.toml``, ``--port``)."""
        reason = f": {exc}" if isinstance(exc, Invalid) and not self.secret else ""
        return f"{name} must be {self.expected()}{reason} ({_got(self.shown(raw))})"


def spec_of(f: Field[Any]) -> Spec:
    """The Spec of a Settings field (KeyError when it has none)."""
    spec: Spec = f.metadata[SPEC]
    return spec


def _got(shown: str) -> str:
    return shown if shown.startswith("value not shown") else "got " + shown


def _num(x: float | None) -> str:
    if x is None:
        return "-inf"
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# ---- one parser and one type check per kind ----------------------------------------------------
def _int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError("a boolean is not an integer")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        return int(raw.strip())
    raise ValueError("not an integer")


def _float(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        return float(raw.strip())
    raise ValueError("not a number")


def _text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError("not text")
    return raw


def _optional_text(raw: Any) -> str | None:
    return _text(raw) or None


def _list(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        return parse_csv(raw)
    if isinstance(raw, list | tuple) and all(isinstance(v, str) for v in raw):
        return tuple(v.strip() for v in raw if v.strip())
    raise ValueError("not a list of strings")


def _optional_bool(raw: Any) -> bool | None:
    if isinstance(raw, bool) or raw is None:
        return raw
    return parse_bool(_text(raw))


def _rate(raw: Any) -> Rate:
    if isinstance(raw, Rate):
        return raw
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        raw = f"{raw:g}"  # a TOML number: 0 means off, anything else lacks "/s"
    return Rate.parse(_text(raw))


def _grants(raw: Any) -> dict[str, tuple[str, ...]]:
    return parse_grants(_text(raw))


def _choice(raw: Any) -> str:
    return _text(raw).strip().lower()


def _is_grants(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and set(v) <= set(GRANT_KINDS)
        and all(isinstance(p, tuple) and all(isinstance(x, str) for x in p) for p in v.values())
    )


def _rooms(raw: Any) -> tuple[Any, ...]:
    if isinstance(raw, tuple) and _is_rooms(raw):
        return raw  # parsed by hub.room_options.parse_tables, which names file, table and key
    raise ValueError("not [[rooms]] tables")


def _is_rooms(v: Any) -> bool:
    from hubbub.hub.room_options import RoomTable

    return isinstance(v, tuple) and all(isinstance(t, RoomTable) for t in v)


_PARSE: dict[Kind, Callable[[Any], Any]] = {
    Kind.INT: _int,
    Kind.FLOAT: _float,
    Kind.TEXT: _text,
    Kind.OPTIONAL_TEXT: _optional_text,
    Kind.LIST: _list,
    Kind.OPTIONAL_BOOL: _optional_bool,
    Kind.RATE: _rate,
    Kind.GRANTS: _grants,
    Kind.CHOICE: _choice,
    Kind.ROOMS: _rooms,
}

_TYPE_OK: dict[Kind, Callable[[Any], bool]] = {
    Kind.INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
    Kind.FLOAT: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    Kind.TEXT: lambda v: isinstance(v, str),
    Kind.OPTIONAL_TEXT: lambda v: v is None or isinstance(v, str),
    Kind.LIST: lambda v: isinstance(v, tuple) and all(isinstance(x, str) for x in v),
    Kind.OPTIONAL_BOOL: lambda v: v is None or isinstance(v, bool),
    Kind.RATE: lambda v: isinstance(v, Rate),
    Kind.GRANTS: _is_grants,
    Kind.CHOICE: lambda v: isinstance(v, str),
    Kind.ROOMS: _is_rooms,
}
