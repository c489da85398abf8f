"""Graceful shutdown that works the same under every ASGI server.

ASGI tells an app nothing when its server is asked to stop: the lifespan ``shutdown`` event
comes only after the server has closed (or given up on) every connection, too late to say
``disconnect`` with 4000 to WebSocket clients and to end SSE streams with their final event
(PROTOCOL.md §7). So the node catches SIGTERM and SIGINT itself, ahead of the server:

1. the first signal starts :meth:`Hub.drain` (ready turns 503, new sessions are refused,
   existing ones close with 4000 in batches over the drain window) and waits until the
   sessions are gone or the budget is spent;
2. then the signal is handed to whoever handled it before (uvicorn's or hypercorn's handler,
   or the default action), and the server shuts down as it always does, with nothing left
   to cut;
3. a second signal during the drain is handed on at once (press Ctrl-C twice to stop now).

Servers that watch signals through ``loop.add_signal_handler`` (hypercorn) learn of the signal
at once whatever Python handler is installed; they then wait for open connections up to
their own graceful timeout, during which the drain runs (set hypercorn's
``--graceful-timeout`` above the drain window). Only the main thread can install signal
handlers: elsewhere nothing is installed, and the embedding application calls
``await app.shutdown()`` itself (see docs/embedding.md).

One server stops its processes without any signal: hypercorn with worker processes (its
default) sets an internal event in each worker when its parent gets SIGTERM, then cancels open
streams at its graceful timeout. No app can drain there; :func:`signal_blind_server` lets the
node say so in its log at start-up instead of failing silently at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

log = logging.getLogger("hubbub.drain")

SIGNALS = (signal.SIGTERM, signal.SIGINT)

Handler = Callable[[int, FrameType | None], Any] | int | None

SIGNAL_BLIND = (
    "this process is a hypercorn worker: hypercorn stops its workers through an internal event, "
    "not a signal, so SIGTERM to its parent cannot drain this node (open WebSocket and SSE "
    "connections are cut at hypercorn's --graceful-timeout, without their final frames). Run "
    "hypercorn with --workers 0, or send SIGTERM to the whole process group (docs/embedding.md)"
)


def signal_blind_server() -> str | None:
    """Why a signal drain cannot work in this process, or None when nothing says so.

    Known case: a hypercorn worker process (hypercorn is loaded and this process was started by
    :mod:`multiprocessing`, as hypercorn starts its workers; with ``--workers 0`` the app runs
    in hypercorn's own process, which does get the signal)."""
    if "hypercorn" in sys.modules and multiprocessing.parent_process() is not None:
        return SIGNAL_BLIND
    return None


class SignalDrain:
    """Runs ``drain()`` on the first SIGTERM/SIGINT, then passes the signal on.

    :meth:`install` must be called from the event loop's thread; it does nothing outside the
    main thread. :meth:`uninstall` puts the previous handlers back where ours are still in
    place. ``drain`` must not raise; it is awaited at most once."""

    def __init__(self, drain: Callable[[], Awaitable[None]]) -> None:
        self._drain = drain
        self._previous: dict[int, Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.active = False

    def install(self) -> bool:
        """Take SIGTERM and SIGINT. Returns False (nothing installed) off the main thread."""
        if threading.current_thread() is not threading.main_thread() or self.active:
            return False
        self._loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)
        self.active = True
        return True

    def uninstall(self) -> None:
        """Stop draining on signals. Our handler is replaced by the previous one where it is
        still the current one; where another handler was installed on top of it, it stays in
        that chain and passes signals straight on."""
        if not self.active:
            return
        self.active = False
        for sig, handler in self._previous.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        loop = self._loop
        if not self.active or self._task is not None or loop is None or loop.is_closed():
            self._pass_on(signum, frame)
            return
        log.info("%s: draining before shutdown", signal.Signals(signum).name)
        loop.call_soon_threadsafe(self._start, signum)

    def _start(self, signum: int) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(signum))

    async def _run(self, signum: int) -> None:
        try:
            await self._drain()
        except Exception:
            log.exception("drain failed")
        finally:
            self._pass_on(signum, None)

    def _pass_on(self, signum: int, frame: FrameType | None) -> None:
        handler = self._previous.get(signum, signal.SIG_DFL)
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_IGN:
            return
        else:  # the default action: restore it and raise the signal again
            self.active = False
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
