"""Background watch over engines: active ``/health`` probes, ``/metrics`` scrapes (load signals and
what engines report), and what local engines use of the machine (:mod:`gateway.engine_usage`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import structlog
from prometheus_client.parser import text_string_to_metric_families

from gateway.engine_usage import EngineFigures, ProcessFigures, VllmFigures
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
# Samples of vLLM's counters, in prompt tokens (by sample name: a family is named without its
# `_total` only when the TYPE line names the sample, as prometheus_client writes it)
_COUNTERS = {"vllm:prefix_cache_queries_total": "queries", "vllm:prefix_cache_hits_total": "hits"}


def parse_engine_load(text: str) -> dict[str, float]:
    """Sum vLLM's load gauges from a /metrics page (missing ones count as 0)."""
    load = {"waiting": 0.0, "running": 0.0, "kv": 0.0}
    for family in text_string_to_metric_families(text):
        key = _GAUGES.get(family.name)
        if key is not None:
            for sample in family.samples:
                load[key] += sample.value
    return load


def parse_engine_figures(text: str) -> VllmFigures:
    """What an engine reports on its /metrics page: requests running and waiting (summed over its
    label sets), KV-cache usage (the fullest, when a server runs several engines) and the
    prefix-cache counters. Missing ones count as 0; ValueError when it is not Prometheus text."""
    sums = {"waiting": 0.0, "running": 0.0, "queries": 0.0, "hits": 0.0}
    kv = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:kv_cache_usage_perc":
                kv = max(kv, sample.value)
            elif (key := _GAUGES.get(sample.name) or _COUNTERS.get(sample.name)) is not None:
                sums[key] += sample.value
    return VllmFigures(sums["running"], sums["waiting"], kv, sums["queries"], sums["hits"])


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
        local_usage: Callable[[], Mapping[str, ProcessFigures]] | None = None,
    ) -> None:
        """``local_usage``: samples the engines this process runs, by base URL (``offload run``);
        it blocks (it reads /proc and NVML), so it is called in a worker thread."""
        self._table = table
        self._breakers = breakers
        self._loads = loads
        self._upstream = upstream
        self._metrics = metrics
        self._settings = settings
        self._failures: dict[str, int] = {}
        self._last_scrape = 0.0
        self._local_usage = local_usage
        self._reported: dict[str, VllmFigures] = {}  # replica id -> its engine's last /metrics
        self._used: Mapping[str, ProcessFigures] = {}  # base URL -> last sample of a local engine

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
        """Read each serving replica's load gauges and other figures from its /metrics."""
        replicas = [r for r in self._table().replicas() if self._breakers.is_up(r.id)]
        kept = {r.id for r in replicas}
        self._reported = {k: v for k, v in self._reported.items() if k in kept}
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
                figures = parse_engine_figures(page)
            except ValueError:
                continue  # not Prometheus text: keep the last figures
            self._reported[replica.id] = figures
            self._loads.engine_load(replica.id, figures.waiting, figures.running, figures.kv_cache_usage)

    async def sample_local(self) -> None:
        """Sample what the local engines use (CPU, memory, GPU), off the event loop."""
        if self._local_usage is None:
            return
        try:
            self._used = await asyncio.to_thread(self._local_usage)
        except Exception:  # a failed sample must not stop the health probes: keep the last one
            _log.warning("engine usage not sampled", exc_info=True)

    def local_usage(self, base_url: str) -> ProcessFigures | None:
        """The last sample of the local engine at ``base_url``, routed to or not (one starting)."""
        return self._used.get(base_url)

    def engine_figures(self) -> list[EngineFigures]:
        """Each replica's latest figures: what its engine reported (while it serves) and, for a
        local engine, what its processes use."""
        found = []
        for r in self._table().replicas():
            used, reported = self._used.get(r.base_url), self._reported.get(r.id)
            if used is not None or reported is not None:
                found.append(EngineFigures(r.model, r.version, r.id, r.base_url, used, reported))
        return found

    async def run(self) -> None:
        """Probe (and scrape) forever; cancel to stop."""
        while True:
            await self.probe_all()
            interval = self._settings.scrape_interval
            if interval and time.monotonic() - self._last_scrape >= interval:
                self._last_scrape = time.monotonic()
                await self.scrape_all()
                await self.sample_local()
            await asyncio.sleep(self._settings.probe_interval)
