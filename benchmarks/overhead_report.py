"""Numbers of the overhead benchmark: medians over interleaved rounds, the Markdown report, the plot,
and the one-line verdict. Pure functions of the runs recorded by :mod:`benchmarks.overhead`."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FLOOR = "sim"
OFFLOAD = "offload"
METRICS = ("latency_p50_ms", "latency_p99_ms", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms",
           "rps", "cpu_ms_per_req", "sim_cpu_ms_per_req")
ADDED = METRICS[:6]
COLORS = {"sim": "tab:gray", "offload": "tab:blue", "offload-log": "tab:cyan", "offload-base": "tab:purple", "litellm": "tab:orange",
          "vllm-router": "tab:green"}
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


def summarize(runs: list[dict[str, Any]], ramp_runs: list[dict[str, Any]], rss: dict[str, float],
              targets: list[str], scenarios: list[tuple[str, str]]) -> dict[str, Any]:
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
    out["ramp"] = _ramp(ramp_runs, targets)
    out["peak_rss_mb"] = rss
    out["goals"] = _goals(out)
    return out


def _ratios(by: dict[tuple[str, int, str], dict[str, Any]], table: dict[str, Any], targets: list[str],
            keys: list[str]) -> dict[str, Any]:
    """Offload / peer: CPU per request paired within each round (then the median); added latencies
    from the medians (their per-round differences are too small to divide)."""
    ratios: dict[str, Any] = {}
    for peer in (t for t in targets if t not in (FLOOR, OFFLOAD, "offload-log")):
        per: dict[str, Any] = {}
        for key in keys:
            rounds = sorted({n for (k, n, _) in by if k == key})
            cpu = median(
                by[(key, n, OFFLOAD)]["cpu_ms_per_req"] / by[(key, n, peer)]["cpu_ms_per_req"]
                for n in rounds
                if (key, n, OFFLOAD) in by and (key, n, peer) in by
                and by[(key, n, OFFLOAD)]["cpu_ms_per_req"] and by[(key, n, peer)]["cpu_ms_per_req"]
            )
            entry: dict[str, Any] = {"cpu_per_req": cpu}
            mine, theirs = table[key].get(OFFLOAD, {}), table[key].get(peer, {})
            for m in ("added_latency_p50_ms", "added_latency_p99_ms", "added_ttft_p50_ms", "added_itl_p99_ms"):
                a, b = mine.get(m), theirs.get(m)
                entry[m] = a / b if a is not None and b is not None and b > 0 and a > 0 else None
            per[key] = entry
        ratios[peer] = per
    return ratios


def _ramp(ramp_runs: list[dict[str, Any]], targets: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for target in targets:
        mine = [r for r in ramp_runs if r["target"] == target]
        if not mine:
            continue
        levels = sorted({r["concurrency"] for r in mine})
        curve = {c: median(r["rps"] for r in mine if r["concurrency"] == c) for c in levels}
        per_pass = [max(r["rps"] for r in mine if r["round"] == p) for p in sorted({r["round"] for r in mine})]
        best = max(curve, key=lambda c: curve[c] or 0.0)
        cpu_at_best = median(r["cpu_ms_per_req"] for r in mine if r["concurrency"] == best)
        out[target] = {"max_rps": median(per_pass), "at_concurrency": best, "curve": curve,
                       "cpu_ms_per_req_at_max": cpu_at_best, "passes": len(per_pass)}
    return out


def _goals(summary: dict[str, Any]) -> list[dict[str, Any]]:
    goals = []
    for label, key, metric, limit in GOALS:
        value = summary["scenarios"].get(key, {}).get(OFFLOAD, {}).get(metric)
        goals.append({"goal": label, "value": value, "ok": value is not None and value <= limit})
    s64 = summary["scenarios"].get("s64", {})
    mine, floor = s64.get(OFFLOAD, {}).get("rps"), s64.get(FLOOR, {}).get("rps")
    share = mine / floor if mine and floor else None
    goals.append({"goal": "streams/s @64 streams >= 0.98x direct", "value": share,
                  "ok": share is not None and share >= 0.98})
    rss = summary["peak_rss_mb"].get(OFFLOAD)
    goals.append({"goal": "peak RSS <= 150 MB", "value": rss, "ok": rss is not None and rss <= 150})
    lite = summary["ratios"].get("litellm", {}).get("ns1", {}).get("cpu_per_req")
    goals.append({"goal": ">= 15x less CPU/request than LiteLLM (1 client)",
                  "value": 1 / lite if lite else None, "ok": bool(lite) and 1 / lite >= 15})
    router = summary["ratios"].get("vllm-router", {}).get("ns1", {}).get("cpu_per_req")
    goals.append({"goal": "CPU/request within 3x of vllm-router (1 client)", "value": router,
                  "ok": router is not None and router <= 3})
    return goals


def _f(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _times(ratio: float | None) -> str:
    """Offload/peer as a reader wants it: '28x less' below 1, '2.1x' above."""
    if not ratio:
        return "-"
    return f"{1 / ratio:.1f}x less" if ratio < 1 else f"{ratio:.2f}x"


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    m = meta["machine"]
    lines = [
        f"# Gateway overhead, side by side ({meta['mode']} run, {meta['started_at']})", "",
        (f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), Python {m['python']}, load average "
         f"{m['loadavg_start'][0]:.2f} at the start, {m['loadavg_end'][0]:.2f} at the end "
         "(other jobs shared the machine: compare within this file only)."),
        (f"Plan: {meta['plan']['rounds']} interleaved rounds of {meta['plan']['seconds']} s per scenario and "
         f"target; answers of {meta['tokens_per_answer']} tokens, prompts of {meta['prompt_words']} words; streams "
         f"are {meta['tokens_per_answer']} one-token chunks {meta['stream_itl_s'] * 1000:.0f} ms apart. "
         f"Medians over rounds; \"added\" = target minus the simulator alone in the same round. "
         f"Wall time {meta['wall_s']:.0f} s."), "",
        "| target | version | processes | ready in |", "| --- | --- | --- | --- |",
    ]
    for name, t in meta["targets"].items():
        state = f"FAILED: {t['failed'][:80]}" if t["failed"] else f"{t['ready_s']:.1f} s"
        lines.append(f"| {name} | {t['version']} | {', '.join(t['processes']) or '-'} | {state} |")
    labels = summary["scenario_labels"]
    lines += ["", "## Non-streaming (added latency vs the floor, gateway CPU per request)", "",
              "| scenario | target | p50 ms | p99 ms | added p50 | added p99 | req/s | CPU ms/req | errors |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key in ("ns1", "ns10", "ns64"):
        for target, row in summary["scenarios"].get(key, {}).items():
            cpu = "(floor)" if target == FLOOR else _f(row["cpu_ms_per_req"], 3)
            lines.append(f"| {labels[key]} | {target} | {_f(row['latency_p50_ms'])} | {_f(row['latency_p99_ms'])} | "
                         f"{_f(row['added_latency_p50_ms'], 2, True)} | {_f(row['added_latency_p99_ms'], 2, True)} | "
                         f"{_f(row['rps'], 0)} | {cpu} | {row['errors']} |")
    lines += ["", "## Streaming (added time to first token and inter-token gap, CPU per stream)", "",
              ("| scenario | target | TTFT p50 | added TTFT p50 | added TTFT p99 | gap p50 | gap p99 | "
               "added gap p50 | added gap p99 | streams/s | CPU ms/stream | errors |"),
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key in ("s10", "s64"):
        for target, row in summary["scenarios"].get(key, {}).items():
            cpu = "(floor)" if target == FLOOR else _f(row["cpu_ms_per_req"], 2)
            lines.append(f"| {labels[key]} | {target} | {_f(row['ttft_p50_ms'])} | {_f(row['added_ttft_p50_ms'], 2, True)} | "
                         f"{_f(row['added_ttft_p99_ms'], 2, True)} | {_f(row['itl_p50_ms'])} | {_f(row['itl_p99_ms'])} | "
                         f"{_f(row['added_itl_p50_ms'], 2, True)} | {_f(row['added_itl_p99_ms'], 2, True)} | "
                         f"{_f(row['rps'], 0)} | {cpu} | {row['errors']} |")
    lines += ["", "## Throughput ramp (non-streaming, concurrency raised until req/s stops growing)", "",
              "| target | max req/s | at concurrency | CPU ms/req there | peak RSS MB | req/s by concurrency |",
              "| --- | --- | --- | --- | --- | --- |"]
    for target in summary["targets"]:
        ramp = summary["ramp"].get(target)
        rss = summary["peak_rss_mb"].get(target)
        if ramp is None:
            lines.append(f"| {target} | - | - | - | {_f(rss, 0)} | - |")
            continue
        curve = ", ".join(f"{c}: {v:.0f}" for c, v in ramp["curve"].items() if v is not None)
        cpu = "(floor)" if target == FLOOR else _f(ramp["cpu_ms_per_req_at_max"], 3)
        lines.append(f"| {target} | {_f(ramp['max_rps'], 0)} | {ramp['at_concurrency']} | {cpu} | "
                     f"{_f(rss, 0)} | {curve} |")
    lines += ["", ("Peak RSS is VmHWM of the gateway process (vllm-router: the larger of its two processes); "
                   "the floor's row is the simulators'. The floor's max req/s is the ceiling of the load generator "
                   "and simulator on this machine, not a gateway number."), ""]
    for peer, per in summary["ratios"].items():
        lines += [f"## Offload / {peer}", "",
                  "| scenario | CPU per request | added p50 | added p99 | added TTFT p50 | added gap p99 |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for key, r in per.items():
            lines.append(f"| {labels[key]} | {_f(r['cpu_per_req'], 3)} ({_times(r['cpu_per_req'])}) | "
                         f"{_f(r['added_latency_p50_ms'], 3)} | {_f(r['added_latency_p99_ms'], 3)} | "
                         f"{_f(r['added_ttft_p50_ms'], 3)} | {_f(r['added_itl_p99_ms'], 3)} |")
        lines.append("")
    lines += ["## Offload's goals", "", "| goal | measured | met |", "| --- | --- | --- |"]
    for goal in summary["goals"]:
        lines.append(f"| {goal['goal']} | {_f(goal['value'], 3)} | {'yes' if goal['ok'] else '**no**'} |")
    lines += ["", f"`{headline(summary)}`", ""]
    return "\n".join(lines)


def headline(summary: dict[str, Any]) -> str:
    """The one line printed at the end."""
    s = summary["scenarios"]
    me = s.get("ns1", {}).get(OFFLOAD, {})
    stream = s.get("s64", {}).get(OFFLOAD, {})
    first = (
        f"offload: {_f(me.get('added_latency_p50_ms'), 2, True)}ms p50 / "
        f"{_f(me.get('added_latency_p99_ms'), 2, True)}ms p99 @1 client, "
        f"{_f(me.get('cpu_ms_per_req'), 2)}ms CPU/req, "
        f"{_f(stream.get('cpu_ms_per_req'), 2)}ms CPU/stream @64, "
        f"{_f(stream.get('added_itl_p99_ms'), 2, True)}ms gap p99 @64, "
        f"{_f(summary['peak_rss_mb'].get(OFFLOAD), 0)}MB RSS, "
        f"{_f(summary['ramp'].get(OFFLOAD, {}).get('max_rps'), 0)} req/s max"
    )
    parts = [first]
    for peer, per in summary["ratios"].items():
        r = per.get("ns1", {})
        parts.append(f"vs {peer}: {_times(r.get('cpu_per_req'))} CPU/req, "
                     f"{_times(r.get('added_latency_p50_ms'))} added p50, "
                     f"{_times(per.get('s64', {}).get('cpu_per_req'))} CPU/stream")
    met = sum(g["ok"] for g in summary["goals"])
    parts.append(f"goals met {met}/{len(summary['goals'])}")
    return "; ".join(parts)


def plot(summary: dict[str, Any], path: Path) -> bool:
    """Four panels: added latency, CPU per request, streaming additions, the ramp. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    targets = summary["targets"]
    gateways = [t for t in targets if t != FLOOR]
    s = summary["scenarios"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))

    def bars(ax: Any, groups: list[tuple[str, str, str]], names: list[str], title: str, ylabel: str) -> None:
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            values = [s.get(key, {}).get(name, {}).get(metric) or 0.0 for _, key, metric in groups]
            ax.bar([g + i * width for g in range(len(groups))], values, width, label=name, color=COLORS.get(name))
        ax.set_xticks([g + width * (len(names) - 1) / 2 for g in range(len(groups))])
        ax.set_xticklabels([label for label, _, _ in groups], fontsize=8)
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)

    bars(axes[0][0], [(f"{c} p{q}", k, f"added_latency_p{q}_ms") for c, k in (("1", "ns1"), ("10", "ns10"),
                                                                               ("64", "ns64")) for q in (50, 99)],
         gateways, "Added latency, non-streaming (clients, percentile)", "ms over the simulator alone")
    bars(axes[0][1], [(k, k, "cpu_ms_per_req") for k in ("ns1", "ns10", "ns64", "s10", "s64")],
         gateways, "Gateway CPU per request (streams: per stream)", "CPU ms")
    bars(axes[1][0], [("TTFT p50 @10", "s10", "added_ttft_p50_ms"), ("TTFT p99 @10", "s10", "added_ttft_p99_ms"),
                      ("TTFT p50 @64", "s64", "added_ttft_p50_ms"), ("gap p50 @64", "s64", "added_itl_p50_ms"),
                      ("gap p99 @64", "s64", "added_itl_p99_ms")],
         gateways, "Streaming: added TTFT and inter-token gap", "ms over the simulator alone")
    ax = axes[1][1]
    for name in targets:
        ramp = summary["ramp"].get(name)
        if ramp:
            xs = list(ramp["curve"])
            ax.plot(xs, [ramp["curve"][x] for x in xs], marker="o", label=name, color=COLORS.get(name))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("requests/s")
    ax.set_title("Throughput ramp (non-streaming)")
    ax.grid(alpha=0.3)
    if summary["ramp"]:
        ax.legend(fontsize=8)
    fig.suptitle("Offload vs LiteLLM vs vllm-router in front of the same engine simulator (2 cores shared)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def readme_summary(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    """The compact table of ``benchmarks/README.md``: each target's key numbers, Offload's ratios, goals."""
    s, names = summary["scenarios"], summary["targets"]
    versions = {name: t["version"] for name, t in meta["targets"].items()}
    head = " | ".join(n if n != FLOOR else "sim (floor)" for n in names)
    lines = [
        f"{meta['mode'].capitalize()} run, {meta['started_at']}, {meta['machine']['cpus']} CPUs, load average "
        f"{meta['machine']['loadavg_start'][0]:.1f} at the start and {meta['machine']['loadavg_end'][0]:.1f} at "
        f"the end; {meta['plan']['rounds']} interleaved rounds of {meta['plan']['seconds']} s. Absolute values "
        "for the floor, added values (target minus floor, same round) for the gateways. Versions: "
        + ", ".join(versions[n] if versions[n].startswith(n) else f"{n} {versions[n]}"
                    for n in names if n != FLOOR and n in versions) + ".",
        "", f"| | {head} |", "|---" * (len(names) + 1) + "|",
    ]

    def row(label: str, key: str, metric: str, floor_metric: str | None, digits: int = 2) -> None:
        cells = []
        for n in names:
            r = s.get(key, {}).get(n, {})
            if n == FLOOR:
                cells.append(_f(r.get(floor_metric), digits) if floor_metric else "-")
            else:
                cells.append(_f(r.get(metric), digits, metric.startswith("added")))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("latency p50 @1 client (ms)", "ns1", "added_latency_p50_ms", "latency_p50_ms")
    row("latency p99 @1 client (ms)", "ns1", "added_latency_p99_ms", "latency_p99_ms")
    for key, label in (("ns1", "1"), ("ns10", "10"), ("ns64", "64")):
        row(f"gateway CPU per request @{label} client{'s' if label != '1' else ''} (ms)", key, "cpu_ms_per_req",
            None, 3)
    row("TTFT p50 @10 streams (ms)", "s10", "added_ttft_p50_ms", "ttft_p50_ms")
    row("inter-token gap p99 @64 streams (ms)", "s64", "added_itl_p99_ms", "itl_p99_ms")
    row("gateway CPU per stream @10 streams (ms)", "s10", "cpu_ms_per_req", None)
    row("gateway CPU per stream @64 streams (ms)", "s64", "cpu_ms_per_req", None)
    lines.append("| max req/s (ramp) | " + " | ".join(
        _f(summary["ramp"].get(n, {}).get("max_rps"), 0) for n in names) + " |")
    lines.append("| peak RSS (MB) | " + " | ".join(_f(summary["peak_rss_mb"].get(n), 0) for n in names) + " |")
    for peer, per in summary["ratios"].items():
        lines.append(f"\nOffload / {peer}: CPU per request {_times(per.get('ns1', {}).get('cpu_per_req'))} at 1 "
                     f"client, {_times(per.get('ns64', {}).get('cpu_per_req'))} at 64; CPU per stream "
                     f"{_times(per.get('s64', {}).get('cpu_per_req'))} at 64 streams.")
    lines += ["", "| Offload's goal | measured | met |", "| --- | --- | --- |"]
    lines += [f"| {g['goal']} | {_f(g['value'], 3)} | {'yes' if g['ok'] else '**no**'} |" for g in summary["goals"]]
    return "\n".join(lines)
