"""Replica health and load state, fed by active probes and by request outcomes."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from gateway.routing.table import Replica


class State(enum.Enum):
    """What the gateway believes about a replica."""

    UNKNOWN = "unknown"  # not probed yet: starting engines never get traffic
    UP = "up"
    DOWN = "down"


@dataclass(slots=True)
class ReplicaHealth:
    """Mutable state of one replica."""

    state: State = State.UNKNOWN
    in_flight: int = 0
    since: float = field(default_factory=time.monotonic)


class HealthRegistry:
    """Replica id -> health. Updated by the probe loop (active) and by request outcomes (passive)."""

    def __init__(self) -> None:
        self._health: dict[str, ReplicaHealth] = {}

    def _get(self, replica_id: str) -> ReplicaHealth:
        health = self._health.get(replica_id)
        if health is None:
            health = self._health[replica_id] = ReplicaHealth()
        return health

    def state(self, replica_id: str) -> State:
        """The current state of a replica."""
        return self._get(replica_id).state

    def mark(self, replica_id: str, state: State) -> bool:
        """Set a replica's state; True when it changed."""
        health = self._get(replica_id)
        if health.state is state:
            return False
        health.state = state
        health.since = time.monotonic()
        return True

    def is_up(self, replica_id: str) -> bool:
        """True when the replica may receive traffic."""
        return self._get(replica_id).state is State.UP

    def healthy(self, replicas: tuple[Replica, ...]) -> list[Replica]:
        """The replicas that may receive traffic, in the given order."""
        return [r for r in replicas if self.is_up(r.id)]

    def in_flight(self, replica_id: str) -> int:
        """Requests the gateway has outstanding on a replica."""
        return self._get(replica_id).in_flight

    def begin(self, replica_id: str) -> None:
        """A request was sent to the replica."""
        self._get(replica_id).in_flight += 1

    def end(self, replica_id: str) -> None:
        """A request to the replica finished (any outcome)."""
        health = self._get(replica_id)
        health.in_flight = max(0, health.in_flight - 1)
