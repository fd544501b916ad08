"""Weighted fair queuing under a flood, on and off, side by side in one run.

    python -m benchmarks.fairness [--seconds 40] [--rounds 2] [--max-running 4]

The engine is the bottleneck: one engine simulator with ``--max-running`` slots (requests beyond
them wait in its FIFO queue, as vLLM's do). Two gateways in front of it, alike but for admission:
``on`` has ``max_in_flight`` equal to the engine's slots (so the gateway's fair queue holds what the
engine cannot run), ``off`` has no limit (everything goes to the engine's FIFO queue). Two keys of
equal weight: B, a steady client (``--b-concurrency`` streams, closed loop), and A, a flood of ten
times B's concurrency.

Per mode and round: B alone, then A's flood with B measured in the middle of it. Rounds alternate
the order of the modes (on off, off on, ...) so that drift hits both. Reports B's TTFT p50/p99 alone
and under the flood, A's and B's throughput, and writes ``benchmarks/results/fairness.{json,md}``
(the README's section too, for a standard run).

Goal (issue 15): with fair queuing on, B's TTFT p99 under the flood within 1.5x of B alone, and
total throughput no lower than with it off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks import peers, readme
from benchmarks.load import Dist, LoadConfig, run_load
from benchmarks.peers import Server, wait_all
from benchmarks.stats import LoadResult, distribution
from gateway.keys import hash_key
from tests.integration.servers import GatewayProcess

RESULTS = readme.RESULTS
KEYS = {"A": "ofl-bench-flood-a", "B": "ofl-bench-steady-b"}
MODES = ("on", "off")


def sim(workdir: Path, args: argparse.Namespace) -> Server:
    """The engine simulator with a few slots; each request takes ttft + tokens x itl seconds."""
    extra = ("--max-running", str(args.max_running))
    return peers.sim_server(
        workdir,
        "chat",
        ttft=args.ttft,
        itl=args.itl,
        output_tokens=args.output_tokens,
        name="sim",
        extra=extra,
    )


def gateway(workdir: Path, engine_url: str, limit: int | None) -> GatewayProcess:
    """A gateway with keys A and B (weight 1 each); ``limit``: max_in_flight of its one replica."""
    model: dict[str, Any] = {"name": "chat", "task": "chat", "engine": {"url": engine_url}}
    if limit is not None:
        model["max_in_flight"] = limit
    gw = GatewayProcess(workdir, [model], {"OFFLOAD_LOG__ACCESS": "false"})
    keys = [{"name": name, "hash": hash_key(key), "weight": 1} for name, key in KEYS.items()]
    # Nothing waits longer than a run: every request of the flood is served, none refused.
    admission = {"queue_size": 10_000, "queue_timeout": 600}
    gw.config_path.write_text(
        yaml.safe_dump({"models": [model], "auth": {"keys": keys}, "admission": admission})
    )
    return gw.start()


def load(base_url: str, key: str, concurrency: int, seconds: float, args: argparse.Namespace) -> LoadConfig:
    return LoadConfig(
        base_url=base_url,
        model="chat",
        concurrency=concurrency,
        duration=seconds,
        prompt_tokens=Dist(32, 32),
        output_tokens=Dist(args.output_tokens, args.output_tokens),
        headers={"Authorization": f"Bearer {KEYS[key]}"},
        timeout=600,
    )


def summary(result: LoadResult, seconds: float, first: int = 0) -> dict[str, Any]:
    """Counts, throughput and TTFT; ``first``: how many requests were the connections' first (their
    TTFT is also given apart, and the TTFT of the rest as ``ttft_after_first``)."""
    ok = sorted(result.ok, key=lambda r: r.start)
    return {
        "requests": len(result.records),
        "errors": dict(result.errors),
        "req_per_s": len(ok) / seconds,
        "ttft": distribution([r.ttft for r in ok if r.ttft is not None]),
        "ttft_first": [r.ttft for r in ok[:first]],
        "ttft_after_first": distribution([r.ttft for r in ok[first:] if r.ttft is not None]),
    }


async def alone(base_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """B by itself."""
    b = await run_load(load(base_url, "B", args.b_concurrency, args.seconds, args))
    return {"B": summary(b, b.elapsed)}


async def flooded(base_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """A's flood, with B running through its middle (A starts first and ends after B)."""
    lead = args.lead
    flood = load(base_url, "A", 10 * args.b_concurrency, args.seconds + 2 * lead, args)
    a_task = asyncio.create_task(run_load(flood))
    await asyncio.sleep(lead)  # (a benchmark's phase, not a test's wait: A saturates the engine first)
    b = await run_load(load(base_url, "B", args.b_concurrency, args.seconds, args))
    a = await a_task
    # Throughput of both over B's window only (A also ran alone before and after it).
    start, end = b.started_at, b.started_at + b.elapsed
    a_in_window = [r for r in a.ok if start <= a.started_at + r.end <= end]
    flood_a = summary(a, a.elapsed)
    flood_a["req_per_s"] = len(a_in_window) / b.elapsed
    return {"A": flood_a, "B": summary(b, b.elapsed, first=args.b_concurrency)}


def merge(runs: list[dict[str, Any]], who: str) -> dict[str, Any]:
    """Rounds of one phase together: TTFT over every request, throughput averaged."""
    return {
        "req_per_s": sum(r[who]["req_per_s"] for r in runs) / len(runs),
        "errors": sum(sum(r[who]["errors"].values()) for r in runs),
        "requests": sum(r[who]["requests"] for r in runs),
        "ttft_p50": _pooled(runs, who, "p50"),
        "ttft_p99": _pooled(runs, who, "p99"),
        "ttft_max": max(r[who]["ttft"]["max"] for r in runs),
        "ttft_p99_after_first": _pooled(runs, who, "p99", "ttft_after_first"),
        "ttft_first_max": max(
            (t for r in runs for t in r[who].get("ttft_first") or () if t is not None), default=0.0
        ),
    }


def _pooled(runs: list[dict[str, Any]], who: str, q: str, which: str = "ttft") -> float:
    # Each round's distribution is over its own requests; the median of the rounds' figures is
    # reported (rounds are equally long, so they weigh alike).
    values = sorted(r[who][which][q] for r in runs)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def render(report: dict[str, Any]) -> list[str]:
    a = report["args"]
    lines = [
        f"Engine simulator with {a['max_running']} slots, each request {a['ttft'] * 1000:.0f} ms to the first"
        f" token then {a['output_tokens']} tokens {a['itl'] * 1000:.0f} ms apart; key B: {a['b_concurrency']}"
        f" streams, key A: {10 * a['b_concurrency']} (equal weights); {a['seconds']:g} s per phase,"
        f" {a['rounds']} rounds, modes alternating. TTFT: the median over rounds of each round's percentile.",
        "",
        "| fair queuing | B TTFT p50 alone | B TTFT p99 alone | B TTFT p50 flood | B TTFT p99 flood"
        " | B p99 flood / alone | A req/s | B req/s | total req/s | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in MODES:
        m = report["modes"][mode]
        alone_b, flood_a, flood_b = m["alone"]["B"], m["flood"]["A"], m["flood"]["B"]
        errors = alone_b["errors"] + flood_a["errors"] + flood_b["errors"]
        lines.append(
            f"| {mode} | {alone_b['ttft_p50'] * 1000:.0f} ms | {alone_b['ttft_p99'] * 1000:.0f} ms"
            f" | {flood_b['ttft_p50'] * 1000:.0f} ms | {flood_b['ttft_p99'] * 1000:.0f} ms"
            f" | {m['b_p99_ratio']:.2f}x | {flood_a['req_per_s']:.1f} | {flood_b['req_per_s']:.1f}"
            f" | {m['total_req_per_s']:.1f} | {errors} |"
        )
    on, off = report["modes"]["on"], report["modes"]["off"]
    on_b, on_alone = on["flood"]["B"], on["alone"]["B"]
    lines += [
        "",
        f"Goal: B's p99 under the flood within 1.5x of alone with fair queuing on: {on['b_p99_ratio']:.2f}x"
        f" ({'met' if on['b_p99_ratio'] <= 1.5 else 'not met'}); off: {off['b_p99_ratio']:.2f}x."
        f" Total throughput on / off: {report['throughput_ratio']:.3f}"
        f" ({'no lower' if report['throughput_ratio'] >= 0.98 else 'lower'}, within 2% counted as equal).",
        "",
        f"With fair queuing on, B's slowest requests under the flood are the first of each of its connections"
        f" (at most {on_b['ttft_first_max'] * 1000:.0f} ms): they arrive while A holds every engine slot and"
        " wait for one to free, which no gateway can shorten without preempting the engine. After them, B's"
        f" p99 under the flood is {on_b['ttft_p99_after_first'] * 1000:.0f} ms"
        f" ({on_b['ttft_p99_after_first'] / on_alone['ttft_p99']:.2f}x alone).",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fairness", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="B's measured window per phase")
    parser.add_argument("--lead", type=float, default=2.0, help="seconds A floods before and after B")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-running", type=int, default=4)
    parser.add_argument("--b-concurrency", type=int, default=2)
    parser.add_argument("--ttft", type=float, default=0.05)
    parser.add_argument("--itl", type=float, default=0.01)
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS / "fairness")
    args = parser.parse_args(argv)
    if not (0 < args.seconds <= 600 and 1 <= args.rounds <= 10):
        parser.error("--seconds must be in (0, 600] and --rounds in 1..10")

    work = Path(tempfile.mkdtemp(prefix="offload-fairness-"))
    engine = sim(work, args).start()
    gateways: dict[str, GatewayProcess] = {}
    phases: dict[str, dict[str, list[dict[str, Any]]]] = {m: {"alone": [], "flood": []} for m in MODES}
    try:
        wait_all([engine])
        gateways = {"on": gateway(work, engine.base_url, args.max_running)}
        gateways["off"] = gateway(work, engine.base_url, None)
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                url = gateways[mode].base_url
                phases[mode]["alone"].append(asyncio.run(alone(url, args)))
                phases[mode]["flood"].append(asyncio.run(flooded(url, args)))
                last = phases[mode]["flood"][-1]
                print(
                    f"round {r} fair queuing {mode:3s}: B TTFT p99 alone "
                    f"{phases[mode]['alone'][-1]['B']['ttft']['p99'] * 1000:6.0f} ms, flood "
                    f"{last['B']['ttft']['p99'] * 1000:6.0f} ms; A {last['A']['req_per_s']:.1f} req/s, "
                    f"B {last['B']['req_per_s']:.1f} req/s",
                    flush=True,
                )
    finally:
        for gw in gateways.values():
            gw.stop()
        engine.stop()

    modes: dict[str, Any] = {}
    for mode in MODES:
        alone_b = merge(phases[mode]["alone"], "B")
        flood_a, flood_b = merge(phases[mode]["flood"], "A"), merge(phases[mode]["flood"], "B")
        modes[mode] = {
            "alone": {"B": alone_b},
            "flood": {"A": flood_a, "B": flood_b},
            "b_p99_ratio": flood_b["ttft_p99"] / alone_b["ttft_p99"],
            "total_req_per_s": flood_a["req_per_s"] + flood_b["req_per_s"],
        }
    report = {
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "modes": modes,
        "throughput_ratio": modes["on"]["total_req_per_s"] / modes["off"]["total_req_per_s"],
        "rounds": phases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    print(readme.publish("fairness", args.out, render(report)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
