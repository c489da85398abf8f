"""Logging set-up: ``text`` for humans, ``json`` one object per line; secrets redacted.

Every record passes :class:`RedactFilter`, which scrubs ``token=``/``key=`` query values (their
names percent-encoded or not), bearer credentials, cookies and the password of any URL
(``redis://:pw@host``) from the message, so logs never carry a token (PROTOCOL.md §3). In text
format a message's control characters are escaped (``\n`` → ``\\n``): a value that reached a log
line (a user id, a header) cannot start a line of its own. JSON lines escape them anyway.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

from hubbub.transports.edge import redact

_BEARER_RE = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# uvicorn logs request headers at debug level: a Cookie header may carry ``hubbub_token``.
_COOKIE_RE = re.compile(r"((?:^|\s)(?:set-)?cookie:\s*).*", re.IGNORECASE)
# scheme://user:password@host: the password ends at the last "@" before the host.
_URL_PASSWORD_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s/]*@")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def scrub(text: str) -> str:
    """``text`` without credentials: query tokens and keys, bearer values, cookies, URL
    passwords (replaced by ``[redacted]`` / ``***``)."""
    text = _COOKIE_RE.sub(r"\1[redacted]", redact(text))
    text = _URL_PASSWORD_RE.sub(r"\1***@", text)
    return _BEARER_RE.sub(r"\1[redacted]", text)


def escape_controls(text: str) -> str:
    """Control characters (CR, LF, ESC, …, and the Unicode line separators) as ``\\n``,
    ``\\r``, ``\\t`` or ``\\xNN`` / ``\\uNNNN`` escapes."""
    return _CONTROL_RE.sub(_escape_one, text)


def _escape_one(m: re.Match[str]) -> str:
    return repr(m.group(0))[1:-1]


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message>``, the message's control characters escaped (a
    traceback, added below the message, keeps its lines)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class RedactFilter(logging.Filter):
    """Formats the message once, scrubs it, and stores the result as the record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:
            return True
        clean = scrub(msg)
        if clean != msg or record.args:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and any ``extra`` context."""

    # ``color_message``: uvicorn's ANSI-coloured copy of the format string, noise in JSON.
    _skip = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
        "message",
        "color_message",
    }

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._skip and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup_logging(fmt: str = "text", level: str = "info") -> dict[str, Any]:
    """Configure the root logger and return a uvicorn ``log_config`` using the same handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    return {"version": 1, "disable_existing_loggers": False}


class HeldRecords(logging.Handler):
    """Holds the records of one logger until :meth:`pass_on`, which passes them on to the
    handlers configured by then. ``hubbub serve`` reads its settings (and warns about an unknown
    ``HUB_*`` variable) before it knows the log format; held, such a warning comes out as a
    line of the configured format (JSON too) instead of a bare one before it. Passed on with
    no logging set up (start-up failed), they are printed plainly, before the error."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def pass_on(self) -> None:
        self.logger.removeHandler(self)
        records, self.records = self.records, []
        for record in records:
            self.logger.handle(record)
