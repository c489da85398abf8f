"""A real HTTP webhook receiver for tests: uvicorn on 127.0.0.1 (free port) in the test's loop.

It verifies every request with :func:`hubbub.webhooks.verify`, records it, and answers the
statuses queued in ``answers`` (then 200). ``stall``: how many of the next requests are never
answered (a batch "in flight" when its sender dies); they land in ``stalled``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from hubbub.webhooks import WebhookError, verify

WEBHOOK_SECRET = "webhook-secret-0123456789abcdef0123456789"


@dataclass
class Request:
    headers: dict[str, str]
    body: bytes
    status: int
    events: list[dict[str, Any]]


@dataclass
class Receiver:
    secrets: list[str] = field(default_factory=lambda: [WEBHOOK_SECRET])
    answers: list[int] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    stall: int = 0
    stalled: list[Request] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            doc = verify(self.secrets, headers, body)
        except WebhookError as exc:
            self.refused.append(str(exc))
            await _answer(send, 400)
            return
        if self.stall > 0:
            self.stall -= 1
            self.stalled.append(Request(headers, body, 0, doc["events"]))
            await self._stopping.wait()
            await _answer(send, 503)
            return
        status = self.answers.pop(0) if self.answers else 200
        self.requests.append(Request(headers, body, status, doc["events"]))
        await _answer(send, status)

    # ---- what arrived --------------------------------------------------------------------------
    def delivered(self) -> list[dict[str, Any]]:
        """Events of the requests answered 2xx, in arrival order."""
        return [e for r in self.requests if 200 <= r.status < 300 for e in r.events]

    def unique(self) -> list[dict[str, Any]]:
        """Delivered events deduplicated by id (what a receiver keeps), in order."""
        seen: set[str] = set()
        out = []
        for e in self.delivered():
            if e["id"] not in seen:
                seen.add(e["id"])
                out.append(e)
        return out

    def types(self) -> list[tuple[str, ...]]:
        out: list[tuple[str, ...]] = []
        for e in self.unique():
            key: tuple[str, ...] = (e["type"], e.get("room", ""))
            if "member" in e:
                key += (e["member"]["user"],)
            out.append(key)
        return out

    async def start(self) -> Receiver:
        config = uvicorn.Config(self, host="127.0.0.1", port=0, log_level="warning",
                                lifespan="off")  # fmt: skip
        self._server = uvicorn.Server(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._stopping.set()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)


async def _answer(send: Any, status: int) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b"ok" if status < 300 else b"no"})
