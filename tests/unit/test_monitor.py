from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest

from gateway.metrics import Metrics
from gateway.monitor import HealthMonitor, parse_engine_load
from gateway.routing.breaker import Breakers, State
from gateway.routing.load import Loads
from gateway.routing.table import RouteTable
from gateway.settings import HealthSettings
from gateway.upstream import ProbeResult
from tests.unit.conftest import CHAT_URL, EMBED_URL
from tests.unit.fakes import eventually
from tests.unit.samples import metric_total


class ScriptedProbes:
    """Answers probes from a per-URL script (the last answer repeats) and serves metrics pages."""

    def __init__(
        self, script: dict[str, list[ProbeResult]], pages: dict[str, str | None] | None = None
    ) -> None:
        self._script = script
        self._pages = pages or {}
        self.probed: list[str] = []
        self.scraped: list[str] = []

    async def probe(self, base_url: str, timeout: float) -> ProbeResult:
        self.probed.append(base_url)
        answers = self._script[base_url]
        return answers.pop(0) if len(answers) > 1 else answers[0]

    async def get_text(self, base_url: str, path: str, timeout: float) -> str | None:
        self.scraped.append(base_url + path)
        return self._pages.get(base_url)


@dataclass
class Watched:
    """A health monitor and what it feeds."""

    monitor: HealthMonitor
    breakers: Breakers
    loads: Loads
    metrics: Metrics


def monitor(table: RouteTable, probes: ScriptedProbes, threshold: int = 3, cooldown: float = 60.0) -> Watched:
    breakers, loads, metrics = Breakers(threshold, cooldown), Loads(), Metrics()
    settings = HealthSettings(failure_threshold=threshold)
    health_monitor = HealthMonitor(lambda: table, breakers, loads, probes, metrics, settings)  # type: ignore[arg-type]
    return Watched(health_monitor, breakers, loads, metrics)


async def probe_states(watched: Watched, rounds: int) -> list[State]:
    states = []
    for _ in range(rounds):
        await watched.monitor.probe_all()
        states.append(watched.breakers.state("chat-0"))
    return states


async def test_probe_all_marks_answering_engines_up_and_refused_ones_down(table: RouteTable) -> None:
    probes = ScriptedProbes({CHAT_URL: [ProbeResult.OK], EMBED_URL: [ProbeResult.REFUSED]})
    w = monitor(table, probes)

    await w.monitor.probe_all()

    assert sorted(probes.probed) == sorted([CHAT_URL, EMBED_URL])
    assert w.breakers.state("chat-0") is State.UP
    assert w.breakers.state("embed-0") is State.DOWN
    assert metric_total(w.metrics, "offload_replica_up", model="chat", replica="chat-0") == 1
    assert metric_total(w.metrics, "offload_replica_up", model="embed", replica="embed-0") == 0


async def test_probe_all_can_probe_only_some_replicas(table: RouteTable) -> None:
    probes = ScriptedProbes({CHAT_URL: [ProbeResult.OK], EMBED_URL: [ProbeResult.OK]})
    w = monitor(table, probes)

    await w.monitor.probe_all(table.replicas()[:1])

    assert probes.probed == [CHAT_URL]
    assert w.breakers.state("embed-0") is State.UNKNOWN


async def test_a_slow_engine_stays_up_until_failures_reach_the_threshold(table: RouteTable) -> None:
    failed = [ProbeResult.OK, ProbeResult.FAILED, ProbeResult.FAILED, ProbeResult.FAILED]
    probes = ScriptedProbes({CHAT_URL: failed, EMBED_URL: [ProbeResult.OK]})
    w = monitor(table, probes, threshold=3)

    assert await probe_states(w, 4) == [State.UP, State.UP, State.UP, State.DOWN]


async def test_a_success_resets_the_failure_count(table: RouteTable) -> None:
    script = [ProbeResult.OK, ProbeResult.FAILED, ProbeResult.OK, ProbeResult.FAILED, ProbeResult.OK]
    probes = ScriptedProbes({CHAT_URL: script, EMBED_URL: [ProbeResult.OK]})
    w = monitor(table, probes, threshold=2)

    assert await probe_states(w, 5) == [State.UP] * 5


async def test_a_refused_connection_takes_an_up_engine_out_at_once(table: RouteTable) -> None:
    probes = ScriptedProbes({CHAT_URL: [ProbeResult.OK, ProbeResult.REFUSED], EMBED_URL: [ProbeResult.OK]})
    w = monitor(table, probes, threshold=5)

    assert await probe_states(w, 2) == [State.UP, State.DOWN]


async def test_a_starting_engine_that_fails_probes_never_gets_traffic(table: RouteTable) -> None:
    probes = ScriptedProbes({CHAT_URL: [ProbeResult.FAILED], EMBED_URL: [ProbeResult.OK]})
    w = monitor(table, probes, threshold=2)

    for _ in range(4):
        await w.monitor.probe_all()
        assert w.breakers.available("chat-0") is False


async def test_a_down_engine_is_not_probed_back_before_its_cooldown(table: RouteTable) -> None:
    probes = ScriptedProbes({CHAT_URL: [ProbeResult.REFUSED, ProbeResult.OK], EMBED_URL: [ProbeResult.OK]})
    w = monitor(table, probes, cooldown=60)

    assert await probe_states(w, 3) == [State.DOWN, State.DOWN, State.DOWN]


@pytest.mark.parametrize(("result", "serving"), [(ProbeResult.OK, True), (ProbeResult.REFUSED, False)])
async def test_a_down_engine_comes_back_only_on_an_ok_probe_after_the_cooldown(
    table: RouteTable, result: ProbeResult, serving: bool
) -> None:
    probes = ScriptedProbes({CHAT_URL: [ProbeResult.REFUSED, result], EMBED_URL: [ProbeResult.OK]})
    w = monitor(table, probes, cooldown=0.01)

    await w.monitor.probe_all()
    open_until = w.breakers.snapshot("chat-0").open_until
    await eventually(lambda: time.monotonic() >= open_until, what="the end of the cooldown")
    await w.monitor.probe_all()

    assert w.breakers.is_up("chat-0") is serving
    assert metric_total(w.metrics, "offload_replica_up", replica="chat-0") == (1 if serving else 0)


VLLM_METRICS = """\
# HELP vllm:num_requests_waiting Number of requests waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="1",model_name="m"} 2.0
# HELP vllm:num_requests_running Number of requests running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 4.0
# HELP vllm:kv_cache_usage_perc KV-cache usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
# HELP vllm:other_total Something else.
# TYPE vllm:other_total counter
vllm:other_total{engine="0"} 99.0
"""


def test_parse_engine_load_sums_the_load_gauges() -> None:
    assert parse_engine_load(VLLM_METRICS) == {"waiting": 5.0, "running": 4.0, "kv": 0.25}


def test_parse_engine_load_of_a_page_without_them_is_zero() -> None:
    assert parse_engine_load("# nothing here\n") == {"waiting": 0.0, "running": 0.0, "kv": 0.0}


async def test_scrape_all_feeds_engine_load_of_serving_replicas_only(table: RouteTable) -> None:
    probes = ScriptedProbes(
        {CHAT_URL: [ProbeResult.OK], EMBED_URL: [ProbeResult.REFUSED]},
        pages={CHAT_URL: VLLM_METRICS, EMBED_URL: VLLM_METRICS},
    )
    w = monitor(table, probes)
    await w.monitor.probe_all()

    await w.monitor.scrape_all()

    assert probes.scraped == [CHAT_URL + "/metrics"]
    assert w.loads.snapshot("chat-0").engine_waiting == 5.0
    assert w.loads.load("chat-0") == 5.0


async def test_scrape_all_keeps_the_last_figures_when_a_page_is_missing_or_garbage(table: RouteTable) -> None:
    pages: dict[str, str | None] = {CHAT_URL: VLLM_METRICS}
    probes = ScriptedProbes({CHAT_URL: [ProbeResult.OK], EMBED_URL: [ProbeResult.OK]}, pages=pages)
    w = monitor(table, probes)
    await w.monitor.probe_all()
    await w.monitor.scrape_all()

    pages[CHAT_URL] = "this is { not prometheus"
    await w.monitor.scrape_all()
    pages[CHAT_URL] = None
    await w.monitor.scrape_all()

    assert w.loads.snapshot("chat-0").engine_waiting == 5.0


async def test_probe_all_publishes_the_gateways_in_flight_count(table: RouteTable) -> None:
    probes = ScriptedProbes({CHAT_URL: [ProbeResult.OK], EMBED_URL: [ProbeResult.OK]})
    w = monitor(table, probes)
    w.loads.begin("chat-0")
    w.loads.begin("chat-0")

    await w.monitor.probe_all()

    assert metric_total(w.metrics, "offload_replica_in_flight", replica="chat-0") == 2
    assert metric_total(w.metrics, "offload_replica_in_flight", replica="embed-0") == 0


@pytest.mark.parametrize(("scrape_interval", "scrapes"), [(0.001, True), (0.0, False)])
async def test_run_probes_on_its_interval_and_scrapes_when_enabled(
    table: RouteTable, scrape_interval: float, scrapes: bool
) -> None:
    probes = ScriptedProbes(
        {CHAT_URL: [ProbeResult.OK], EMBED_URL: [ProbeResult.OK]}, pages={CHAT_URL: VLLM_METRICS}
    )
    breakers, loads, metrics = Breakers(), Loads(), Metrics()
    settings = HealthSettings(probe_interval=0.001, scrape_interval=scrape_interval)
    health_monitor = HealthMonitor(lambda: table, breakers, loads, probes, metrics, settings)  # type: ignore[arg-type]

    task = asyncio.create_task(health_monitor.run())
    try:
        await eventually(lambda: probes.probed.count(CHAT_URL) >= 3, what="three probe rounds")
        if scrapes:
            await eventually(lambda: loads.load("chat-0") == 5.0, what="a scrape")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert breakers.state("chat-0") is State.UP
    assert bool(probes.scraped) is scrapes
