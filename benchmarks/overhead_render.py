"""The overhead benchmark's numbers as people read them: the Markdown report, the README summary,
the one-line verdict and the plot. Pure functions of :func:`benchmarks.overhead_report.summarize`'s output."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.overhead_report import FLOOR, KEYED, OFFLOAD

COLORS = {
    "sim": "tab:gray",
    "offload": "tab:blue",
    "offload-log": "tab:cyan",
    "offload-base": "tab:purple",
    KEYED: "tab:brown",
    "litellm": "tab:orange",
    "vllm-router": "tab:green",
}


def _f(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _times(ratio: float | None) -> str:
    """Offload/peer as a reader wants it: '28x less' below 1, '2.1x' above."""
    if not ratio:
        return "-"
    return f"{1 / ratio:.1f}x less" if ratio < 1 else f"{ratio:.2f}x"


def _growth(ratio: float | None) -> str:
    return "-" if ratio is None else f"{(ratio - 1) * 100:+.1f}%"


def keyed_markdown(summary: dict[str, Any]) -> list[str]:
    """The keys-and-limits section: keyless and keyed CPU side by side, and their ratio ([] without it)."""
    keyed = summary.get("keyed") or {}
    if not keyed:
        return []
    labels = summary["scenario_labels"]
    lines = [
        f"## Key and limits on ({KEYED}) vs off ({OFFLOAD})",
        "",
        (
            f"The same gateway in the same run: {KEYED} has one API key in its configuration file with its rpm, "
            "tpm and max_concurrent limits on (set far above the load, so none refuses) and every request "
            "carries the key; offload has none. Gateway CPU per request (streaming: per stream), medians over "
            "rounds; keyed / keyless is paired within each round, then the median."
        ),
        "",
        (
            "| scenario | keyless CPU ms | keyed CPU ms | keyed / keyless | CPU growth | keyless added p50 | "
            "keyed added p50 | keyed errors |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, r in keyed.items():
        lines.append(
            f"| {labels[key]} | {_f(r['keyless_cpu_ms_per_req'], 3)} | {_f(r['keyed_cpu_ms_per_req'], 3)} | "
            f"{_f(r['ratio'], 3)} | {_growth(r['ratio'])} | {_f(r['keyless_added_latency_p50_ms'], 2, True)} | "
            f"{_f(r['keyed_added_latency_p50_ms'], 2, True)} | {r['keyed_errors']} |"
        )
    lines += ["", _overall(summary) + ".", ""]
    return lines


def _overall(summary: dict[str, Any]) -> str:
    overall = summary.get("keyed_overall") or {}
    request, stream = overall.get("per_request"), overall.get("per_stream")
    return (
        f"Keyed / keyless over every round and client count: {_f(request, 3)}x per request "
        f"({_growth(request)}), {_f(stream, 3)}x per stream ({_growth(stream)})"
    )


def keyed_sentence(summary: dict[str, Any]) -> str | None:
    """Keyless vs keyed CPU in one sentence (None when the run did not measure the keyed target)."""
    keyed = summary.get("keyed") or {}
    if not keyed:
        return None

    def pair(key: str, where: str) -> str | None:
        r = keyed.get(key)
        if r is None:
            return None
        return (
            f"{_f(r['keyless_cpu_ms_per_req'], 3)} vs {_f(r['keyed_cpu_ms_per_req'], 3)} ms at {where} "
            f"({_f(r['ratio'], 3)}x, {_growth(r['ratio'])})"
        )

    per_request = [p for k, w in (("ns1", "1 client"), ("ns10", "10"), ("ns64", "64")) if (p := pair(k, w))]
    per_stream = [p for k, w in (("s10", "10 streams"), ("s64", "64")) if (p := pair(k, w))]
    parts = []
    if per_request:
        parts.append("CPU per request " + ", ".join(per_request))
    if per_stream:
        parts.append("CPU per stream " + ", ".join(per_stream))
    return (
        f"Key and limits off ({OFFLOAD}) vs on ({KEYED}), same run: "
        + "; ".join(parts)
        + " (medians over rounds; the ratio keyed / keyless paired within each round, then the median). "
        + _overall(summary)
        + "."
    )


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    m = meta["machine"]
    lines = [
        f"# Gateway overhead, side by side ({meta['mode']} run, {meta['started_at']})",
        "",
        (
            f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), Python {m['python']}, load average "
            f"{m['loadavg_start'][0]:.2f} at the start, {m['loadavg_end'][0]:.2f} at the end "
            "(other jobs shared the machine: compare within this file only)."
        ),
        (
            f"Plan: {meta['plan']['rounds']} interleaved rounds of {meta['plan']['seconds']} s per scenario and "
            f"target; answers of {meta['tokens_per_answer']} tokens, prompts of {meta['prompt_words']} words; streams "
            f"are {meta['tokens_per_answer']} one-token chunks {meta['stream_itl_s'] * 1000:.0f} ms apart. "
            f'Medians over rounds; "added" = target minus the simulator alone in the same round. '
            f"Wall time {meta['wall_s']:.0f} s."
        ),
        "",
        "| target | version | processes | ready in |",
        "| --- | --- | --- | --- |",
    ]
    for name, t in meta["targets"].items():
        state = f"FAILED: {t['failed'][:80]}" if t["failed"] else f"{t['ready_s']:.1f} s"
        lines.append(f"| {name} | {t['version']} | {', '.join(t['processes']) or '-'} | {state} |")
    labels = summary["scenario_labels"]
    lines += [
        "",
        "## Non-streaming (added latency vs the floor, gateway CPU per request)",
        "",
        "| scenario | target | p50 ms | p99 ms | added p50 | added p99 | req/s | CPU ms/req | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in ("ns1", "ns10", "ns64"):
        for target, row in summary["scenarios"].get(key, {}).items():
            cpu = "(floor)" if target == FLOOR else _f(row["cpu_ms_per_req"], 3)
            lines.append(
                f"| {labels[key]} | {target} | {_f(row['latency_p50_ms'])} | {_f(row['latency_p99_ms'])} | "
                f"{_f(row['added_latency_p50_ms'], 2, True)} | {_f(row['added_latency_p99_ms'], 2, True)} | "
                f"{_f(row['rps'], 0)} | {cpu} | {row['errors']} |"
            )
    lines += [
        "",
        "## Streaming (added time to first token and inter-token gap, CPU per stream)",
        "",
        (
            "| scenario | target | TTFT p50 | added TTFT p50 | added TTFT p99 | gap p50 | gap p99 | "
            "added gap p50 | added gap p99 | streams/s | CPU ms/stream | errors |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in ("s10", "s64"):
        for target, row in summary["scenarios"].get(key, {}).items():
            cpu = "(floor)" if target == FLOOR else _f(row["cpu_ms_per_req"], 2)
            lines.append(
                f"| {labels[key]} | {target} | {_f(row['ttft_p50_ms'])} | {_f(row['added_ttft_p50_ms'], 2, True)} | "
                f"{_f(row['added_ttft_p99_ms'], 2, True)} | {_f(row['itl_p50_ms'])} | {_f(row['itl_p99_ms'])} | "
                f"{_f(row['added_itl_p50_ms'], 2, True)} | {_f(row['added_itl_p99_ms'], 2, True)} | "
                f"{_f(row['rps'], 0)} | {cpu} | {row['errors']} |"
            )
    lines += [
        "",
        "## Throughput ramp (non-streaming, concurrency raised until req/s stops growing)",
        "",
        "| target | max req/s | at concurrency | CPU ms/req there | peak RSS MB | req/s by concurrency |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for target in summary["targets"]:
        ramp = summary["ramp"].get(target)
        rss = summary["peak_rss_mb"].get(target)
        if ramp is None:
            lines.append(f"| {target} | - | - | - | {_f(rss, 0)} | - |")
            continue
        curve = ", ".join(f"{c}: {v:.0f}" for c, v in ramp["curve"].items() if v is not None)
        cpu = "(floor)" if target == FLOOR else _f(ramp["cpu_ms_per_req_at_max"], 3)
        lines.append(
            f"| {target} | {_f(ramp['max_rps'], 0)} | {ramp['at_concurrency']} | {cpu} | "
            f"{_f(rss, 0)} | {curve} |"
        )
    lines += [
        "",
        (
            "Peak RSS is VmHWM of the gateway process (vllm-router: the larger of its two processes); "
            "the floor's row is the simulators'. The floor's max req/s is the ceiling of the load generator "
            "and simulator on this machine, not a gateway number."
        ),
        "",
    ]
    for peer, per in summary["ratios"].items():
        lines += [
            f"## Offload / {peer}",
            "",
            "| scenario | CPU per request | added p50 | added p99 | added TTFT p50 | added gap p99 |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for key, r in per.items():
            lines.append(
                f"| {labels[key]} | {_f(r['cpu_per_req'], 3)} ({_times(r['cpu_per_req'])}) | "
                f"{_f(r['added_latency_p50_ms'], 3)} | {_f(r['added_latency_p99_ms'], 3)} | "
                f"{_f(r['added_ttft_p50_ms'], 3)} | {_f(r['added_itl_p99_ms'], 3)} |"
            )
        lines.append("")
    lines += keyed_markdown(summary)
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
        parts.append(
            f"vs {peer}: {_times(r.get('cpu_per_req'))} CPU/req, "
            f"{_times(r.get('added_latency_p50_ms'))} added p50, "
            f"{_times(per.get('s64', {}).get('cpu_per_req'))} CPU/stream"
        )
    keyed = summary.get("keyed") or {}
    if keyed:
        one, streams = keyed.get("ns1", {}), keyed.get("s64", {})
        overall = summary.get("keyed_overall") or {}
        parts.append(
            f"key+limits off vs on: {_f(one.get('keyless_cpu_ms_per_req'), 3)} vs "
            f"{_f(one.get('keyed_cpu_ms_per_req'), 3)}ms CPU/req @1 client ({_f(one.get('ratio'), 3)}x), "
            f"{_f(streams.get('keyless_cpu_ms_per_req'), 2)} vs {_f(streams.get('keyed_cpu_ms_per_req'), 2)}ms "
            f"CPU/stream @64 ({_f(streams.get('ratio'), 3)}x), all rounds {_f(overall.get('per_request'), 3)}x "
            f"CPU/req and {_f(overall.get('per_stream'), 3)}x CPU/stream"
        )
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
            ax.bar(
                [g + i * width for g in range(len(groups))], values, width, label=name, color=COLORS.get(name)
            )
        ax.set_xticks([g + width * (len(names) - 1) / 2 for g in range(len(groups))])
        ax.set_xticklabels([label for label, _, _ in groups], fontsize=8)
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)

    bars(
        axes[0][0],
        [
            (f"{c} p{q}", k, f"added_latency_p{q}_ms")
            for c, k in (("1", "ns1"), ("10", "ns10"), ("64", "ns64"))
            for q in (50, 99)
        ],
        gateways,
        "Added latency, non-streaming (clients, percentile)",
        "ms over the simulator alone",
    )
    bars(
        axes[0][1],
        [(k, k, "cpu_ms_per_req") for k in ("ns1", "ns10", "ns64", "s10", "s64")],
        gateways,
        "Gateway CPU per request (streams: per stream)",
        "CPU ms",
    )
    bars(
        axes[1][0],
        [
            ("TTFT p50 @10", "s10", "added_ttft_p50_ms"),
            ("TTFT p99 @10", "s10", "added_ttft_p99_ms"),
            ("TTFT p50 @64", "s64", "added_ttft_p50_ms"),
            ("gap p50 @64", "s64", "added_itl_p50_ms"),
            ("gap p99 @64", "s64", "added_itl_p99_ms"),
        ],
        gateways,
        "Streaming: added TTFT and inter-token gap",
        "ms over the simulator alone",
    )
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
        + ", ".join(
            versions[n] if versions[n].startswith(n) else f"{n} {versions[n]}"
            for n in names
            if n != FLOOR and n in versions
        )
        + ".",
        "",
        f"| | {head} |",
        "|---" * (len(names) + 1) + "|",
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
        row(
            f"gateway CPU per request @{label} client{'s' if label != '1' else ''} (ms)",
            key,
            "cpu_ms_per_req",
            None,
            3,
        )
    row("TTFT p50 @10 streams (ms)", "s10", "added_ttft_p50_ms", "ttft_p50_ms")
    row("inter-token gap p99 @64 streams (ms)", "s64", "added_itl_p99_ms", "itl_p99_ms")
    row("gateway CPU per stream @10 streams (ms)", "s10", "cpu_ms_per_req", None)
    row("gateway CPU per stream @64 streams (ms)", "s64", "cpu_ms_per_req", None)
    lines.append(
        "| max req/s (ramp) | "
        + " | ".join(_f(summary["ramp"].get(n, {}).get("max_rps"), 0) for n in names)
        + " |"
    )
    lines.append(
        "| peak RSS (MB) | " + " | ".join(_f(summary["peak_rss_mb"].get(n), 0) for n in names) + " |"
    )
    for peer, per in summary["ratios"].items():
        lines.append(
            f"\nOffload / {peer}: CPU per request {_times(per.get('ns1', {}).get('cpu_per_req'))} at 1 "
            f"client, {_times(per.get('ns64', {}).get('cpu_per_req'))} at 64; CPU per stream "
            f"{_times(per.get('s64', {}).get('cpu_per_req'))} at 64 streams."
        )
    sentence = keyed_sentence(summary)
    if sentence:
        lines.append(f"\n{sentence}")
    lines += ["", "| Offload's goal | measured | met |", "| --- | --- | --- |"]
    lines += [
        f"| {g['goal']} | {_f(g['value'], 3)} | {'yes' if g['ok'] else '**no**'} |" for g in summary["goals"]
    ]
    return "\n".join(lines)
