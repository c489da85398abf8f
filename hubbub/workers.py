"""``hubbub serve --workers N``: uvicorn's multiprocess supervisor, with :class:`HubServer` in
every worker, so that SIGTERM drains each worker the Hubbub way (``disconnect`` + close 4000,
ready 503, PROTOCOL.md §7) instead of uvicorn's plain close 1012.

uvicorn (0.3x+) builds its workers from the module-level name ``multiprocess.Process``, whose
``server`` property makes a plain ``uvicorn.Server`` inside the worker; :class:`HubProcess`
makes a :class:`HubServer` instead. Workers are spawned, so the class must be importable here.
"""

from __future__ import annotations

import uvicorn
from uvicorn.supervisors import multiprocess

from hubbub.transports.server import HubServer


class HubProcess(multiprocess.Process):
    """A uvicorn worker process whose server is a :class:`HubServer`."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = HubServer(config=self.config)
        return self._server


def run_workers(config: uvicorn.Config) -> None:
    """Bind the socket once and supervise ``config.workers`` HubServer processes on it."""
    setattr(multiprocess, "Process", HubProcess)  # noqa: B010  (the supervisor's factory)
    sock = config.bind_socket()
    multiprocess.Multiprocess(config, sockets=[sock]).run()
