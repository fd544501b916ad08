"""Offload's Grafana dashboard, as code (Grafana's own grafana-foundation-sdk).

    python deploy/observability/dashboard.py           # writes grafana/dashboards/offload.json
    python deploy/observability/dashboard.py --check   # exits 1 if that file is not what this makes

The JSON is committed for Grafana's file provisioning (deploy/compose.yaml, profile ``observability``);
tests/observability checks that it is up to date and that every query returns data from a real
Prometheus scraping a gateway under load.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from itertools import count
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh, VariableSort

OUTPUT = Path(__file__).parent / "grafana" / "dashboards" / "offload.json"
UID = "offload-gateway"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")

# Every gateway series is filtered by the model and version variables ("All" matches any).
SERVED = 'model=~"$model", version=~"$version"'
RATE = "[$__rate_interval]"


def query(expr: str, legend: str) -> prometheus.Dataquery:
    """A PromQL target with its legend."""
    return prometheus.Dataquery().expr(expr).legend_format(legend).datasource(DATASOURCE)


def quantiles(metric: str, by: str = "model, version") -> list[prometheus.Dataquery]:
    """p50 and p99 of a histogram, per ``by``."""
    legend = " ".join("{{" + label.strip() + "}}" for label in by.split(","))
    return [
        query(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{SERVED}}}{RATE})))",
            f"p{int(q * 100)} {legend}",
        )
        for q in (0.5, 0.99)
    ]


def graph(title: str, unit: str, targets: list[prometheus.Dataquery], description: str) -> timeseries.Panel:
    """A time series panel, half the dashboard's width."""
    for ref, target in zip("ABCDEFGH", targets, strict=False):
        target.ref_id(ref)
    panel = timeseries.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
    return panel.targets(list(targets)).span(12).height(8).min(0)


def variables() -> Iterator[db.DatasourceVariable | db.QueryVariable]:
    """The Prometheus data source, then model and version (multi-select, "All" by default)."""
    yield db.DatasourceVariable("datasource").label("Data source").type("prometheus")
    for name, source in (
        ("model", "label_values(offload_requests_total, model)"),
        ("version", 'label_values(offload_requests_total{model=~"$model"}, version)'),
    ):
        yield (
            db.QueryVariable(name)
            .label(name.capitalize())
            .datasource(DATASOURCE)
            .query({"query": source, "refId": name})
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )


def traffic() -> list[db.Row | timeseries.Panel | stat.Panel]:
    """Requests, errors, latency, tokens and load, per model and version."""
    return [
        db.Row("Traffic"),
        graph(
            "Requests",
            "reqps",
            [
                query(
                    f"sum by (model, version, status) (rate(offload_requests_total{{{SERVED}}}{RATE}))",
                    "{{model}} {{version}} {{status}}",
                )
            ],
            "Requests served per second, by HTTP status.",
        ),
        graph(
            "Errors",
            "reqps",
            [
                query(
                    f"sum by (model, version, type) (rate(offload_request_errors_total{{{SERVED}}}{RATE}))",
                    "{{model}} {{version}} {{type}}",
                )
            ],
            'Failed requests per second, by error type (requests for unknown models count as model "unknown").',
        ),
        graph(
            "Time to first token",
            "s",
            quantiles("offload_time_to_first_token_seconds"),
            "From the request to the first chunk of a stream.",
        ),
        graph(
            "Inter-token latency",
            "s",
            quantiles("offload_inter_token_latency_seconds"),
            "Gap between consecutive chunks of a stream.",
        ),
        graph(
            "Tokens",
            "short",
            [
                query(
                    f"sum by (model, version) (rate(offload_completion_tokens_total{{{SERVED}}}{RATE}))",
                    "completion {{model}} {{version}}",
                ),
                query(
                    f"sum by (model, version) (rate(offload_prompt_tokens_total{{{SERVED}}}{RATE}))",
                    "prompt {{model}} {{version}}",
                ),
            ],
            "Tokens per second, as the engines counted them.",
        ),
        graph(
            "In flight",
            "short",
            [
                query('sum by (model) (offload_requests_in_flight{model=~"$model"})', "{{model}}"),
                query(
                    f"sum by (model, version, replica) (offload_replica_in_flight{{{SERVED}}})",
                    "{{model}} {{version}} {{replica}}",
                ),
            ],
            "Requests being served, by model and by replica.",
        ),
        graph(
            "Replica health",
            "short",
            [query(f"offload_replica_up{{{SERVED}}}", "{{model}} {{version}} {{replica}}")],
            "1 while the replica takes traffic (health probes and circuit breaker), 0 while it does not.",
        ).max(1),
        graph(
            "Request duration",
            "s",
            quantiles("offload_request_duration_seconds", "model, version, endpoint"),
            "From the request to its last byte, by endpoint.",
        ),
    ]


def admission() -> list[db.Row | timeseries.Panel | stat.Panel]:
    """The fair queue in front of each version, and the API keys' use of their limits."""
    return [
        db.Row("Admission and keys"),
        graph(
            "Admission wait",
            "s",
            quantiles("offload_admission_wait_seconds"),
            "Time requests waited in a version's fair queue before reaching an engine.",
        ),
        graph(
            "Admission refused",
            "reqps",
            [
                query(
                    f"sum by (model, version, reason) (rate(offload_admission_refused_total{{{SERVED}}}{RATE}))",
                    "{{model}} {{version}} {{reason}}",
                )
            ],
            "Requests the fair queue turned away, by reason.",
        ),
        graph(
            "Requests by key",
            "reqps",
            [
                query(
                    f"sum by (key) (rate(offload_key_requests_total{{{SERVED}}}{RATE}))",
                    "{{key}}",
                )
            ],
            "Requests per second by API key name.",
        ),
        graph(
            "Key budget left",
            "percentunit",
            [query("min by (key, kind) (offload_key_limit_remaining_ratio)", "{{key}} {{kind}}")],
            "Share of each key's rpm (requests) or tpm (tokens) left in its window, as of its last request.",
        ).max(1),
    ]


def engines() -> list[db.Row | timeseries.Panel | stat.Panel]:
    """What the engines use and report: process CPU and memory (local engines), GPUs, vLLM's gauges."""
    by_replica = "{{model}} {{version}} {{replica}}"
    return [
        db.Row("Engines"),
        graph(
            "Engine CPU",
            "short",
            [
                query(f"sum by (model, version, replica) (offload_engine_cpu_cores{{{SERVED}}})", by_replica),
                query(
                    f"sum by (model, version, replica) (rate(offload_engine_cpu_seconds_total{{{SERVED}}}{RATE}))",
                    "rate " + by_replica,
                ),
            ],
            "Cores in use by each local engine's process group.",
        ),
        graph(
            "Engine memory",
            "bytes",
            [
                query(
                    f"sum by (model, version, replica) (offload_engine_memory_bytes{{{SERVED}}})", by_replica
                )
            ],
            "Resident memory of each local engine's process group.",
        ),
        graph(
            "GPU utilisation",
            "percentunit",
            [query(f"offload_engine_gpu_utilization_ratio{{{SERVED}}}", by_replica + " gpu {{device}}")],
            "Per GPU device an engine uses (NVML).",
        ).max(1),
        graph(
            "GPU memory",
            "bytes",
            [query(f"offload_engine_gpu_memory_bytes{{{SERVED}}}", by_replica + " gpu {{device}}")],
            "GPU memory used per device by an engine (NVML).",
        ),
        graph(
            "KV-cache usage",
            "percentunit",
            [query(f"offload_engine_kv_cache_usage_ratio{{{SERVED}}}", by_replica)],
            "Share of the engine's KV cache in use (vLLM).",
        ).max(1),
        graph(
            "Engine requests",
            "short",
            [
                query(f"offload_engine_requests_running{{{SERVED}}}", "running " + by_replica),
                query(f"offload_engine_requests_waiting{{{SERVED}}}", "waiting " + by_replica),
            ],
            "Requests running in and waiting for each engine's batch (vLLM).",
        ),
        graph(
            "Prefix-cache hit rate",
            "percentunit",
            [query(f"offload_engine_prefix_cache_hit_ratio{{{SERVED}}}", by_replica)],
            "Share of prompt tokens found in the engine's prefix cache (vLLM).",
        ).max(1),
    ]


def build() -> db.Dashboard:
    """The dashboard."""
    dashboard = (
        db.Dashboard("Offload")
        .uid(UID)
        .description("Offload gateway: traffic, latency, admission, keys and engines by model and version.")
        .tags(["offload", "generated"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .readonly()
    )
    for variable in variables():
        dashboard = dashboard.with_variable(variable)
    ids = count(1)
    for item in [*traffic(), *admission(), *engines()]:
        if isinstance(item, db.Row):
            dashboard = dashboard.with_row(item.id(next(ids)))
        else:
            dashboard = dashboard.with_panel(item.id(next(ids)))
    return dashboard


def render() -> str:
    """The dashboard's JSON, as committed."""
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUTPUT.is_file() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run python {Path(__file__).as_posix()}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
