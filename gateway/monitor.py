"""Background watch over engines: active ``/health`` probes and ``/metrics`` scrapes (load signals)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics
from gateway.protocol import paths
from gateway.routing.breaker import Breakers
from gateway.routing.load import Loads
from gateway.routing.table import Replica, RouteTable
from gateway.settings import HealthSettings
from gateway.upstream import ProbeResult, Upstream

_log = structlog.get_logger("offload.health")
_GAUGES = {
    "vllm:num_requests_waiting": "waiting",
    "vllm:num_requests_running": "running",
    "vllm:kv_cache_usage_perc": "kv",
}


def parse_engine_load(text: str) -> dict[str, float]:
    """Sum vLLM's load gauges from a /metrics page (missing ones count as 0)."""
    load = {"waiting": 0.0, "running": 0.0, "kv": 0.0}
    for family in text_string_to_metric_families(text):
        key = _GAUGES.get(family.name)
        if key is not None:
            for sample in family.samples:
                load[key] += sample.value
    return load


class HealthMonitor:
    """Probes every replica's ``/health`` and scrapes its ``/metrics`` on an interval."""

    def __init__(
        self,
        table: Callable[[], RouteTable],
        breakers: Breakers,
        loads: Loads,
        upstream: Upstream,
        metrics: Metrics,
        settings: HealthSettings,
    ) -> None:
        self._table = table
        self._breakers = breakers
        self._loads = loads
        self._upstream = upstream
        self._metrics = metrics
        self._settings = settings
        self._failures: dict[str, int] = {}
        self._last_scrape = 0.0

    async def probe_all(self, replicas: tuple[Replica, ...] | None = None) -> None:
        """Probe replicas once, concurrently (default: every replica of the current table)."""
        replicas = self._table().replicas() if replicas is None else replicas
        results = await asyncio.gather(
            *(self._upstream.probe(r.base_url, self._settings.probe_timeout) for r in replicas)
        )
        for replica, result in zip(replicas, results, strict=True):
            if result is ProbeResult.OK:
                self._failures[replica.id] = 0
                changed = self._breakers.probe_ok(replica.id)
            else:
                # A busy engine can answer /health late: only a refused connection or repeated
                # failures take it out of rotation.
                self._failures[replica.id] = failures = self._failures.get(replica.id, 0) + 1
                changed = self._breakers.probe_failed(replica.id, result is ProbeResult.REFUSED, failures)
            state = self._breakers.state(replica.id)
            if changed:
                _log.info(
                    "replica state",
                    model=replica.model,
                    version=replica.version or None,
                    replica=replica.id,
                    state=state.value,
                )
            labels = (replica.model, replica.version or "-", replica.id)
            self._metrics.replica_up.labels(*labels).set(1 if self._breakers.is_up(replica.id) else 0)
            self._metrics.replica_in_flight.labels(*labels).set(self._loads.in_flight(replica.id))

    async def scrape_all(self) -> None:
        """Read each serving replica's load gauges from its /metrics."""
        replicas = [r for r in self._table().replicas() if self._breakers.is_up(r.id)]
        pages = await asyncio.gather(
            *(
                self._upstream.get_text(r.base_url, paths.METRICS, self._settings.probe_timeout)
                for r in replicas
            )
        )
        for replica, page in zip(replicas, pages, strict=True):
            if page is None:
                continue
            try:
                load = parse_engine_load(page)
            except ValueError:
                continue  # not Prometheus text: keep the last figures
            self._loads.engine_load(replica.id, load["waiting"], load["running"], load["kv"])

    async def run(self) -> None:
        """Probe (and scrape) forever; cancel to stop."""
        while True:
            await self.probe_all()
            interval = self._settings.scrape_interval
            if interval and time.monotonic() - self._last_scrape >= interval:
                self._last_scrape = time.monotonic()
                await self.scrape_all()
            await asyncio.sleep(self._settings.probe_interval)
