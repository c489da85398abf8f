"""Counters a node keeps about itself; rendered as Prometheus text by the HTTP transport.

Plain integers bumped on the hot path (no locks, no label lookups per delivery). Gauges that
can be read off the hub (subscriptions, rooms, broker up, draining) are computed at scrape
time from :attr:`Metrics.node`, so keeping them costs nothing between scrapes. The list of
metrics and what they mean is in docs/operations.md.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Seconds. Broker round trips are sub-millisecond on a LAN and seconds when Redis struggles.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Seconds from the publishing node's stamp (``ts``) to fan-out on this node; includes clock skew
# between nodes and, after a reconnect, how far behind the catch-up was.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """A Prometheus histogram with fixed buckets: one bisect and three int adds per sample."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def samples(self, name: str) -> list[str]:
        out: list[str] = []
        total = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            total += n
            out.append(f'{name}_bucket{{le="{bound:g}"}} {total}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {self.sum:.6f}")
        out.append(f"{name}_count {self.count}")
        return out


def body_ts_ms(body: bytes) -> int | None:
    """The ``ts`` stamped into a message body by :func:`hub.envelope.make_body` (it precedes
    ``data``, and a ``"ts":`` inside a JSON string would be escaped), without decoding it."""
    i = body.find(b'"ts":')
    if i < 0:
        return None
    j = i + 5
    k = j
    while k < len(body) and 48 <= body[k] <= 57:
        k += 1
    return int(body[j:k]) if k > j else None


@dataclass
class Metrics:
    """Node-local counters. ``connections`` is a gauge per transport."""

    connections: Counter[str] = field(default_factory=Counter)
    publications: int = 0
    published: Counter[str] = field(default_factory=Counter)  # by transport: ws, http
    deliveries: int = 0
    frames_sent: Counter[str] = field(default_factory=Counter)  # by transport
    bytes_sent: Counter[str] = field(default_factory=Counter)  # by transport
    recoveries: Counter[str] = field(default_factory=Counter)
    disconnects: Counter[int] = field(default_factory=Counter)
    auth_failures: int = 0
    rate_limited: int = 0
    resyncs: int = 0
    publish_latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    delivery_lag: Histogram = field(default_factory=lambda: Histogram(LAG_BUCKETS))
    # The Hub, for gauges read at scrape time (sessions, rooms, broker state). Any: the hub
    # module imports this one.
    node: Any = None

    def observe_lag(self, body: bytes) -> None:
        ts = body_ts_ms(body)
        if ts is not None:
            self.delivery_lag.observe(max(0.0, time.time() - ts / 1000.0))

    def render(self, extra: dict[str, float] | None = None) -> str:
        """Prometheus text exposition format 0.0.4."""
        out: list[str] = []

        def head(name: str, kind: str, help_: str) -> None:
            out.append(f"# HELP hubbub_{name} {help_}")
            out.append(f"# TYPE hubbub_{name} {kind}")

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            head(name, kind, help_)
            for labels, value in samples:
                out.append(f"hubbub_{name}{labels} {value}")

        def by(counter: Counter[Any], label: str, *always: str) -> list[tuple[str, float]]:
            keys = [*always, *sorted(k for k in counter if k not in always)]
            return [(f'{{{label}="{k}"}}', counter.get(k, 0)) for k in keys]

        hub = self.node
        if hub is not None:
            metric("node_info", "gauge", "This node's id (label node).",
                   [(f'{{node="{hub.node_id}"}}', 1)])  # fmt: skip
        metric("connections", "gauge", "Open sessions by transport.",
               by(self.connections, "transport", "ws", "sse"))  # fmt: skip
        if hub is not None:
            subs = sum(len(s.subs) for s in list(hub.sessions.values()))
            metric("subscriptions", "gauge", "Room subscriptions of local sessions.",
                   [("", subs)])  # fmt: skip
            metric("rooms", "gauge", "Rooms with local subscribers.", [("", len(hub.rooms))])
            metric("broker_up", "gauge", "1 when the broker is reachable.",
                   [("", int(bool(hub.broker_up)))])  # fmt: skip
            metric("draining", "gauge", "1 while the node drains (SIGTERM).",
                   [("", int(bool(hub.draining)))])  # fmt: skip
            agreement = getattr(hub, "room_agreement", None)
            metric("room_options_mismatch", "gauge",
                   "1 when this node's [[rooms]] options differ from the cluster's (not ready).",
                   [("", int(bool(agreement is not None and agreement.mismatch)))])  # fmt: skip
        metric("publications_total", "counter", "Publications accepted by this node, by transport.",
               by(self.published, "transport", "http", "ws"))  # fmt: skip
        metric("deliveries_total", "counter", "Messages fanned out to local sessions.",
               [("", self.deliveries)])  # fmt: skip
        metric("frames_sent_total", "counter", "Frames written to clients, by transport.",
               by(self.frames_sent, "transport", "ws", "sse"))  # fmt: skip
        metric("bytes_sent_total", "counter", "Frame bytes written to clients, by transport.",
               by(self.bytes_sent, "transport", "ws", "sse"))  # fmt: skip
        metric("recoveries_total", "counter", "Subscribes by outcome and gaps sent.",
               by(self.recoveries, "result", "recovered", "live", "gap"))  # fmt: skip
        metric("disconnects_total", "counter",
               "Sessions closed, by close code (4001 slow consumer, 4002 no heartbeat, …).",
               [(f'{{code="{k}"}}', v) for k, v in sorted(self.disconnects.items())])  # fmt: skip
        metric("auth_failures_total", "counter", "Refused credentials.", [("", self.auth_failures)])
        if hub is not None:
            reasons = sorted(hub.auth.failures.items())
            metric("auth_refusals_total", "counter",
                   "Refused tokens by reason (expired, signature, malformed, missing, …).",
                   [(f'{{reason="{k}"}}', v) for k, v in reasons])  # fmt: skip
        metric("rate_limited_total", "counter", "Requests refused by rate limits.",
               [("", self.rate_limited)])  # fmt: skip
        metric("broker_resyncs_total", "counter",
               "Catch-ups after broker (pub/sub) reconnects.", [("", self.resyncs)])  # fmt: skip
        head("broker_publish_seconds", "histogram", "Broker publish round trip.")
        out.extend(self.publish_latency.samples("hubbub_broker_publish_seconds"))
        head("delivery_lag_seconds", "histogram", "Publish stamp to fan-out on this node.")
        out.extend(self.delivery_lag.samples("hubbub_delivery_lag_seconds"))
        webhooks = getattr(hub, "webhooks", None)
        if webhooks is not None:
            out.extend(webhooks.metric_lines())
        for name, value in (extra or {}).items():
            metric(name, "gauge", name.replace("_", " ") + ".", [("", value)])
        return "\n".join(out) + "\n"
