"""Active health probing of engines, run as a background task in the app's lifespan."""

from __future__ import annotations

import asyncio

import structlog

from gateway.metrics import Metrics
from gateway.routing.health import HealthRegistry, State
from gateway.routing.table import RouteTable
from gateway.settings import HealthSettings
from gateway.upstream import ProbeResult, Upstream

_log = structlog.get_logger("offload.health")


class HealthMonitor:
    """Probes every replica's ``/health`` on an interval and updates the registry."""

    def __init__(
        self,
        table: RouteTable,
        registry: HealthRegistry,
        upstream: Upstream,
        metrics: Metrics,
        settings: HealthSettings,
    ) -> None:
        self._table = table
        self._registry = registry
        self._upstream = upstream
        self._metrics = metrics
        self._settings = settings
        self._failures: dict[str, int] = {}

    async def probe_all(self) -> None:
        """Probe every replica once, concurrently."""
        replicas = self._table.replicas()
        results = await asyncio.gather(
            *(self._upstream.probe(r.base_url, self._settings.probe_timeout) for r in replicas)
        )
        for replica, result in zip(replicas, results, strict=True):
            if result is ProbeResult.OK:
                self._failures[replica.id] = 0
                state = State.UP
            else:
                # A busy engine can answer /health late; only a refused connection or repeated
                # failures take it out of rotation.
                failures = self._failures.get(replica.id, 0) + 1
                self._failures[replica.id] = failures
                down = result is ProbeResult.REFUSED or failures >= self._settings.failure_threshold
                state = State.DOWN if down else self._registry.state(replica.id)
                if state is State.UNKNOWN:
                    continue
            if self._registry.mark(replica.id, state):
                _log.info("replica state", model=replica.model, replica=replica.id, state=state.value)
            self._metrics.replica_up.labels(replica.model, replica.id).set(1 if state is State.UP else 0)

    async def run(self) -> None:
        """Probe forever (cancel to stop)."""
        while True:
            await self.probe_all()
            await asyncio.sleep(self._settings.probe_interval)
