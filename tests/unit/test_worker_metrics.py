"""How the workers' /metrics texts are added up (gateway/worker_metrics.py), and the workers setting."""

from __future__ import annotations

import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.main import main
from gateway.metrics import Metrics
from gateway.settings import ServerSettings
from gateway.worker_metrics import render_merged

WORKER_A = """\
# HELP offload_requests_total Requests served
# TYPE offload_requests_total counter
offload_requests_total{model="m",status="200"} 3.0
offload_requests_created{model="m",status="200"} 100.0
# HELP offload_requests_in_flight Requests being served
# TYPE offload_requests_in_flight gauge
offload_requests_in_flight{model="m"} 2.0
# HELP offload_replica_up 1 when the replica takes traffic
# TYPE offload_replica_up gauge
offload_replica_up{replica="m-0"} 0.0
# HELP offload_key_limit_remaining_ratio Share left
# TYPE offload_key_limit_remaining_ratio gauge
offload_key_limit_remaining_ratio{key="k",kind="requests"} 0.75
# HELP offload_engine_cpu_seconds_total Engine CPU
# TYPE offload_engine_cpu_seconds_total counter
offload_engine_cpu_seconds_total{replica="m-0"} 50.0
# HELP offload_request_duration_seconds Time from request to last byte
# TYPE offload_request_duration_seconds histogram
offload_request_duration_seconds_bucket{le="0.1"} 1.0
offload_request_duration_seconds_bucket{le="+Inf"} 3.0
offload_request_duration_seconds_count 3.0
offload_request_duration_seconds_sum 0.9
"""

WORKER_B = """\
# HELP offload_requests_total Requests served
# TYPE offload_requests_total counter
offload_requests_total{model="m",status="200"} 4.0
offload_requests_total{model="m",status="429"} 1.0
offload_requests_created{model="m",status="200"} 90.0
# HELP offload_requests_in_flight Requests being served
# TYPE offload_requests_in_flight gauge
offload_requests_in_flight{model="m"} 1.0
# HELP offload_replica_up 1 when the replica takes traffic
# TYPE offload_replica_up gauge
offload_replica_up{replica="m-0"} 1.0
# HELP offload_key_limit_remaining_ratio Share left
# TYPE offload_key_limit_remaining_ratio gauge
offload_key_limit_remaining_ratio{key="k",kind="requests"} 0.5
# HELP offload_engine_cpu_seconds_total Engine CPU
# TYPE offload_engine_cpu_seconds_total counter
offload_engine_cpu_seconds_total{replica="m-0"} 51.0
# HELP offload_request_duration_seconds Time from request to last byte
# TYPE offload_request_duration_seconds histogram
offload_request_duration_seconds_bucket{le="0.1"} 2.0
offload_request_duration_seconds_bucket{le="+Inf"} 2.0
offload_request_duration_seconds_count 2.0
offload_request_duration_seconds_sum 0.1
"""


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


@pytest.fixture
def merged() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(render_merged([WORKER_A, WORKER_B], 2))


def test_counters_and_histograms_are_summed(merged: dict) -> None:
    assert merged[("offload_requests_total", (("model", "m"), ("status", "200")))] == 7
    assert merged[("offload_request_duration_seconds_bucket", (("le", "0.1"),))] == 3
    assert merged[("offload_request_duration_seconds_bucket", (("le", "+Inf"),))] == 5
    assert merged[("offload_request_duration_seconds_count", ())] == 5
    assert merged[("offload_request_duration_seconds_sum", ())] == pytest.approx(1.0)


def test_a_series_only_one_worker_has_is_kept(merged: dict) -> None:
    assert merged[("offload_requests_total", (("model", "m"), ("status", "429")))] == 1


def test_gauges_of_the_workers_own_work_are_summed_and_an_engine_is_read_once(merged: dict) -> None:
    assert merged[("offload_requests_in_flight", (("model", "m"),))] == 3
    # every worker reads the same engine counter: the freshest reading, not the sum
    assert merged[("offload_engine_cpu_seconds_total", (("replica", "m-0"),))] == 51
    assert merged[("offload_replica_up", (("replica", "m-0"),))] == 1  # up where any worker sees it up
    assert merged[("offload_key_limit_remaining_ratio", (("key", "k"), ("kind", "requests")))] == 0.5
    assert merged[("offload_requests_created", (("model", "m"), ("status", "200")))] == 90
    assert merged[("offload_workers_reporting", ())] == 2


def test_the_gateways_own_exposition_merges_into_itself_unchanged() -> None:
    metrics = Metrics()
    metrics.requests.labels("/v1/chat/completions", "m", "v1", "m-0", "200").inc(5)
    metrics.in_flight.labels("m").set(2)
    metrics.itl.labels("m", "v1", "m-0").observe(0.01)
    own = metrics.render().decode()
    alone = samples(render_merged([own], 1))
    assert {k: v for k, v in alone.items() if k[0] != "offload_workers_reporting"} == samples(own.encode())
    twice = samples(render_merged([own, own], 2))
    key = (
        "offload_requests_total",
        (
            ("endpoint", "/v1/chat/completions"),
            ("model", "m"),
            ("replica", "m-0"),
            ("status", "200"),
            ("version", "v1"),
        ),
    )
    assert twice[key] == 10
    itl_count = (
        "offload_inter_token_latency_seconds_count",
        (("model", "m"), ("replica", "m-0"), ("version", "v1")),
    )
    assert twice[itl_count] == 2


def test_workers_is_a_number_or_auto() -> None:
    assert ServerSettings(workers=3).worker_count() == 3
    assert ServerSettings.model_validate({"workers": "auto"}).worker_count() == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError):
        ServerSettings.model_validate({"workers": 0})


def test_offload_run_with_several_workers_is_refused_in_words(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--workers", "2"]) == 2
    assert "`offload run` serves with one worker" in capsys.readouterr().err
    assert main(["serve", "--workers", "zero"]) == 2
    assert "--workers zero: a number from 1 to 256, or auto" in capsys.readouterr().err
