"""An engine given by URL (not run by this gateway) reports on /metrics what its own /metrics gives:
requests running and waiting, KV-cache usage, prefix-cache hit ratio; no CPU, memory or GPU."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.servers import GatewayProcess, eventually
from tests.sim.conftest import RunningSim
from tests.unit.samples import exposition_total

LABELS = {"model": "sim", "version": "-", "replica": "sim-0"}


@pytest.fixture(scope="module")
def gateway(sim: RunningSim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    models = [{"name": "sim", "task": "chat", "engine": {"url": sim.base_url}}]
    env = {"OFFLOAD_HEALTH__SCRAPE_INTERVAL": "0.2"}
    gw = GatewayProcess(tmp_path_factory.mktemp("usage"), models, env).start()
    yield gw
    gw.stop()


def page(gw: GatewayProcess) -> str:
    return httpx.get(gw.base_url + "/metrics", timeout=5).text


def test_a_url_engine_reports_the_figures_of_its_metrics_page_only(gateway: GatewayProcess) -> None:
    client = httpx.Client(base_url=gateway.base_url, timeout=10)
    body = {"model": "sim", "messages": [{"role": "user", "content": "hello there"}]}
    assert client.post("/v1/chat/completions", json=body).status_code == 200

    def reported() -> str:
        text = page(gateway)
        # the simulator counts every prompt token as a prefix-cache lookup, and never hits
        assert exposition_total(text, "offload_engine_prefix_cache_hit_ratio", **LABELS) == 0.0
        return text

    text = eventually(reported, timeout=10)
    for name in (
        "offload_engine_requests_running",
        "offload_engine_requests_waiting",
        "offload_engine_kv_cache_usage_ratio",
    ):
        assert exposition_total(text, name, **LABELS) == 0.0, name
    for name in (
        "offload_engine_cpu_seconds_total",
        "offload_engine_cpu_cores",
        "offload_engine_memory_bytes",
        "offload_engine_gpu_utilization_ratio",
        "offload_engine_gpu_memory_bytes",
    ):
        assert exposition_total(text, name) is None, f"{name} for an engine this gateway does not run"


def test_the_figures_follow_the_engine_while_it_works(gateway: GatewayProcess) -> None:
    body = {
        "model": "sim",
        "messages": [{"role": "user", "content": "hold on"}],
        "stream": True,
        "sim": {"stall_after": 2, "stall_s": 60},  # the engine keeps the request until we leave
    }
    with (
        httpx.Client(base_url=gateway.base_url, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as stream,
    ):
        lines = stream.iter_lines()  # held: dropping the iterator would close the stream
        assert next(lines)  # under way

        def working() -> None:
            text = page(gateway)
            assert exposition_total(text, "offload_engine_requests_running", **LABELS) == 1.0
            kv = exposition_total(text, "offload_engine_kv_cache_usage_ratio", **LABELS)
            assert kv is not None and kv > 0

        eventually(working, timeout=10)

    def idle() -> None:  # leaving the stream aborts the request on the engine
        assert exposition_total(page(gateway), "offload_engine_requests_running", **LABELS) == 0.0

    eventually(idle, timeout=10)
