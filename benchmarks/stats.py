"""Results of a load run: percentiles, the summary table, JSON, and throughput over time."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.client import RequestRecord

PERCENTILES = (50, 90, 99)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of sorted values, linearly interpolated; NaN when empty."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] * (1 - fraction) + sorted_values[high] * fraction


def distribution(values: Sequence[float]) -> dict[str, float | int]:
    """count, mean, p50/p90/p99, min and max of ``values`` (seconds)."""
    ordered = sorted(values)
    result: dict[str, float | int] = {"count": len(ordered)}
    result["mean"] = sum(ordered) / len(ordered) if ordered else math.nan
    for q in PERCENTILES:
        result[f"p{q}"] = percentile(ordered, q)
    result["min"] = ordered[0] if ordered else math.nan
    result["max"] = ordered[-1] if ordered else math.nan
    return result


@dataclass(slots=True)
class LoadResult:
    """Every request of one run, and how long it took (its issuing window and its last answer)."""

    config: dict[str, Any]
    records: list[RequestRecord] = field(default_factory=list)
    elapsed: float = 0.0
    started_at: float = 0.0
    """Wall-clock time (epoch seconds) of the start."""

    @property
    def ok(self) -> list[RequestRecord]:
        return [r for r in self.records if r.ok]

    @property
    def errors(self) -> Counter[str]:
        """Failed requests by kind."""
        return Counter(r.error for r in self.records if r.error is not None)

    def summary(self) -> dict[str, Any]:
        """Counts, rates and latency distributions (seconds) of the run."""
        ok = self.ok
        elapsed = self.elapsed or math.nan
        output = sum(r.output_tokens for r in ok)
        events = sum(r.events for r in self.records)
        return {
            "requests": len(self.records),
            "succeeded": len(ok),
            "failed": len(self.records) - len(ok),
            "errors": dict(self.errors),
            "elapsed_s": self.elapsed,
            "requests_per_s": len(ok) / elapsed,
            "output_tokens": output,
            "prompt_tokens": sum(r.prompt_tokens for r in ok),
            "output_tokens_per_s": output / elapsed,
            "events": events,
            "events_per_s": events / elapsed,
            "latency_s": distribution([r.latency for r in ok if r.latency is not None]),
            "ttft_s": distribution([r.ttft for r in ok if r.ttft is not None]),
            "itl_s": distribution([gap for r in ok for gap in r.itl]),
        }

    def to_json(self, include_records: bool = True) -> dict[str, Any]:
        """A JSON-ready document: config, summary and (optionally) every request."""
        document: dict[str, Any] = {
            "config": self.config,
            "started_at": self.started_at,
            "summary": self.summary(),
        }
        if include_records:
            document["records"] = [r.as_dict() for r in self.records]
        return document

    def timeline(self, bucket: float = 1.0) -> dict[str, list[float]]:
        """Completed requests/s and received tokens/s per ``bucket`` seconds since the start."""
        buckets = max(1, math.ceil(self.elapsed / bucket)) if self.elapsed > 0 else 1
        requests = [0.0] * buckets
        tokens = [0.0] * buckets
        for r in self.ok:
            if r.latency is not None:
                requests[min(buckets - 1, int((r.start + r.latency) / bucket))] += 1 / bucket
            if r.ttft is None:
                if r.latency is not None:
                    tokens[min(buckets - 1, int((r.start + r.latency) / bucket))] += r.output_tokens / bucket
                continue
            at = r.start + r.ttft
            tokens[min(buckets - 1, int(at / bucket))] += 1 / bucket
            for gap in r.itl:
                at += gap
                tokens[min(buckets - 1, int(at / bucket))] += 1 / bucket
        last = self.elapsed - (buckets - 1) * bucket  # the last bucket may be partial
        if 0 < last < bucket:
            requests[-1] *= bucket / last
            tokens[-1] *= bucket / last
        return {"t": [i * bucket for i in range(buckets)], "requests_per_s": requests, "tokens_per_s": tokens}


def format_table(result: LoadResult) -> str:
    """The human summary printed at the end of a run."""
    s = result.summary()
    config = result.config
    mode = (
        f"Poisson {config.get('rate')} req/s"
        if config.get("rate")
        else f"concurrency {config.get('concurrency')}"
    )
    kind = config.get("kind")
    if kind == "chat":
        kind = "chat stream" if config.get("stream") else "chat non-stream"
    lines = [
        f"{kind}, {mode}, model {config.get('model')} at {config.get('base_url')}",
        f"requests  {s['succeeded']} ok, {s['failed']} failed in {s['elapsed_s']:.2f} s"
        f"  ->  {s['requests_per_s']:.1f} req/s",
        f"tokens    {s['output_tokens']} out ({s['output_tokens_per_s']:.1f} tok/s), "
        f"{s['prompt_tokens']} prompt",
    ]
    if s["events"]:
        lines.append(f"events    {s['events']} SSE events ({s['events_per_s']:.1f} events/s)")
    lines.append(f"{'(ms)':<10}{'mean':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'n':>9}")
    for name, key in (("latency", "latency_s"), ("ttft", "ttft_s"), ("itl", "itl_s")):
        d = s[key]
        if not d["count"]:
            continue
        cells = "".join(f"{d[k] * 1000:>9.2f}" for k in ("mean", "p50", "p90", "p99", "max"))
        lines.append(f"{name:<10}{cells}{d['count']:>9}")
    errors = s["errors"]
    lines.append("errors    " + (", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "none"))
    return "\n".join(lines)
