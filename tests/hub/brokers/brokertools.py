"""Helpers shared by the broker tests: a recording NodeListener and a polling wait."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hubbub.hub.envelope import Publication


@dataclass
class Recorder:
    """A NodeListener that records everything it is told."""

    pubs: list[Publication] = field(default_factory=list)
    controls: list[dict[str, Any]] = field(default_factory=list)
    states: list[bool] = field(default_factory=list)
    resyncs: int = 0

    def deliver(self, pub: Publication) -> None:
        self.pubs.append(pub)

    def on_control(self, message: dict[str, Any]) -> None:
        self.controls.append(message)

    def resync(self) -> None:
        self.resyncs += 1

    def broker_state(self, up: bool) -> None:
        self.states.append(up)

    def of(self, room: str) -> list[Publication]:
        return [p for p in self.pubs if p.room == room]
