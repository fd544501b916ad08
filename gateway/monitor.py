"""Active health probing of engines, run as a background task in the app's lifespan."""

from __future__ import annotations

import asyncio

import structlog

from gateway.metrics import Metrics
from gateway.routing.health import HealthRegistry, State
from gateway.routing.table import RouteTable
from gateway.settings import HealthSettings
from gateway.upstream import Upstream

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

    async def probe_all(self) -> None:
        """Probe every replica once, concurrently."""
        replicas = self._table.replicas()
        results = await asyncio.gather(
            *(self._upstream.probe(r.base_url, self._settings.probe_timeout) for r in replicas)
        )
        for replica, ok in zip(replicas, results, strict=True):
            state = State.UP if ok else State.DOWN
            if self._registry.mark(replica.id, state):
                _log.info("replica state", model=replica.model, replica=replica.id, state=state.value)
            self._metrics.replica_up.labels(replica.model, replica.id).set(1 if ok else 0)

    async def run(self) -> None:
        """Probe forever (cancel to stop)."""
        while True:
            await self.probe_all()
            await asyncio.sleep(self._settings.probe_interval)
