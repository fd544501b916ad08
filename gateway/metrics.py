"""Prometheus metrics, on a registry owned by the app (no global state).

Labels are only ever configured names (model, version, replica), never client input, so the number
of series stays bounded whatever clients send.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gateway.record import RequestRecord

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1, 2.5)
_SERVED = ["model", "version", "replica"]


class Metrics:
    """The gateway's metrics by model, version and replica."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "offload_requests", "Requests served", ["endpoint", *_SERVED, "status"], registry=r
        )
        self.errors = Counter(
            "offload_request_errors", "Requests that failed", ["endpoint", *_SERVED, "type"], registry=r
        )
        self.retries = Counter("offload_retries", "Requests retried on another replica", _SERVED, registry=r)
        self.latency = Histogram(
            "offload_request_duration_seconds",
            "Time from request to last byte",
            ["endpoint", *_SERVED],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "offload_time_to_first_token_seconds",
            "Time from request to the first chunk of a stream",
            _SERVED,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = GapHistogram(
            "offload_inter_token_latency_seconds",
            "Gap between consecutive chunks of a stream",
            _SERVED,
            _ITL_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("offload_prompt_tokens", "Prompt tokens processed", _SERVED, registry=r)
        self.completion_tokens = Counter(
            "offload_completion_tokens", "Completion tokens generated", _SERVED, registry=r
        )
        self.in_flight = Gauge("offload_requests_in_flight", "Requests being served", ["model"], registry=r)
        self.limits_shared = Gauge(
            "offload_limits_shared",
            "1 while key limits are counted in Redis, shared by every replica",
            registry=r,
        )
        self.limits_fallbacks = Counter(
            "offload_limits_fallbacks",
            "Redis calls that failed (limits counted per process meanwhile)",
            registry=r,
        )
        self.key_requests = Counter(
            "offload_key_requests", "Requests by API key name", ["key", "model", "version"], registry=r
        )
        self.key_tokens = Counter(
            "offload_key_tokens",
            "Tokens by API key name (kind: prompt or completion)",
            ["key", "model", "version", "kind"],
            registry=r,
        )
        self.key_budget = Gauge(
            "offload_key_limit_remaining_ratio",
            "Share of an API key's rpm or tpm left in its window, as of the key's last request"
            " (kind: requests or tokens)",
            ["key", "kind"],
            registry=r,
        )
        self.admission_wait = Histogram(
            "offload_admission_wait_seconds",
            "Time requests waited in a version's fair queue before reaching an engine",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.admission_refused = Counter(
            "offload_admission_refused",
            "Requests refused by a version's fair queue (reason: over_share, queue_full, timeout,"
            " pushed_out)",
            ["model", "version", "reason"],
            registry=r,
        )
        self.resumes = Counter(
            "offload_stream_resumes",
            "Streams broken mid-answer and what came of resuming them (resumed, no_replica, refused,"
            " not_exact, out_of_resumes, out_of_time, nothing_left)",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.resume_gap = Histogram(
            "offload_stream_resume_gap_seconds",
            "Time from a stream's break to the first token of its continuation",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.replica_up = Gauge("offload_replica_up", "1 when the replica takes traffic", _SERVED, registry=r)
        self.replica_in_flight = Gauge(
            "offload_replica_in_flight", "Requests outstanding on the replica", _SERVED, registry=r
        )
        self.decisions = Counter(
            "offload_routing_decisions",
            "Version choices by reason (pinned, alias, weighted, sticky, fallback)",
            ["model", "version", "reason"],
            registry=r,
        )
        self.shadow = Counter(
            "offload_shadow_requests",
            "Copies sent to shadow versions, by outcome",
            [*_SERVED, "outcome"],
            registry=r,
        )
        self.shadow_latency = Histogram(
            "offload_shadow_duration_seconds",
            "Latency of shadow copies",
            _SERVED,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}

    def child(self, metric: MetricWrapperBase, *values: str) -> Any:
        """``metric.labels(*values)``, looked up once per label set (``labels`` costs microseconds,
        and the hot path needs several per request). Label values are configured names, status
        codes and error kinds: a bounded set."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def begin(self, record: RequestRecord) -> None:
        """A request for a configured model started being served."""
        if not record.in_flight and record.routed_model is not None:
            record.in_flight = True
            self.child(self.in_flight, record.routed_model).inc()

    def finish(self, record: RequestRecord) -> None:
        """Count a finished request (any outcome)."""
        model = record.routed_model or "unknown"
        served = (model, record.version or "-", record.replica or "-")
        endpoint = record.route or "other"
        if record.in_flight:
            record.in_flight = False
            self.child(self.in_flight, model).dec()
        child = self.child
        child(self.requests, endpoint, *served, str(record.status)).inc()
        child(self.latency, endpoint, *served).observe(record.elapsed())
        if record.error_type is not None:
            child(self.errors, endpoint, *served, record.error_type).inc()
        if record.prompt_tokens:
            child(self.prompt_tokens, *served).inc(record.prompt_tokens)
        if record.completion_tokens:
            child(self.completion_tokens, *served).inc(record.completion_tokens)
        if record.key is not None:  # usage by API key (configured names: a bounded set)
            by_key = (record.key, model, served[1])
            child(self.key_requests, *by_key).inc()
            if record.prompt_tokens:
                child(self.key_tokens, *by_key, "prompt").inc(record.prompt_tokens)
            if record.completion_tokens:
                child(self.key_tokens, *by_key, "completion").inc(record.completion_tokens)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class Gaps:
    """The gap counts of one label set: a bucket index and two additions per observation."""

    __slots__ = ("_bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one gap."""
        self.counts[bisect.bisect_left(self._bounds, seconds)] += 1
        self.total += seconds


class GapHistogram(Collector):
    """A histogram for the one observation made per stream event (inter-token gaps).

    prometheus_client's Histogram takes a lock and walks its buckets per observation; at thousands
    of events per second that showed in the gateway's profile. This one counts in plain lists (all
    observations come from the event loop's thread) and is exposed as a normal histogram.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = list(labelnames)
        self._bounds = tuple(buckets)
        self._children: dict[tuple[str, ...], Gaps] = {}
        registry.register(self)

    def labels(self, *values: str) -> Gaps:
        """The counts of one label set (created on first use)."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = Gaps(self._bounds)
        return child

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in list(self._children.items()):
            counts = list(child.counts)
            running, buckets = 0, []
            for bound, count in zip((*map(floatToGoString, self._bounds), "+Inf"), counts, strict=True):
                running += count
                buckets.append((bound, running))
            family.add_metric(list(values), buckets, child.total)
        yield family
