"""Prometheus metrics, on a registry owned by the app (no global state).

Labels are only ever configured names (model, version, replica), never client input, so the number
of series stays bounded whatever clients send.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.services.accounting import RequestRecord

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1, 2.5)
_SERVED = ["model", "version", "replica"]


class Metrics:
    """The gateway's metrics by model, version and replica."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("offload_requests", "Requests served", ["endpoint", *_SERVED, "status"], registry=r)
        self.errors = Counter("offload_request_errors", "Requests that failed", ["endpoint", *_SERVED, "type"], registry=r)
        self.retries = Counter("offload_retries", "Requests retried on another replica", _SERVED, registry=r)
        self.latency = Histogram(
            "offload_request_duration_seconds", "Time from request to last byte",
            ["endpoint", *_SERVED], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "offload_time_to_first_token_seconds", "Time from request to the first chunk of a stream",
            _SERVED, buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            "offload_inter_token_latency_seconds", "Gap between consecutive chunks of a stream",
            _SERVED, buckets=_ITL_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter("offload_prompt_tokens", "Prompt tokens processed", _SERVED, registry=r)
        self.completion_tokens = Counter("offload_completion_tokens", "Completion tokens generated", _SERVED, registry=r)
        self.in_flight = Gauge("offload_requests_in_flight", "Requests being served", ["model"], registry=r)
        self.replica_up = Gauge("offload_replica_up", "1 when the replica takes traffic", _SERVED, registry=r)
        self.replica_in_flight = Gauge(
            "offload_replica_in_flight", "Requests outstanding on the replica", _SERVED, registry=r
        )
        self.decisions = Counter(
            "offload_routing_decisions", "Version choices by reason (pinned, alias, weighted, sticky, fallback)",
            ["model", "version", "reason"], registry=r,
        )  # fmt: skip
        self.shadow = Counter(
            "offload_shadow_requests", "Copies sent to shadow versions, by outcome",
            [*_SERVED, "outcome"], registry=r,
        )  # fmt: skip
        self.shadow_latency = Histogram(
            "offload_shadow_duration_seconds", "Latency of shadow copies", _SERVED,
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip

    def begin(self, record: RequestRecord) -> None:
        """A request for a configured model started being served."""
        if not record.in_flight and record.routed_model is not None:
            record.in_flight = True
            self.in_flight.labels(record.routed_model).inc()

    def finish(self, record: RequestRecord) -> None:
        """Count a finished request (any outcome)."""
        model = record.routed_model or "unknown"
        served = (model, record.version or "-", record.replica or "-")
        endpoint = record.route or "other"
        if record.in_flight:
            record.in_flight = False
            self.in_flight.labels(model).dec()
        self.requests.labels(endpoint, *served, str(record.status)).inc()
        self.latency.labels(endpoint, *served).observe(record.elapsed())
        if record.error_type is not None:
            self.errors.labels(endpoint, *served, record.error_type).inc()
        if record.prompt_tokens:
            self.prompt_tokens.labels(*served).inc(record.prompt_tokens)
        if record.completion_tokens:
            self.completion_tokens.labels(*served).inc(record.completion_tokens)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
