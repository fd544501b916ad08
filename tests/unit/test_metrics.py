from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.metrics import GapHistogram, Metrics
from gateway.record import RequestRecord
from tests.unit.samples import metric_total


def test_begin_and_finish_balance_the_in_flight_gauge() -> None:
    metrics = Metrics()
    record = RequestRecord(request_id="r", route="/v1/chat/completions", routed_model="chat")

    metrics.begin(record)
    metrics.begin(record)  # a second begin for the same request is not counted twice
    assert metric_total(metrics, "offload_requests_in_flight", model="chat") == 1

    record.status = 200
    metrics.finish(record)
    metrics.finish(record)
    assert metric_total(metrics, "offload_requests_in_flight", model="chat") == 0


def test_begin_without_a_routed_model_does_nothing() -> None:
    metrics = Metrics()
    record = RequestRecord(request_id="r", route="/v1/chat/completions")

    metrics.begin(record)

    assert record.in_flight is False
    assert metric_total(metrics, "offload_requests_in_flight") is None


def test_finish_counts_status_errors_and_tokens_by_model_version_and_replica() -> None:
    metrics = Metrics()
    record = RequestRecord(
        request_id="r",
        route="/v1/chat/completions",
        routed_model="chat",
        version="v2",
        replica="chat-v2-0",
        status=502,
        error_type="engine_error",
        prompt_tokens=12,
        completion_tokens=5,
    )

    metrics.finish(record)

    served = {"model": "chat", "version": "v2", "replica": "chat-v2-0"}
    endpoint = "/v1/chat/completions"
    assert metric_total(metrics, "offload_requests_total", endpoint=endpoint, status="502", **served) == 1
    assert (
        metric_total(
            metrics, "offload_request_errors_total", endpoint=endpoint, type="engine_error", **served
        )
        == 1
    )
    assert metric_total(metrics, "offload_prompt_tokens_total", **served) == 12
    assert metric_total(metrics, "offload_completion_tokens_total", **served) == 5
    assert metric_total(metrics, "offload_request_duration_seconds_count", endpoint=endpoint, **served) == 1


def test_requests_for_unconfigured_models_are_labelled_unknown() -> None:
    metrics = Metrics()
    record = RequestRecord(request_id="r", route="/v1/embeddings", model="user-typed-name", status=404)

    metrics.finish(record)

    assert (
        metric_total(
            metrics, "offload_requests_total", endpoint="/v1/embeddings", model="unknown", status="404"
        )
        == 1
    )
    assert b"user-typed-name" not in metrics.render()


def test_successful_requests_do_not_count_as_errors() -> None:
    metrics = Metrics()

    metrics.finish(RequestRecord(request_id="r", route="/v1/models", status=200))

    assert metric_total(metrics, "offload_request_errors_total") is None
    assert metric_total(metrics, "offload_requests_total", status="200") == 1


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.finish(RequestRecord(request_id="r", route="/v1/models", status=200))

    assert metric_total(first, "offload_requests_total", endpoint="/v1/models") == 1
    assert metric_total(second, "offload_requests_total", endpoint="/v1/models") is None


def test_gap_histogram_exposes_what_a_prometheus_histogram_would() -> None:
    metrics = Metrics()
    reference_registry = CollectorRegistry()
    bounds = (0.001, 0.01, 0.1)
    reference = Histogram("gaps", "g", ["model"], buckets=bounds, registry=reference_registry)
    mine_registry = CollectorRegistry()
    mine = GapHistogram("gaps", "g", ["model"], bounds, registry=mine_registry)
    for gap in (0.0005, 0.001, 0.01, 0.05, 0.05, 2.0):  # on a bound counts in that bucket, as Prometheus does
        reference.labels("chat").observe(gap)
        mine.labels("chat").observe(gap)

    def samples(registry: CollectorRegistry) -> list[str]:
        return sorted(
            line
            for line in generate_latest(registry).decode().splitlines()
            if line.startswith("gaps_") and "_created" not in line
        )

    assert samples(mine_registry) == samples(reference_registry)
    assert metric_total(metrics, "offload_inter_token_latency_seconds_count") is None  # nothing observed yet
