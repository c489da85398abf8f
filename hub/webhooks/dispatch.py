"""Delivery to one endpoint: batches in order, signed, retried with backoff, dropped when old.

A :class:`Dispatcher` runs one loop per endpoint on every node; with Redis only the node holding
the endpoint's lease delivers (:mod:`hub.webhooks.queues`). A batch is up to ``max_batch``
events, or what gathered within ``window`` seconds of its oldest event. It is ``POST``ed as
``{"events": [...]}`` with ``Content-Type: application/json`` and ``Hubbub-Signature``
(:func:`hubbub.webhooks.sign`, signed afresh per attempt). Any 2xx within ``timeout`` is
success; anything else (another status, a refused connection, the deadline) is retried after
``backoff`` seconds doubling to ``backoff_cap`` (each wait drawn from 50 to 100 % of that, the
jitter), until the batch's oldest event is ``max_age`` old: then the batch is dropped, logged
and counted. The batch behind waits for it (order per endpoint). Acknowledged once delivered
or dropped; a node that stops (or dies) before that leaves it to the next lease holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from hubbub import __version__
from hubbub.hub.errors import BrokerError
from hubbub.hub.webhooks.queues import Entry, Queue
from hubbub.webhooks import SIGNATURE_HEADER, sign

log = logging.getLogger("hubbub.webhooks")

MAX_BATCH = 100


def endpoint_label(url: str) -> str:
    """``scheme://host[:port]/path`` of an endpoint: no credentials, no query (either may hold
    a token), for logs, metrics and /v1/stats."""
    try:
        p = urlsplit(url)
        host = p.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{p.port}" if p.port else host
    except ValueError:
        return "<unparseable URL>"
    return urlunsplit((p.scheme, netloc, p.path, "", ""))


class Dispatcher:
    """The delivery loop of one endpoint (see the module docstring). ``results`` counts batches
    by outcome (``ok``, ``failed``: an attempt that failed, ``dropped``); ``dropped_events``
    the events dropped; ``depth`` and ``oldest_ts`` (unix ms) describe the queue as last
    read (refreshed about once a second)."""

    def __init__(
        self,
        url: str,
        queue: Queue,
        client: httpx.AsyncClient,
        secrets: Sequence[str],
        *,
        timeout: float,
        max_age: float,
        window: float = 1.0,
        backoff: float = 1.0,
        backoff_cap: float = 60.0,
        poll: float = 0.25,
        visibility: float = 11.0,
        max_batch: int = MAX_BATCH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.label = endpoint_label(url)
        self.queue = queue
        self._client = client
        self._secrets = list(secrets)
        self.timeout = timeout
        self.max_age = max_age
        self.window = window
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.poll = poll
        self.visibility = visibility
        self.max_batch = max_batch
        self._clock = clock
        self.wake = asyncio.Event()
        self.results: Counter[str] = Counter()
        self.dropped_events = 0
        self.depth = 0
        self.oldest_ts: int | None = None
        self._gauged = 0.0
        self.stopped = False

    # ---- the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Deliver until stopped; Redis outages are waited out (never raises BrokerError)."""
        while not self.stopped:
            try:
                await self._gauge()
                if not await self.queue.hold():
                    await self._sleep(min(1.0, self.visibility / 4))
                    continue
                batch = await self._gather()
                if not batch:
                    await self._sleep(self.poll)
                    continue
                if await self._deliver(batch):
                    await self.queue.ack(batch)
                    self._gauged = 0.0
            except BrokerError as exc:
                log.debug("webhook queue %s: redis unavailable: %r", self.label, exc.__cause__)
                await asyncio.sleep(min(1.0, self.poll * 4))
            except Exception:  # a bug must not end delivery for good
                log.exception("webhook delivery to %s crashed; going on in 1 s", self.label)
                await asyncio.sleep(1.0)

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds`` or until an event is pushed on this node."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)
        self.wake.clear()

    async def _gauge(self) -> None:
        now = time.monotonic()
        if now - self._gauged < 1.0:
            return
        self._gauged = now
        self.depth, self.oldest_ts = await self.queue.gauge()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _gather(self) -> list[Entry]:
        batch = await self.queue.read(self.max_batch, True)
        while batch and len(batch) < self.max_batch:
            age = (self._now_ms() - batch[0].ts) / 1000
            if age >= self.window or self.stopped:
                break
            await self._sleep(self.window - age)
            batch.extend(await self.queue.read(self.max_batch - len(batch), False))
        return batch

    async def _deliver(self, batch: list[Entry]) -> bool:
        """Send ``batch`` until it succeeds or is too old (True: acknowledge it), or until this
        node loses the lease or stops (False: the next holder sends it)."""
        body = b'{"events":[' + b",".join(e.raw for e in batch) + b"]}"
        oldest = min(e.ts for e in batch)
        attempt = 0
        while not self.stopped:
            if (self._now_ms() - oldest) / 1000 > self.max_age:
                self.results["dropped"] += 1
                self.dropped_events += len(batch)
                log.warning(
                    "webhook batch of %d events to %s dropped: undelivered for more than "
                    "HUB_WEBHOOK_MAX_AGE (%g s)", len(batch), self.label, self.max_age,
                )  # fmt: skip
                return True
            if await self._post(body):
                self.results["ok"] += 1
                return True
            self.results["failed"] += 1
            delay = min(self.backoff_cap, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)
            attempt += 1
            if not await self._wait_holding(delay):
                return False
        return False

    async def _wait_holding(self, seconds: float) -> bool:
        """Sleep ``seconds`` while renewing the lease; False when it was lost or we stop."""
        deadline = time.monotonic() + seconds
        while not self.stopped:
            if not await self.queue.hold():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, self.visibility / 3))
        return False

    async def _post(self, body: bytes) -> bool:
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secrets, body),
            "User-Agent": f"hubbub/{__version__}",
        }
        try:
            async with asyncio.timeout(self.timeout):
                r = await self._client.post(self.url, content=body, headers=headers)
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            log.info("webhook to %s failed: %s", self.label, type(exc).__name__)
            return False
        if 200 <= r.status_code < 300:
            return True
        log.info("webhook to %s answered %d", self.label, r.status_code)
        return False

    def stats(self) -> dict[str, Any]:
        age = None
        if self.oldest_ts is not None:
            age = max(0.0, self._clock() - self.oldest_ts / 1000)
        return {
            "endpoint": self.label,
            "deliveries": {k: self.results.get(k, 0) for k in ("ok", "failed", "dropped")},
            "dropped_events": self.dropped_events,
            "queue_depth": self.depth,
            "oldest_age_seconds": age,
        }
