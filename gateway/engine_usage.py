"""Engine usage: what each engine uses of its machine and what it reports itself, by model,
version and replica, as the ``offload_engine_*`` Prometheus series and ``/admin/engines`` fields.

The figures are gathered by the health monitor (gateway/monitor.py): vLLM's own gauges and counters
from each engine's ``/metrics``, and for the engines this process runs (``offload run``) CPU,
resident memory and GPU from :mod:`engines.usage`. The series are built from its latest figures when
Prometheus scrapes; CPU, memory and GPU exist for local engines only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_SERVED = ["model", "version", "replica"]


class GpuFigures(Protocol):
    """One GPU as an engine uses it (:class:`engines.usage.GpuUsage` has this shape)."""

    @property
    def device(self) -> int: ...
    @property
    def utilization(self) -> float | None: ...
    @property
    def memory_bytes(self) -> int: ...


class ProcessFigures(Protocol):
    """What a local engine's processes use (:class:`engines.usage.EngineUsage` has this shape)."""

    @property
    def cpu_seconds(self) -> float: ...
    @property
    def cpu_cores(self) -> float | None: ...
    @property
    def memory_bytes(self) -> int: ...
    @property
    def gpus(self) -> Sequence[GpuFigures]: ...


@dataclass(frozen=True, slots=True)
class VllmFigures:
    """What an engine reports on its own ``/metrics`` (parsed by gateway/monitor.py)."""

    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: float = 0.0  # counters, in prompt tokens, since the engine started
    prefix_cache_hits: float = 0.0

    @property
    def prefix_cache_hit_ratio(self) -> float | None:
        """Prompt tokens found in the prefix cache / tokens looked up, over the engine's lifetime
        (None before its first lookup)."""
        if self.prefix_cache_queries <= 0:
            return None
        return self.prefix_cache_hits / self.prefix_cache_queries


@dataclass(frozen=True, slots=True)
class EngineFigures:
    """One replica's engine: what its processes use (local engines only) and what it reports."""

    model: str
    version: str
    replica: str
    url: str
    process: ProcessFigures | None
    engine: VllmFigures | None


def usage_fields(p: ProcessFigures | None, e: VllmFigures | None) -> dict[str, Any]:
    """An engine's figures as JSON fields (``/admin/engines``); None where unknown."""
    return {
        "cpu_seconds": round(p.cpu_seconds, 2) if p else None,
        "cpu_cores": round(p.cpu_cores, 3) if p and p.cpu_cores is not None else None,
        "memory_bytes": p.memory_bytes if p else None,
        "gpus": [
            {"device": g.device, "utilization": g.utilization, "memory_bytes": g.memory_bytes}
            for g in (p.gpus if p else ())
        ],
        "kv_cache_usage": e.kv_cache_usage if e else None,
        "requests_running": e.running if e else None,
        "requests_waiting": e.waiting if e else None,
        "prefix_cache_hit_ratio": e.prefix_cache_hit_ratio if e else None,
    }


class EngineUsageCollector(Collector):
    """The ``offload_engine_*`` series, built at scrape time from ``source`` (the health monitor's
    latest figures): nothing is sampled on the scrape itself."""

    def __init__(self, registry: CollectorRegistry, source: Callable[[], Iterable[EngineFigures]]) -> None:
        self._source = source
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        return _families(())

    def collect(self) -> Iterator[Metric]:
        return _families(self._source())


def _families(figures: Iterable[EngineFigures]) -> Iterator[Metric]:
    gpu = [*_SERVED, "device"]
    cpu = CounterMetricFamily(
        "offload_engine_cpu_seconds", "CPU time used by the engine's processes", labels=_SERVED
    )
    cores = GaugeMetricFamily(
        "offload_engine_cpu_cores",
        "CPU cores the engine's processes use (averaged over the last sampling interval)",
        labels=_SERVED,
    )
    memory = GaugeMetricFamily(
        "offload_engine_memory_bytes", "Resident memory (RSS) of the engine's processes", labels=_SERVED
    )
    gpu_busy = GaugeMetricFamily(
        "offload_engine_gpu_utilization_ratio", "How busy a GPU the engine uses is (0..1)", labels=gpu
    )
    gpu_memory = GaugeMetricFamily(
        "offload_engine_gpu_memory_bytes", "GPU memory held by the engine's processes", labels=gpu
    )
    kv = GaugeMetricFamily(
        "offload_engine_kv_cache_usage_ratio", "KV-cache usage the engine reports (0..1)", labels=_SERVED
    )
    running = GaugeMetricFamily(
        "offload_engine_requests_running", "Requests the engine reports running", labels=_SERVED
    )
    waiting = GaugeMetricFamily(
        "offload_engine_requests_waiting", "Requests the engine reports waiting", labels=_SERVED
    )
    hits = GaugeMetricFamily(
        "offload_engine_prefix_cache_hit_ratio",
        "Prompt tokens found in the engine's prefix cache / tokens looked up, since it started",
        labels=_SERVED,
    )
    for f in figures:
        labels = [f.model, f.version or "-", f.replica]
        if (p := f.process) is not None:
            cpu.add_metric(labels, p.cpu_seconds)
            if p.cpu_cores is not None:
                cores.add_metric(labels, p.cpu_cores)
            memory.add_metric(labels, p.memory_bytes)
            for g in p.gpus:
                if g.utilization is not None:
                    gpu_busy.add_metric([*labels, str(g.device)], g.utilization)
                gpu_memory.add_metric([*labels, str(g.device)], g.memory_bytes)
        if (e := f.engine) is not None:
            kv.add_metric(labels, e.kv_cache_usage)
            running.add_metric(labels, e.running)
            waiting.add_metric(labels, e.waiting)
            if (ratio := e.prefix_cache_hit_ratio) is not None:
                hits.add_metric(labels, ratio)
    yield from (cpu, cores, memory, gpu_busy, gpu_memory, kv, running, waiting, hits)
