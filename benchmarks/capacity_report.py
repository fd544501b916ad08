"""The capacity benchmark's summary (medians over rounds, ratios paired within a round), its targets
met or missed, and its Markdown."""

from __future__ import annotations

import statistics
from typing import Any

ROUTER = "vllm-router"
ONE = "offload-1"
CPU_TARGET = 1.5  # Offload's CPU per relayed token at most 1.5x vllm-router's (64+ streams)
SCALE_TARGET = 1.7  # 2 workers relay at least 1.7x one worker's tokens/s where cores are free


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _paired(runs: list[dict[str, Any]], a: str, b: str, level: int, key: str) -> float | None:
    """Median over rounds of ``a``'s ``key`` over ``b``'s, each ratio within one round."""
    by = {(r["target"], r["round"]): r for r in runs if r["level"] == level and not r.get("failed")}
    ratios = []
    for (name, rnd), run in by.items():
        other = by.get((b, rnd))
        if name == a and other and run.get(key) and other.get(key):
            ratios.append(run[key] / other[key])
    return _median(ratios)


def summarize(runs: list[dict[str, Any]], targets: list[str], levels: list[int]) -> dict[str, Any]:
    """Per target and level: median tokens/s, CPU µs per token, cores busy; ratios; the targets."""
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    for name in targets:
        rows[name] = {}
        for level in levels:
            mine = [r for r in runs if r["target"] == name and r["level"] == level and not r.get("failed")]
            if not mine:
                continue
            rows[name][level] = {
                "tokens_per_s": _median([r["tokens_per_s"] for r in mine]),
                "cpu_us_per_token": _median([r["cpu_us_per_token"] for r in mine]),
                "gateway_cores_busy": _median([r["gateway_cores_busy"] for r in mine]),
                "sims_cores_busy": _median([r["sims_cores_busy"] for r in mine]),
                "load_cores_busy": _median([r["load_cores_busy"] for r in mine]),
                "machine_cores_busy": _median([r["machine_cores_busy"] for r in mine]),
                "ttft_p50_ms": _median([r["ttft_p50_ms"] for r in mine]),
                "itl_p50_ms": _median([r["itl_p50_ms"] for r in mine]),
                "processes": max(r["processes"] for r in mine),
                "errors": sum(sum(r["errors"].values()) for r in mine),
                "rounds": len(mine),
            }
    ratios: dict[str, dict[int, dict[str, float | None]]] = {}
    for name in targets:
        ratios[name] = {
            level: {
                "cpu_vs_router": _paired(runs, name, ROUTER, level, "cpu_us_per_token"),
                "tps_vs_router": _paired(runs, name, ROUTER, level, "tokens_per_s"),
                "tps_vs_offload1": _paired(runs, name, ONE, level, "tokens_per_s"),
            }
            for level in levels
        }
    return {"rows": rows, "ratios": ratios}


def verdicts(summary: dict[str, Any], levels: list[int], layout: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's three capacity targets, each met, missed or not measurable here, with its figures."""
    ratios = summary["ratios"]
    out: list[dict[str, Any]] = []
    high = [lv for lv in levels if lv >= 64]

    def worst(name: str, key: str, pick: Any) -> tuple[float | None, int | None]:
        found = [(ratios.get(name, {}).get(lv, {}).get(key), lv) for lv in high]
        found = [(v, lv) for v, lv in found if v is not None]
        return pick(found) if found else (None, None)

    cpu, at = worst(ONE, "cpu_vs_router", max)
    out.append(
        {
            "target": f"CPU per relayed token at 64+ streams within {CPU_TARGET}x of vllm-router's (1 worker)",
            "value": cpu,
            "at": at,
            "met": None if cpu is None else cpu <= CPU_TARGET,
        }
    )
    scale, at = worst("offload-2", "tps_vs_offload1", min)
    free = layout["pinned"] and len(layout["gateway"] or ()) >= 2
    out.append(
        {
            "target": f"2 workers >= {SCALE_TARGET}x one worker's tokens/s where cores are free",
            "value": scale,
            "at": at,
            "met": None if scale is None or not free else scale >= SCALE_TARGET,
            "note": None if free else "no free cores here: every role shares the same cores (core-bound)",
        }
    )
    auto, at = worst("offload-auto", "tps_vs_router", min)
    out.append(
        {
            "target": "Offload with auto workers >= vllm-router's tokens/s on the same cores",
            "value": auto,
            "at": at,
            "met": None if auto is None else auto >= 1.0,
        }
    )
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(summary: dict[str, Any], meta: dict[str, Any], checks: list[dict[str, Any]]) -> str:
    """The results file's text (also the README's section)."""
    levels: list[int] = meta["levels"]
    layout = meta["layout"]
    rows, ratios = summary["rows"], summary["ratios"]
    where = (
        f"roles pinned with taskset: gateway on cores {layout['gateway']}, simulators on {layout['sims']}, "
        f"load generator on {layout['load']}"
        if layout["pinned"]
        else f"roles NOT pinned: gateway, {meta['sims']} simulators and {meta['load_processes']} load-generator "
        f"processes share all {len(layout['cpus'])} cores (core-bound)"
    )
    lines = [
        f"Capacity at saturation, {meta['started_at']}, {meta['machine']['cpus']} CPUs "
        f"({meta['machine']['cpu_model']}), load average {meta['machine']['loadavg_start'][0]:.1f} at the start "
        f"and {meta['machine']['loadavg_end'][0]:.1f} at the end; {where}. Streams of "
        f"{meta['output_tokens']} tokens, simulator inter-token {meta['itl_s'] * 1000:g} ms; "
        f"{meta['rounds']} interleaved rounds of {meta['seconds']:g} s per level; medians over rounds, "
        f"ratios paired within a round. Versions: {meta['versions']}.",
        "",
    ]
    head = "| target | server | workers | processes |"
    head += "".join(f" tokens/s @{lv} |" for lv in levels)
    head += "".join(f" CPU µs/token @{lv} |" for lv in levels)
    head += "".join(f" gateway cores busy @{lv} |" for lv in levels)
    head += " errors |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for name, info in meta["targets"].items():
        if info.get("failed"):
            lines.append(f"| {name} | {info['server']} | {info['workers']} | - | skipped: {info['failed']} |")
            continue
        cells = rows.get(name, {})
        procs = max((c["processes"] for c in cells.values()), default=0)
        line = f"| {name} | {info['server']} | {info['workers']} | {procs or '-'} |"
        line += "".join(f" {_fmt(cells.get(lv, {}).get('tokens_per_s'), ',.0f')} |" for lv in levels)
        if name == "direct":
            line += " - |" * len(levels) * 2
        else:
            line += "".join(f" {_fmt(cells.get(lv, {}).get('cpu_us_per_token'), '.1f')} |" for lv in levels)
            line += "".join(f" {_fmt(cells.get(lv, {}).get('gateway_cores_busy'), '.2f')} |" for lv in levels)
        line += f" {sum(c['errors'] for c in cells.values())} |"
        lines.append(line)
    lines.append("")
    for name in meta["targets"]:
        if name in (ROUTER, "direct") or not rows.get(name):
            continue
        parts = []
        for lv in levels:
            r = ratios[name][lv]
            bit = f"@{lv}: CPU/token {_fmt(r['cpu_vs_router'], '.2f')}x vllm-router's, tokens/s "
            bit += f"{_fmt(r['tps_vs_router'], '.2f')}x vllm-router's"
            if name != ONE and r["tps_vs_offload1"] is not None:
                bit += f", {r['tps_vs_offload1']:.2f}x offload-1's"
            parts.append(bit)
        lines.append(f"- {name}: " + "; ".join(parts) + ".")
    lines.append("")
    busy = [
        c["machine_cores_busy"] for cells in rows.values() for c in cells.values() if c["machine_cores_busy"]
    ]
    load = (meta["machine"]["loadavg_start"][0], meta["machine"]["loadavg_end"][0])
    if busy and not layout["pinned"]:
        lines.append(
            f"Core-bound: during the runs gateway + simulators + load generator kept "
            f"{min(busy):.2f}-{max(busy):.2f} of the {len(layout['cpus'])} cores busy (median per target and "
            f"level; the rest went to other work on this machine, load average {load[0]:.1f} at the start, "
            f"{load[1]:.1f} at the end), so every "
            "target's tokens/s here is a share of the same cores, not its ceiling: CPU per relayed token is the "
            "figure that carries over to a bigger machine, and 2 or auto workers cannot add cores that are not free."
        )
        lines.append("")
    lines.append("Targets:")
    for check in checks:
        state = {True: "met", False: "MISSED", None: "not measured here"}[check["met"]]
        value = "-" if check["value"] is None else f"{check['value']:.2f}x"
        at = f" (worst level: {check['at']} streams)" if check["at"] else ""
        note = f"; {check['note']}" if check.get("note") else ""
        lines.append(f"- {check['target']}: {value}{at}: {state}{note}.")
    lines.append("")
    lines.append(
        "This machine is shared with other work (load average above): absolute figures move between runs; "
        "the ratios, measured side by side in the same rounds, are the result."
    )
    return "\n".join(lines) + "\n"
