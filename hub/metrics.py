"""Counters a node keeps about itself; rendered as Prometheus text by the HTTP transport.

Plain integers bumped on the hot path (no locks, no label lookups per delivery).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Metrics:
    """Node-local counters. ``connections`` is a gauge per transport."""

    connections: Counter[str] = field(default_factory=Counter)
    publications: int = 0
    deliveries: int = 0
    recoveries: Counter[str] = field(default_factory=Counter)
    disconnects: Counter[int] = field(default_factory=Counter)
    auth_failures: int = 0
    rate_limited: int = 0
    resyncs: int = 0

    def render(self, extra: dict[str, float] | None = None) -> str:
        """Prometheus text exposition format 0.0.4."""
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP hubbub_{name} {help_}")
            out.append(f"# TYPE hubbub_{name} {kind}")
            for labels, value in samples:
                out.append(f"hubbub_{name}{labels} {value}")

        transports = ("ws", "sse", *(t for t in self.connections if t not in ("ws", "sse")))
        metric("connections", "gauge", "Open sessions by transport.",
               [(f'{{transport="{t}"}}', self.connections.get(t, 0)) for t in transports])  # fmt: skip
        metric("publications_total", "counter", "Publications accepted by this node.",
               [("", self.publications)])  # fmt: skip
        metric("deliveries_total", "counter", "Frames fanned out to local sessions.",
               [("", self.deliveries)])  # fmt: skip
        metric("recoveries_total", "counter", "Subscribes by outcome and gaps sent.",
               [(f'{{result="{k}"}}', v) for k, v in sorted(self.recoveries.items())])  # fmt: skip
        metric("disconnects_total", "counter", "Sessions closed, by close code.",
               [(f'{{code="{k}"}}', v) for k, v in sorted(self.disconnects.items())])  # fmt: skip
        metric("auth_failures_total", "counter", "Refused credentials.", [("", self.auth_failures)])
        metric("rate_limited_total", "counter", "Requests refused by rate limits.",
               [("", self.rate_limited)])  # fmt: skip
        metric("broker_resyncs_total", "counter", "Catch-ups after broker reconnects.",
               [("", self.resyncs)])  # fmt: skip
        for name, value in (extra or {}).items():
            metric(name, "gauge", name.replace("_", " ") + ".", [("", value)])
        return "\n".join(out) + "\n"
