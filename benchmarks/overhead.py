"""Side-by-side gateway overhead: the engine simulator alone (the floor), Offload, LiteLLM proxy and
vllm-router in front of it, under the same load, on one machine, in one go.

    python -m benchmarks.overhead --quick        # under 5 minutes (peers already installed)
    python -m benchmarks.overhead                # the full run, about 20-25 minutes

Runs are interleaved (round r starts at target r mod n: A B C D, B C D A, ...) so that machine
drift and other people's jobs hit every target alike; medians over rounds are reported, and every
"added" number or ratio is first taken within one round, then the median over rounds. Writes
``benchmarks/results/overhead.{json,md,png}`` (``overhead-quick.*`` with ``--quick``) and ends by
printing one line with the key ratios. Target ``offload-keyed`` is Offload with an API key and its
rpm, tpm and concurrency limits on, so that the report sets its CPU per request beside keyless Offload's.
Peers are installed on demand into their own virtualenvs (see :mod:`benchmarks.peers`). Only loopback
addresses are used; every run is bounded.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from benchmarks import overhead_render as render
from benchmarks import overhead_report as report
from benchmarks import readme
from benchmarks.overhead_bench import FULL, QUICK, SCENARIOS, STREAM_ITL, TOKENS, Bench, Plan, say
from benchmarks.procstat import cpu_model
from benchmarks.runner import new_loop_runner

RESULTS = Path(__file__).parent / "results"


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_start": os.getloadavg(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 rounds of 2.5 s runs and a short ramp (< 5 min)")
    p.add_argument(
        "--targets",
        default="sim,offload,offload-keyed,litellm,vllm-router",
        help=(
            "comma-separated, from sim, offload, offload-log (access log on), offload-keyed (an API key "
            "with rpm, tpm and concurrency limits on), litellm, vllm-router"
        ),
    )
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout (e.g. a git worktree of main) measured as target offload-base, to A/B a change",
    )
    p.add_argument("--rounds", type=int, default=None, help="override the plan's rounds")
    p.add_argument("--seconds", type=float, default=None, help="override one run's issuing window")
    p.add_argument("--no-ramp", action="store_true", help="skip the throughput ramp")
    p.add_argument("--reinstall-peers", action="store_true", help="reinstall the peers' virtualenvs")
    p.add_argument(
        "--out", default=None, help="results name under benchmarks/results (default: overhead[-quick])"
    )
    args = p.parse_args(argv)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    if "sim" not in names:
        names.insert(0, "sim")  # the floor is always measured: every "added" number needs it
    if not 1 <= (args.rounds or 1) <= 50 or not 0.5 <= (args.seconds or 1) <= 120:
        p.error("rounds must be 1..50 and seconds 0.5..120")
    if args.baseline is not None:
        if not (args.baseline / "gateway").is_dir():
            p.error(f"--baseline {args.baseline}: no gateway package there")
        args.baseline = args.baseline.resolve()
        names.append("offload-base")
    args.names = names
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan = Plan(
        **{
            **asdict(plan),
            **({"rounds": args.rounds} if args.rounds else {}),
            **({"seconds": args.seconds} if args.seconds else {}),
        }
    )
    name = args.out or ("overhead-quick" if args.quick else "overhead")
    started = time.monotonic()
    machine = _machine()
    signal.signal(signal.SIGTERM, _interrupt)  # so that `finally` stops every server we started
    with tempfile.TemporaryDirectory(prefix="offload-overhead-") as tmp:
        bench = Bench(plan, Path(tmp), args.names, args.reinstall_peers, args.baseline)
        try:
            bench.start()
            if len(bench.live) < 2:
                say("nothing to compare: every gateway failed to start")
                return 1
            with new_loop_runner() as runner:
                runner.run(bench.warm_up())
                runner.run(bench.scenarios())
                if not args.no_ramp:
                    runner.run(bench.ramp())
            rss = bench.peak_rss()
        finally:
            bench.stop()
    machine["loadavg_end"] = os.getloadavg()
    meta = {
        "mode": "quick" if args.quick else "full",
        "plan": asdict(plan),
        "machine": machine,
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "wall_s": round(time.monotonic() - started, 1),
        "tokens_per_answer": TOKENS,
        "stream_itl_s": STREAM_ITL,
        "prompt_words": 128,
        "targets": {
            t.name: {
                "version": t.version,
                "ready_s": round(t.ready_s, 2),
                "failed": t.failed,
                "processes": [s.name for s in t.measured],
            }
            for t in bench.targets
        },
        "peers": bench.installs,
    }
    summary = report.summarize(
        bench.runs,
        bench.ramp_runs,
        rss,
        [t.name for t in bench.targets],
        [(s.key, s.label) for s in SCENARIOS],
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta, "summary": summary, "runs": bench.runs, "ramp_runs": bench.ramp_runs}
    (RESULTS / f"{name}.json").write_bytes(
        orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    (RESULTS / f"{name}.md").write_text(render.markdown(summary, meta))
    plotted = render.plot(summary, RESULTS / f"{name}.png")
    say(f"wrote {RESULTS}/{name}.json, .md{', .png' if plotted else ''} in {meta['wall_s']:.0f} s")
    if (
        args.out is None and args.rounds is None and args.seconds is None
    ):  # a standard run: the README shows it
        readme.update_section(name, render.readme_summary(summary, meta))
    print(render.headline(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
