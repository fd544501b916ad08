"""How loaded each replica is: the gateway's own requests in flight plus what the engine reports.

Least-outstanding and prefix-affinity choices compare :meth:`Loads.load`; whether a replica may
take traffic at all is the circuit breaker's business (:mod:`gateway.routing.breaker`).
"""

from __future__ import annotations

from dataclasses import dataclass

KV_PRESSURE = 0.9
"""KV-cache usage above which an engine is about to preempt: counted as two more queued requests."""


@dataclass(slots=True)
class Load:
    """The load figures of one replica."""

    in_flight: int = 0  # requests the gateway has outstanding there
    engine_waiting: float = 0.0  # vllm:num_requests_waiting, scraped
    engine_running: float = 0.0  # vllm:num_requests_running, scraped
    kv_cache_usage: float = 0.0  # vllm:kv_cache_usage_perc (0..1), scraped


class Loads:
    """Replica id -> load. Pure state: leases and the metrics scraper drive it."""

    def __init__(self) -> None:
        self._loads: dict[str, Load] = {}

    def _get(self, replica_id: str) -> Load:
        load = self._loads.get(replica_id)
        if load is None:
            load = self._loads[replica_id] = Load()
        return load

    def load(self, replica_id: str) -> float:
        """A comparable load figure: our in-flight requests plus the engine's queue."""
        h = self._get(replica_id)
        return h.in_flight + h.engine_waiting + (2.0 if h.kv_cache_usage > KV_PRESSURE else 0.0)

    def in_flight(self, replica_id: str) -> int:
        """Requests the gateway has outstanding on a replica."""
        return self._get(replica_id).in_flight

    def begin(self, replica_id: str) -> None:
        """A request was sent to the replica."""
        self._get(replica_id).in_flight += 1

    def end(self, replica_id: str) -> None:
        """A request to the replica finished (any outcome)."""
        h = self._get(replica_id)
        h.in_flight = max(0, h.in_flight - 1)

    def engine_load(self, replica_id: str, waiting: float, running: float, kv_usage: float) -> None:
        """Load reported by the engine's own metrics."""
        h = self._get(replica_id)
        h.engine_waiting, h.engine_running, h.kv_cache_usage = waiting, running, kv_usage

    def snapshot(self, replica_id: str) -> Load:
        """The replica's figures (read-only use)."""
        return self._get(replica_id)

    def forget(self, keep: set[str]) -> None:
        """Drop the figures of replicas no longer configured."""
        for rid in [r for r in self._loads if r not in keep]:
            del self._loads[rid]
