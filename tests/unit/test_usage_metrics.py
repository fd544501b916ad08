"""Engine usage on the gateway's side: vLLM's figures parsed, combined with local engines' samples by
the health monitor, exported as ``offload_engine_*`` and shown by ``offload engines list``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engines.usage import EngineUsage, GpuUsage
from gateway.engine_usage import (
    EngineFigures,
    EngineUsageCollector,
    ProcessFigures,
    VllmFigures,
    usage_fields,
)
from gateway.main import _usage_cells
from gateway.metrics import Metrics
from gateway.monitor import HealthMonitor, parse_engine_figures
from gateway.routing.breaker import Breakers
from gateway.routing.load import Loads
from gateway.routing.table import RouteTable
from gateway.settings import HealthSettings
from gateway.upstream import ProbeResult
from tests.unit.conftest import CHAT_URL, EMBED_URL
from tests.unit.samples import metric_total

# What vLLM 0.32 serves (prometheus_client's exposition: counters as `_total`, and `_created`
# gauges), two engines behind one server (data parallel) so that sums and the fullest KV cache show.
VLLM_PAGE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 300.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 100.0
# HELP vllm:prefix_cache_queries_created Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_created gauge
vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.7e+09
vllm:prefix_cache_queries_created{engine="1",model_name="m"} 1.7e+09
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 100.0
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 0.0
"""

LOCAL = EngineUsage(12.5, 1.75, 3 * 2**30, 3)
ON_GPU = EngineUsage(40.0, 0.5, 2**30, 3, (GpuUsage(0, 0.9, 20 * 2**30), GpuUsage(1, None, 2**30)))


def series(metrics: Metrics) -> dict[str, list[dict[str, str]]]:
    """The label sets of every offload_engine_* sample, by sample name."""
    found: dict[str, list[dict[str, str]]] = {}
    text = metrics.render().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("offload_engine_"):
                found.setdefault(sample.name, []).append(sample.labels)
    return found


def test_parse_engine_figures_sums_requests_takes_the_fullest_kv_cache_and_reads_prefix_counters() -> None:
    figures = parse_engine_figures(VLLM_PAGE)
    assert figures == VllmFigures(running=3.0, waiting=4.0, kv_cache_usage=0.5, prefix_cache_queries=400.0,
                                  prefix_cache_hits=100.0)  # fmt: skip
    assert figures.prefix_cache_hit_ratio == 0.25


def test_a_page_without_vllm_figures_reads_as_zeros_and_no_hit_ratio() -> None:
    figures = parse_engine_figures("# nothing here\n")
    assert figures == VllmFigures()
    assert figures.prefix_cache_hit_ratio is None  # no lookups yet: no ratio rather than 0


def test_local_engines_export_cpu_memory_and_gpu_by_model_version_replica_and_device() -> None:
    metrics = Metrics()
    figures = [
        EngineFigures("chat", "v1", "chat-v1-0", "http://a", ON_GPU, VllmFigures(1, 2, 0.3, 10, 4)),
        EngineFigures("embed", "", "embed-0", "http://b", LOCAL, None),
    ]
    EngineUsageCollector(metrics.registry, lambda: figures)

    chat = {"model": "chat", "version": "v1", "replica": "chat-v1-0"}
    embed = {"model": "embed", "version": "-", "replica": "embed-0"}
    value = lambda name, **labels: metric_total(metrics, name, **labels)  # noqa: E731
    assert value("offload_engine_cpu_seconds_total", **chat) == 40.0
    assert value("offload_engine_cpu_seconds_total", **embed) == 12.5
    assert value("offload_engine_cpu_cores", **embed) == 1.75
    assert value("offload_engine_memory_bytes", **embed) == 3 * 2**30
    assert value("offload_engine_gpu_utilization_ratio", **chat, device="0") == 0.9
    assert value("offload_engine_gpu_memory_bytes", **chat, device="0") == 20 * 2**30
    assert value("offload_engine_gpu_memory_bytes", **chat, device="1") == 2**30
    assert value("offload_engine_gpu_utilization_ratio", **chat, device="1") is None  # unknown: no sample
    assert value("offload_engine_kv_cache_usage_ratio", **chat) == 0.3
    assert value("offload_engine_requests_running", **chat) == 1
    assert value("offload_engine_requests_waiting", **chat) == 2
    assert value("offload_engine_prefix_cache_hit_ratio", **chat) == 0.4
    assert value("offload_engine_kv_cache_usage_ratio", **embed) is None  # not scraped: nothing made up
    assert not any(
        labels.get("model") == "embed" for labels in series(metrics)["offload_engine_gpu_memory_bytes"]
    )


def test_an_engine_that_is_not_local_reports_only_what_its_metrics_page_gives() -> None:
    metrics = Metrics()
    reported = VllmFigures(0, 0, 0.1, 0, 0)
    EngineUsageCollector(metrics.registry, lambda: [EngineFigures("chat", "", "chat-0", "u", None, reported)])

    names = set(series(metrics))
    assert names == {
        "offload_engine_kv_cache_usage_ratio",
        "offload_engine_requests_running",
        "offload_engine_requests_waiting",
    }  # and no prefix-cache ratio before the engine's first lookup


def test_no_engines_no_series_but_the_families_are_declared() -> None:
    metrics = Metrics()
    EngineUsageCollector(metrics.registry, list)
    text = metrics.render().decode()
    assert "# TYPE offload_engine_cpu_seconds_total counter" in text
    assert "# TYPE offload_engine_gpu_utilization_ratio gauge" in text
    assert series(metrics) == {}


class Pages:
    """The health monitor's view of engines: every probe succeeds, /metrics pages as given."""

    def __init__(self, pages: dict[str, str]) -> None:
        self.pages = pages

    async def probe(self, base_url: str, timeout: float) -> ProbeResult:
        return ProbeResult.OK

    async def get_text(self, base_url: str, path: str, timeout: float) -> str | None:
        return self.pages.get(base_url)


class LocalSamples:
    """Samples of the local engines, by base URL (or an error, as a broken sampler would raise)."""

    def __init__(self, samples: Mapping[str, ProcessFigures]) -> None:
        self.samples = samples
        self.calls = 0
        self.fail = False
        self.thrice = threading.Event()

    def __call__(self) -> Mapping[str, ProcessFigures]:
        self.calls += 1
        if self.calls >= 3:
            self.thrice.set()
        if self.fail:
            raise RuntimeError("psutil went away")
        return self.samples


def watch(table: RouteTable, pages: dict[str, str], local: LocalSamples | None) -> HealthMonitor:
    settings = HealthSettings()
    return HealthMonitor(lambda: table, Breakers(3, 60), Loads(), Pages(pages), Metrics(), settings, local)  # type: ignore[arg-type]


async def test_the_monitor_joins_what_local_engines_use_with_what_engines_report(table: RouteTable) -> None:
    local = LocalSamples({EMBED_URL: LOCAL})
    monitor = watch(table, {CHAT_URL: VLLM_PAGE}, local)
    assert monitor.engine_figures() == []  # nothing measured yet

    await monitor.probe_all()  # only engines that are up are scraped
    await monitor.scrape_all()
    await monitor.sample_local()

    by_model = {f.model: f for f in monitor.engine_figures()}
    assert by_model["chat"].engine == parse_engine_figures(VLLM_PAGE) and by_model["chat"].process is None
    assert by_model["embed"].process == LOCAL and by_model["embed"].engine is None  # no page: not scraped
    assert by_model["embed"].url == EMBED_URL and by_model["embed"].replica == "embed-0"
    assert monitor.local_usage(EMBED_URL) == LOCAL and monitor.local_usage(CHAT_URL) is None


async def test_a_failed_usage_sample_keeps_the_last_one_and_the_monitor_running(table: RouteTable) -> None:
    local = LocalSamples({EMBED_URL: LOCAL})
    monitor = watch(table, {}, local)
    await monitor.sample_local()
    local.fail = True
    await monitor.sample_local()
    assert [f.process for f in monitor.engine_figures()] == [LOCAL]


async def test_the_monitor_loop_samples_local_engines_on_each_scrape(table: RouteTable) -> None:
    local = LocalSamples({EMBED_URL: LOCAL})
    monitor = HealthMonitor(
        lambda: table,
        Breakers(3, 60),
        Loads(),
        Pages({}),  # type: ignore[arg-type]
        Metrics(),
        HealthSettings(probe_interval=0.01, scrape_interval=0.01),
        local,
    )
    task = asyncio.create_task(monitor.run())
    try:
        assert await asyncio.to_thread(local.thrice.wait, 10), "not sampled three times in 10 s"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_usage_fields_of_an_engine_not_measured_are_all_unknown() -> None:
    fields = usage_fields(None, None)
    assert fields.pop("gpus") == []
    assert set(fields.values()) == {None}


def test_usage_fields_carry_the_gpus_and_the_reported_figures() -> None:
    fields = usage_fields(ON_GPU, VllmFigures(1, 0, 0.5, 4, 1))
    assert fields["gpus"][0] == {"device": 0, "utilization": 0.9, "memory_bytes": 20 * 2**30}
    assert (fields["cpu_seconds"], fields["cpu_cores"], fields["memory_bytes"]) == (40.0, 0.5, 2**30)
    assert (fields["kv_cache_usage"], fields["prefix_cache_hit_ratio"]) == (0.5, 0.25)


def test_engines_list_shows_cores_cpu_seconds_memory_gpus_and_kv_cache() -> None:
    measured = usage_fields(ON_GPU, VllmFigures(1, 0, 0.5, 4, 1))
    assert _usage_cells(measured) == ["0.50", "40.0", "1.0G", "0:90%/20.0G,1:-/1.0G", "50%"]
    small = usage_fields(EngineUsage(0.04, None, 300 * 2**20, 1), None)
    assert _usage_cells(small) == ["-", "0.0", "300M", "-", "-"]
    assert _usage_cells({"name": "from an older gateway"}) == ["-", "-", "-", "-", "-"]
