"""Replica choice policies: small pure classes, ``choose(candidates) -> replica``.

Health filtering happens once before a policy sees the candidates.
"""

from __future__ import annotations

from typing import Protocol

from gateway.routing.health import HealthRegistry
from gateway.routing.table import Replica


class ReplicaPolicy(Protocol):
    """Chooses one of the healthy candidates (never empty)."""

    def choose(self, candidates: list[Replica]) -> Replica: ...


class LeastOutstanding:
    """The replica with the fewest requests in flight from this gateway; ties go to the first."""

    def __init__(self, health: HealthRegistry) -> None:
        self._health = health

    def choose(self, candidates: list[Replica]) -> Replica:
        return min(candidates, key=lambda r: self._health.in_flight(r.id))
