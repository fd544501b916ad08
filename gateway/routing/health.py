"""Replica health and load, fed by active probes, engine metrics and request outcomes.

Health is a small circuit breaker per replica:

* ``UNKNOWN`` until the first probe answers: a starting or newly added engine gets no traffic.
* ``UP`` (closed): traffic flows. ``failure_threshold`` consecutive request failures (connect errors,
  engine 5xx) open the circuit; a refused probe takes the replica ``DOWN`` at once.
* ``DOWN`` (open): no traffic until ``cooldown`` has passed *and* a probe succeeds, which makes it
  ``HALF_OPEN``: one trial request at a time is let through; its success closes the circuit, its
  failure opens it again with the cooldown doubled (up to ``max_cooldown``).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from gateway.routing.table import Replica


class State(enum.Enum):
    """What the gateway believes about a replica."""

    UNKNOWN = "unknown"
    UP = "up"
    HALF_OPEN = "half_open"
    DOWN = "down"


@dataclass(slots=True)
class ReplicaHealth:
    """Mutable state of one replica."""

    state: State = State.UNKNOWN
    in_flight: int = 0
    failures: int = 0
    cooldown: float = 0.0
    open_until: float = 0.0
    trial_in_flight: bool = False
    engine_waiting: float = 0.0  # vllm:num_requests_waiting, scraped
    engine_running: float = 0.0  # vllm:num_requests_running, scraped
    kv_cache_usage: float = 0.0  # vllm:kv_cache_usage_perc (0..1), scraped
    since: float = field(default_factory=time.monotonic)


class HealthRegistry:
    """Replica id -> health. Pure state: the probe loop and the services drive it."""

    def __init__(self, failure_threshold: int = 3, cooldown: float = 2.0, max_cooldown: float = 30.0) -> None:
        self._health: dict[str, ReplicaHealth] = {}
        self._threshold = failure_threshold
        self._base_cooldown = cooldown
        self._max_cooldown = max_cooldown

    def _get(self, replica_id: str) -> ReplicaHealth:
        health = self._health.get(replica_id)
        if health is None:
            health = self._health[replica_id] = ReplicaHealth()
        return health

    def state(self, replica_id: str) -> State:
        """The current state of a replica."""
        return self._get(replica_id).state

    def _set(self, health: ReplicaHealth, state: State) -> bool:
        if health.state is state:
            return False
        health.state = state
        health.since = time.monotonic()
        return True

    def mark(self, replica_id: str, state: State) -> bool:
        """Force a state (tests, admin); True when it changed."""
        return self._set(self._get(replica_id), state)

    # --- active probes -------------------------------------------------------------------------
    def probe_ok(self, replica_id: str, now: float | None = None) -> bool:
        """A health probe succeeded. True when the state changed."""
        h = self._get(replica_id)
        now = time.monotonic() if now is None else now
        if h.state is State.UNKNOWN:
            return self._set(h, State.UP)
        if h.state is State.DOWN and now >= h.open_until:
            return self._set(h, State.HALF_OPEN)
        return False

    def probe_failed(
        self, replica_id: str, refused: bool, consecutive: int, now: float | None = None
    ) -> bool:
        """A probe failed (``refused``: nothing listens). True when the state changed."""
        h = self._get(replica_id)
        if refused or (consecutive >= self._threshold and h.state is not State.UNKNOWN):
            return self._open(h, time.monotonic() if now is None else now)
        return False

    # --- request outcomes ----------------------------------------------------------------------
    def success(self, replica_id: str) -> bool:
        """A request to the replica succeeded. True when the state changed."""
        h = self._get(replica_id)
        h.failures = 0
        if h.state is State.HALF_OPEN:
            h.trial_in_flight = False
            h.cooldown = 0.0
            return self._set(h, State.UP)
        return False

    def abandoned(self, replica_id: str) -> None:
        """A request ended with no verdict (cancelled): a half-open replica may take a new trial."""
        self._get(replica_id).trial_in_flight = False

    def failure(self, replica_id: str, unreachable: bool, now: float | None = None) -> bool:
        """A request failed at the engine (not the client's fault). True when the state changed."""
        h = self._get(replica_id)
        h.failures += 1
        now = time.monotonic() if now is None else now
        if unreachable or h.state is State.HALF_OPEN or h.failures >= self._threshold:
            return self._open(h, now)
        return False

    def _open(self, h: ReplicaHealth, now: float) -> bool:
        h.trial_in_flight = False
        if h.state is not State.DOWN:
            h.cooldown = min(self._max_cooldown, max(self._base_cooldown, h.cooldown * 2))
            h.open_until = now + h.cooldown
        return self._set(h, State.DOWN)

    # --- routing -------------------------------------------------------------------------------
    def available(self, replica_id: str) -> bool:
        """True when the replica may take a request now."""
        h = self._get(replica_id)
        if h.state is State.UP:
            return True
        return h.state is State.HALF_OPEN and not h.trial_in_flight

    def is_up(self, replica_id: str) -> bool:
        """True when the replica is serving (closed or half-open circuit)."""
        return self._get(replica_id).state in (State.UP, State.HALF_OPEN)

    def healthy(self, replicas: tuple[Replica, ...], exclude: frozenset[str] = frozenset()) -> list[Replica]:
        """The replicas that may take a request now, in the given order."""
        return [r for r in replicas if r.id not in exclude and self.available(r.id)]

    def load(self, replica_id: str) -> float:
        """A comparable load figure: our in-flight requests plus the engine's queue."""
        h = self._get(replica_id)
        return h.in_flight + h.engine_waiting + (2.0 if h.kv_cache_usage > 0.9 else 0.0)

    def in_flight(self, replica_id: str) -> int:
        """Requests the gateway has outstanding on a replica."""
        return self._get(replica_id).in_flight

    def begin(self, replica_id: str) -> None:
        """A request was sent to the replica."""
        h = self._get(replica_id)
        h.in_flight += 1
        if h.state is State.HALF_OPEN:
            h.trial_in_flight = True

    def end(self, replica_id: str) -> None:
        """A request to the replica finished (any outcome)."""
        h = self._get(replica_id)
        h.in_flight = max(0, h.in_flight - 1)

    def engine_load(self, replica_id: str, waiting: float, running: float, kv_usage: float) -> None:
        """Load reported by the engine's own metrics."""
        h = self._get(replica_id)
        h.engine_waiting, h.engine_running, h.kv_cache_usage = waiting, running, kv_usage

    def snapshot(self, replica_id: str) -> ReplicaHealth:
        """The replica's state (read-only use)."""
        return self._get(replica_id)

    def forget_ids(self, ids: set[str]) -> None:
        """Drop the state of these replicas (they start over as UNKNOWN)."""
        for rid in ids:
            self._health.pop(rid, None)

    def forget(self, keep: set[str]) -> None:
        """Drop state of replicas no longer configured."""
        for rid in [r for r in self._health if r not in keep]:
            del self._health[rid]
