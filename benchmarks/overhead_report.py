"""Numbers of the overhead benchmark: medians over interleaved rounds, ratios, the ramp and the goals.
Pure functions of the runs recorded by :mod:`benchmarks.overhead`; :mod:`benchmarks.overhead_render`
turns them into the report, the README summary, the verdict line and the plot."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

FLOOR = "sim"
OFFLOAD = "offload"
KEYED = "offload-keyed"
"""Offload with an API key and the key's rpm, tpm and concurrency limits on: compared with ``offload``."""
KEYED_LIMIT = 1.05
"""Keys and limits on may cost at most 5% more gateway CPU per request than off."""
# Neither the floor nor a configuration of Offload is a peer to take Offload/peer ratios against.
NOT_PEERS = (FLOOR, OFFLOAD, "offload-log", KEYED)
METRICS = (
    "latency_p50_ms",
    "latency_p99_ms",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "itl_p50_ms",
    "itl_p99_ms",
    "rps",
    "cpu_ms_per_req",
    "sim_cpu_ms_per_req",
)
ADDED = METRICS[:6]
# Offload's goals: (label, scenario, key, limit); a key starting with "ratio:" reads summary["ratios"].
GOALS = (
    ("added latency p50 @1 client <= 0.6 ms", "ns1", "added_latency_p50_ms", 0.6),
    ("added latency p99 @1 client <= 1.2 ms", "ns1", "added_latency_p99_ms", 1.2),
    ("gateway CPU @1 client <= 0.6 ms/request", "ns1", "cpu_ms_per_req", 0.6),
    ("added TTFT p50 @10 streams <= 1.5 ms", "s10", "added_ttft_p50_ms", 1.5),
    ("added inter-token gap p99 @64 streams <= 1 ms", "s64", "added_itl_p99_ms", 1.0),
    ("gateway CPU @64 streams <= 4 ms/stream", "s64", "cpu_ms_per_req", 4.0),
    ("gateway CPU @10 streams <= 4 ms/stream", "s10", "cpu_ms_per_req", 4.0),
)


def _clean(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def median(values: Iterable[float | None]) -> float | None:
    clean = _clean(values)
    return statistics.median(clean) if clean else None


def summarize(
    runs: list[dict[str, Any]],
    ramp_runs: list[dict[str, Any]],
    rss: dict[str, float],
    targets: list[str],
    scenarios: list[tuple[str, str]],
) -> dict[str, Any]:
    """Per scenario and target: medians over rounds; "added" = minus the floor of the same round."""
    by = {(r["scenario"], r["round"], r["target"]): r for r in runs}
    out: dict[str, Any] = {"scenarios": {}, "scenario_labels": dict(scenarios), "targets": targets}
    for key, _ in scenarios:
        rounds = sorted({r["round"] for r in runs if r["scenario"] == key})
        table: dict[str, Any] = {}
        for target in targets:
            mine = [by[(key, n, target)] for n in rounds if (key, n, target) in by]
            if not mine:
                continue
            row: dict[str, Any] = {m: median(r.get(m) for r in mine) for m in METRICS}
            row["requests"] = sum(r["requests"] for r in mine)
            row["errors"] = sum(sum(r["errors"].values()) for r in mine)
            row["rounds"] = len(mine)
            for m in ADDED:
                row[f"added_{m}"] = median(
                    r[m] - by[(key, r["round"], FLOOR)][m]
                    for r in mine
                    if m in r and (key, r["round"], FLOOR) in by and m in by[(key, r["round"], FLOOR)]
                )
            table[target] = row
        out["scenarios"][key] = table
    out["ratios"] = _ratios(by, out["scenarios"], targets, [k for k, _ in scenarios])
    out["keyed"] = _keyed(by, out["scenarios"], targets, [k for k, _ in scenarios])
    out["keyed_overall"] = {
        kind: median(
            x for r in out["keyed"].values() if r["stream"] == (kind == "per_stream") for x in r["ratios"]
        )
        for kind in ("per_request", "per_stream")
    }
    out["ramp"] = _ramp(ramp_runs, targets)
    out["peak_rss_mb"] = rss
    out["goals"] = _goals(out)
    return out


def _ratios(
    by: dict[tuple[str, int, str], dict[str, Any]], table: dict[str, Any], targets: list[str], keys: list[str]
) -> dict[str, Any]:
    """Offload / peer: CPU per request paired within each round (then the median); added latencies
    from the medians (their per-round differences are too small to divide)."""
    ratios: dict[str, Any] = {}
    for peer in (t for t in targets if t not in NOT_PEERS):
        per: dict[str, Any] = {}
        for key in keys:
            rounds = sorted({n for (k, n, _) in by if k == key})
            cpu = median(
                by[(key, n, OFFLOAD)]["cpu_ms_per_req"] / by[(key, n, peer)]["cpu_ms_per_req"]
                for n in rounds
                if (key, n, OFFLOAD) in by
                and (key, n, peer) in by
                and by[(key, n, OFFLOAD)]["cpu_ms_per_req"]
                and by[(key, n, peer)]["cpu_ms_per_req"]
            )
            entry: dict[str, Any] = {"cpu_per_req": cpu}
            mine, theirs = table[key].get(OFFLOAD, {}), table[key].get(peer, {})
            for m in (
                "added_latency_p50_ms",
                "added_latency_p99_ms",
                "added_ttft_p50_ms",
                "added_itl_p99_ms",
            ):
                a, b = mine.get(m), theirs.get(m)
                entry[m] = a / b if a is not None and b is not None and b > 0 and a > 0 else None
            per[key] = entry
        ratios[peer] = per
    return ratios


def _keyed(
    by: dict[tuple[str, int, str], dict[str, Any]], table: dict[str, Any], targets: list[str], keys: list[str]
) -> dict[str, Any]:
    """Keys and limits on (``offload-keyed``) vs off (``offload``), per scenario: each one's median
    gateway CPU per request (per stream), and keyed/keyless paired within each round, then the median
    (``keyed_overall``: the median of those per-round ratios over every scenario without / with streams)."""
    if KEYED not in targets or OFFLOAD not in targets:
        return {}
    out: dict[str, Any] = {}
    for key in keys:
        keyless, keyed = table[key].get(OFFLOAD, {}), table[key].get(KEYED, {})
        if not keyless or not keyed:
            continue
        rounds = sorted({n for (k, n, _) in by if k == key})
        pairs = [
            (by[(key, n, KEYED)]["cpu_ms_per_req"], by[(key, n, OFFLOAD)]["cpu_ms_per_req"])
            for n in rounds
            if (key, n, OFFLOAD) in by and (key, n, KEYED) in by
        ]
        ratios = [a / b for a, b in pairs if a and b]
        out[key] = {
            "stream": any(by[(key, n, OFFLOAD)].get("stream") for n in rounds if (key, n, OFFLOAD) in by),
            "keyless_cpu_ms_per_req": keyless.get("cpu_ms_per_req"),
            "keyed_cpu_ms_per_req": keyed.get("cpu_ms_per_req"),
            "ratio": median(ratios),
            "ratios": ratios,
            "keyless_added_latency_p50_ms": keyless.get("added_latency_p50_ms"),
            "keyed_added_latency_p50_ms": keyed.get("added_latency_p50_ms"),
            "keyed_errors": keyed.get("errors"),
            "rounds": len(pairs),
        }
    return out


def _ramp(ramp_runs: list[dict[str, Any]], targets: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for target in targets:
        mine = [r for r in ramp_runs if r["target"] == target]
        if not mine:
            continue
        levels = sorted({r["concurrency"] for r in mine})
        curve = {c: median(r["rps"] for r in mine if r["concurrency"] == c) for c in levels}
        per_pass = [
            max(r["rps"] for r in mine if r["round"] == p) for p in sorted({r["round"] for r in mine})
        ]
        best = max(curve, key=lambda c: curve[c] or 0.0)
        cpu_at_best = median(r["cpu_ms_per_req"] for r in mine if r["concurrency"] == best)
        out[target] = {
            "max_rps": median(per_pass),
            "at_concurrency": best,
            "curve": curve,
            "cpu_ms_per_req_at_max": cpu_at_best,
            "passes": len(per_pass),
        }
    return out


def _goals(summary: dict[str, Any]) -> list[dict[str, Any]]:
    goals = []
    for label, key, metric, limit in GOALS:
        value = summary["scenarios"].get(key, {}).get(OFFLOAD, {}).get(metric)
        goals.append({"goal": label, "value": value, "ok": value is not None and value <= limit})
    s64 = summary["scenarios"].get("s64", {})
    mine, floor = s64.get(OFFLOAD, {}).get("rps"), s64.get(FLOOR, {}).get("rps")
    share = mine / floor if mine and floor else None
    goals.append(
        {
            "goal": "streams/s @64 streams >= 0.98x direct",
            "value": share,
            "ok": share is not None and share >= 0.98,
        }
    )
    rss = summary["peak_rss_mb"].get(OFFLOAD)
    goals.append({"goal": "peak RSS <= 150 MB", "value": rss, "ok": rss is not None and rss <= 150})
    lite = summary["ratios"].get("litellm", {}).get("ns1", {}).get("cpu_per_req")
    goals.append(
        {
            "goal": ">= 15x less CPU/request than LiteLLM (1 client)",
            "value": 1 / lite if lite else None,
            "ok": bool(lite) and 1 / lite >= 15,
        }
    )
    router = summary["ratios"].get("vllm-router", {}).get("ns1", {}).get("cpu_per_req")
    goals.append(
        {
            "goal": "CPU/request within 3x of vllm-router (1 client)",
            "value": router,
            "ok": router is not None and router <= 3,
        }
    )
    if any(not r["stream"] for r in summary["keyed"].values()):  # only when the run measured offload-keyed
        ratio = summary["keyed_overall"]["per_request"]
        goals.append(
            {
                "goal": f"key + limits on: CPU/request <= {KEYED_LIMIT:.2f}x off (all client counts)",
                "value": ratio,
                "ok": ratio is not None and ratio <= KEYED_LIMIT,
            }
        )
    return goals
