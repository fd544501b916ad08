"""Whether a replica may take traffic: a small circuit breaker per replica, fed by active probes
and by request outcomes.

* ``UNKNOWN`` until the first probe answers: a starting or newly added engine gets no traffic.
* ``UP`` (closed): traffic flows. ``failure_threshold`` consecutive request failures (connect errors,
  engine 5xx) open the circuit; a refused probe takes the replica ``DOWN`` at once.
* ``DOWN`` (open): no traffic until ``cooldown`` has passed *and* a probe succeeds, which makes it
  ``HALF_OPEN``: one trial request at a time is let through; its success closes the circuit, its
  failure opens it again with the cooldown doubled (up to ``max_cooldown``).

How loaded a replica is lives apart, in :mod:`gateway.routing.load`.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gateway.routing.table import Replica


class State(enum.Enum):
    """What the gateway believes about a replica."""

    UNKNOWN = "unknown"
    UP = "up"
    HALF_OPEN = "half_open"
    DOWN = "down"


@dataclass(slots=True)
class Breaker:
    """The circuit state of one replica."""

    state: State = State.UNKNOWN
    failures: int = 0
    cooldown: float = 0.0
    open_until: float = 0.0
    trial_in_flight: bool = False
    since: float = field(default_factory=time.monotonic)


class Breakers:
    """Replica id -> circuit breaker. State the probe loop and request outcomes drive; the one thing it
    tells others is when a probe takes a replica down (:meth:`on_probe_down`)."""

    def __init__(self, failure_threshold: int = 3, cooldown: float = 2.0, max_cooldown: float = 30.0) -> None:
        self._breakers: dict[str, Breaker] = {}
        self._threshold = failure_threshold
        self._base_cooldown = cooldown
        self._max_cooldown = max_cooldown
        self._probe_down: list[Callable[[str], None]] = []

    def on_probe_down(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(replica_id)`` whenever a health probe takes a replica down.

        Only probes: a replica whose engine stopped answering its health check is gone for the
        streams still open on it too, while failed requests open the circuit for new traffic only
        (an engine that refuses a few requests under overload still serves its open streams).
        """
        self._probe_down.append(callback)

    def _get(self, replica_id: str) -> Breaker:
        breaker = self._breakers.get(replica_id)
        if breaker is None:
            breaker = self._breakers[replica_id] = Breaker()
        return breaker

    def state(self, replica_id: str) -> State:
        """The current state of a replica."""
        return self._get(replica_id).state

    @staticmethod
    def _set(breaker: Breaker, state: State) -> bool:
        if breaker.state is state:
            return False
        breaker.state = state
        breaker.since = time.monotonic()
        return True

    def mark(self, replica_id: str, state: State) -> bool:
        """Force a state (an engine the supervisor saw healthy, tests); True when it changed."""
        return self._set(self._get(replica_id), state)

    # --- active probes -------------------------------------------------------------------------
    def probe_ok(self, replica_id: str, now: float | None = None) -> bool:
        """A health probe succeeded. True when the state changed."""
        b = self._get(replica_id)
        now = time.monotonic() if now is None else now
        if b.state is State.UNKNOWN:
            return self._set(b, State.UP)
        if b.state is State.DOWN and now >= b.open_until:
            return self._set(b, State.HALF_OPEN)
        return False

    def probe_failed(
        self, replica_id: str, refused: bool, consecutive: int, now: float | None = None
    ) -> bool:
        """A probe failed (``refused``: nothing listens). True when the state changed."""
        b = self._get(replica_id)
        if refused or (consecutive >= self._threshold and b.state is not State.UNKNOWN):
            changed = self._open(b, time.monotonic() if now is None else now)
            if changed:
                for callback in self._probe_down:
                    callback(replica_id)
            return changed
        return False

    # --- request outcomes ----------------------------------------------------------------------
    def admit(self, replica_id: str) -> None:
        """A request was sent to the replica: on a half-open circuit it is the one trial."""
        b = self._get(replica_id)
        if b.state is State.HALF_OPEN:
            b.trial_in_flight = True

    def success(self, replica_id: str) -> bool:
        """A request to the replica succeeded. True when the state changed."""
        b = self._get(replica_id)
        b.failures = 0
        if b.state is State.HALF_OPEN:
            b.trial_in_flight = False
            b.cooldown = 0.0
            return self._set(b, State.UP)
        return False

    def abandoned(self, replica_id: str) -> None:
        """A request ended with no verdict (cancelled): a half-open replica may take a new trial."""
        self._get(replica_id).trial_in_flight = False

    def failure(self, replica_id: str, unreachable: bool, now: float | None = None) -> bool:
        """A request failed at the engine (not the client's fault). True when the state changed."""
        b = self._get(replica_id)
        b.failures += 1
        now = time.monotonic() if now is None else now
        if unreachable or b.state is State.HALF_OPEN or b.failures >= self._threshold:
            return self._open(b, now)
        return False

    def _open(self, b: Breaker, now: float) -> bool:
        b.trial_in_flight = False
        if b.state is not State.DOWN:
            b.cooldown = min(self._max_cooldown, max(self._base_cooldown, b.cooldown * 2))
            b.open_until = now + b.cooldown
        return self._set(b, State.DOWN)

    # --- routing -------------------------------------------------------------------------------
    def available(self, replica_id: str) -> bool:
        """True when the replica may take a request now."""
        b = self._get(replica_id)
        if b.state is State.UP:
            return True
        return b.state is State.HALF_OPEN and not b.trial_in_flight

    def is_up(self, replica_id: str) -> bool:
        """True when the replica is serving (closed or half-open circuit)."""
        return self._get(replica_id).state in (State.UP, State.HALF_OPEN)

    def healthy(self, replicas: Iterable[Replica], exclude: frozenset[str] = frozenset()) -> list[Replica]:
        """The replicas that may take a request now, in the given order."""
        return [r for r in replicas if r.id not in exclude and self.available(r.id)]

    def snapshot(self, replica_id: str) -> Breaker:
        """The replica's circuit (read-only use)."""
        return self._get(replica_id)

    def forget_ids(self, ids: Iterable[str]) -> None:
        """Drop the state of these replicas (they start over as UNKNOWN)."""
        for rid in ids:
            self._breakers.pop(rid, None)

    def forget(self, keep: set[str]) -> None:
        """Drop the state of replicas no longer configured."""
        for rid in [r for r in self._breakers if r not in keep]:
            del self._breakers[rid]
