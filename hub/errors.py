"""One error tree for every transport.

Each error knows its wire ``code`` (PROTOCOL.md §3 "Error codes"), its HTTP ``status`` and, where
the error ends a connection, its WebSocket ``close_code`` (PROTOCOL.md §3 "Close codes").

::

    HubError                      code          status  close
    ├── BadRequest                bad_request   400     4500
    ├── Unauthorized              unauthorized  401     4501
    ├── Forbidden                 forbidden     403     4503
    │   └── RoomFull              room_full     403     4503
    ├── NotFound                  not_found     404     4500
    ├── Conflict                  conflict      409     4500
    ├── TooLarge                  too_large     413     1009
    ├── UnsupportedMediaType      unsupported_media_type 415 4500
    ├── RateLimited               rate_limited  429     4005   temporary
    ├── Unavailable               unavailable   503     4003   temporary
    └── Internal                  internal      500     1011
        └── BrokerError           unavailable   503     4003   temporary (raised by brokers)

``Disconnect`` is separate: it is not an answer to a frame but the reason a session ends, with a
close code and whether the client should reconnect (4000-4499 yes, 4500-4999 no).
"""

from __future__ import annotations

from typing import Any, ClassVar


class HubError(Exception):
    """Base of every error Hubbub reports to a client.

    ``message`` is safe to show to the client (never a traceback, never secret material);
    ``details`` is an optional JSON-able mapping with machine-readable specifics.
    """

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    close_code: ClassVar[int] = 1011
    temporary: ClassVar[bool] = False

    def __init__(
        self,
        message: str = "",
        *,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code.replace("_", " ")
        self.details = details or {}
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        """The HTTP error body ``{"error": {"code", "message", "details"}}`` (PROTOCOL.md §5)."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def frame(self, frame_id: int | None) -> dict[str, Any]:
        """The WebSocket ``error`` frame answering the frame with ``frame_id``."""
        out: dict[str, Any] = {
            "type": "error",
            "id": frame_id,
            "code": self.code,
            "message": self.message,
            "temporary": self.temporary,
        }
        if self.details:
            out["details"] = self.details
        return out


class BadRequest(HubError):
    code, status, close_code = "bad_request", 400, 4500


class Unauthorized(HubError):
    code, status, close_code = "unauthorized", 401, 4501

    def __init__(
        self, message: str = "invalid or missing credentials", *, reason: str = "invalid", **kw: Any
    ) -> None:
        # Every refusal looks the same (PROTOCOL.md §2: no reason oracle); ``reason`` is kept
        # for metrics and debug logs only, never sent.
        super().__init__(message, **kw)
        self.reason = reason


class Forbidden(HubError):
    code, status, close_code = "forbidden", 403, 4503


class RoomFull(Forbidden):
    code = "room_full"


class NotFound(HubError):
    code, status, close_code = "not_found", 404, 4500


class Conflict(HubError):
    code, status, close_code = "conflict", 409, 4500


class TooLarge(HubError):
    code, status, close_code = "too_large", 413, 1009


class UnsupportedMediaType(HubError):
    code, status, close_code = "unsupported_media_type", 415, 4500


class RateLimited(HubError):
    """Over a budget. ``limit`` names the limit that spoke (``HUB_CLIENT_COMMAND_RATE``,
    ``[[rooms]] publish_rate``…); the message names it too."""

    code, status, close_code, temporary = "rate_limited", 429, 4005, True

    def __init__(self, message: str = "", *, limit: str = "", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.limit = limit


class Unavailable(HubError):
    code, status, close_code, temporary = "unavailable", 503, 4003, True


class Internal(HubError):
    code, status, close_code = "internal", 500, 1011


class BrokerError(Unavailable):
    """The broker could not be reached or answered with an error. Always temporary."""


class ConfigError(ValueError):
    """A setting has a bad value; the message names the setting and the value."""


class Disconnect(Exception):
    """Why a session ends: a close code (PROTOCOL.md §3) and whether to reconnect."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason

    @property
    def reconnect(self) -> bool:
        return 4000 <= self.code < 4500


# Close codes of PROTOCOL.md §3, named.
CLOSE_NORMAL = 1000
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_LARGE = 1009
CLOSE_INTERNAL = 1011
CLOSE_SHUTDOWN = 4000
CLOSE_SLOW = 4001
CLOSE_NO_HEARTBEAT = 4002
CLOSE_BROKER = 4003
CLOSE_EXPIRED = 4004
CLOSE_RATE = 4005
CLOSE_PROTOCOL = 4500
CLOSE_UNAUTHORIZED = 4501
CLOSE_ORIGIN = 4503
CLOSE_KICKED = 4509
CLOSE_LIMIT = 4510
