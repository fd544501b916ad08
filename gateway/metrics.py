"""Prometheus metrics, on a registry owned by the app (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.services.accounting import RequestRecord

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1, 2.5)


class Metrics:
    """The gateway's metrics, labelled by model (and endpoint where it matters)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "offload_requests", "Requests served", ["endpoint", "model", "status"], registry=r
        )
        self.errors = Counter(
            "offload_request_errors", "Requests that failed", ["endpoint", "model", "type"], registry=r
        )
        self.latency = Histogram(
            "offload_request_duration_seconds",
            "Time from request to last byte",
            ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "offload_time_to_first_token_seconds",
            "Time from request to the first generated token of a stream",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "offload_inter_token_latency_seconds",
            "Gap between consecutive chunks of a stream",
            ["model"],
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "offload_prompt_tokens", "Prompt tokens processed", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "offload_completion_tokens", "Completion tokens generated", ["model"], registry=r
        )
        self.in_flight = Gauge(
            "offload_requests_in_flight", "Requests being served", ["model"], registry=r
        )
        self.replica_up = Gauge(
            "offload_replica_up", "1 when the replica passes health checks", ["model", "replica"], registry=r
        )

    def begin(self, record: RequestRecord) -> None:
        """A request for a configured model started being served."""
        if not record.in_flight and record.routed_model is not None:
            record.in_flight = True
            self.in_flight.labels(record.routed_model).inc()

    def finish(self, record: RequestRecord) -> None:
        """Count a finished request (any outcome)."""
        # Only configured names become labels: a client's made-up model must not grow the series.
        model = record.routed_model or "unknown"
        if record.in_flight:
            record.in_flight = False
            self.in_flight.labels(model).dec()
        endpoint = record.route or "other"
        self.requests.labels(endpoint, model, str(record.status)).inc()
        self.latency.labels(endpoint, model).observe(record.elapsed())
        if record.error_type is not None:
            self.errors.labels(endpoint, model, record.error_type).inc()
        if record.prompt_tokens:
            self.prompt_tokens.labels(model).inc(record.prompt_tokens)
        if record.completion_tokens:
            self.completion_tokens.labels(model).inc(record.completion_tokens)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
