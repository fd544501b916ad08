"""One load-generator process of the capacity benchmark (:mod:`benchmarks.capacity`).

    python -m benchmarks.capacity_load --url http://127.0.0.1:P --model chat --concurrency 32 --seconds 4

Several of these run at once (one per load-generator core, pinned with ``taskset`` where cores
allow), so that the Python client is not the limit. Each one imports everything, prints ``ready``,
waits for ``go`` on stdin (so that the coordinator reads the gateway's CPU counters when every
generator is about to send), runs a closed loop of streams through :func:`benchmarks.load.run_load`
(the streams split over the ``--url`` targets: direct runs spread over the simulators), then prints
one JSON line: tokens received, requests, errors, its own CPU seconds, TTFT and gap medians.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from typing import Any

import orjson

from benchmarks.load import Dist, LoadConfig, run_load
from benchmarks.runner import new_loop_runner
from benchmarks.stats import LoadResult, percentile


def split_streams(total: int, parts: int) -> list[int]:
    """``total`` streams over ``parts`` targets, as evenly as possible (none empty when total >= parts)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    configs = [
        LoadConfig(
            base_url=url,
            model=args.model,
            concurrency=share,
            duration=args.seconds,
            prompt_tokens=Dist(args.prompt_tokens, args.prompt_tokens),
            output_tokens=Dist(args.output_tokens, args.output_tokens),
            timeout=args.timeout,
            seed=args.seed + index,
        )
        for index, (url, share) in enumerate(
            zip(args.url, split_streams(args.concurrency, len(args.url)), strict=True)
        )
        if share > 0
    ]
    cpu0, t0 = time.process_time(), time.perf_counter()
    results: list[LoadResult] = await asyncio.gather(*(run_load(c) for c in configs))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    records = [r for result in results for r in result.records]
    ok = [r for r in records if r.ok]
    ttfts = sorted(r.ttft for r in ok if r.ttft is not None)
    gaps = sorted(g for r in ok for g in r.itl)
    return {
        "tokens": sum(r.output_tokens for r in ok),
        "events": sum(r.events for r in ok),
        "requests": len(ok),
        "errors": dict(Counter(r.error for r in records if r.error is not None)),
        "error_samples": {r.error: (r.detail or "")[:300] for r in reversed(records) if r.error is not None},
        "elapsed_s": wall,
        "cpu_s": cpu,
        "ttft_p50_s": percentile(ttfts, 50) if ttfts else None,
        "itl_p50_s": percentile(gaps, 50) if gaps else None,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The generator's options (the coordinator builds them)."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.capacity_load", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--url", action="append", required=True, help="target base URL (repeatable; loopback only)"
    )
    p.add_argument("--model", default="chat")
    p.add_argument("--concurrency", type=int, required=True, help="streams in flight, over all --url")
    p.add_argument("--seconds", type=float, required=True, help="issuing window")
    p.add_argument("--output-tokens", type=int, default=256)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-wait", action="store_true", help="start at once instead of waiting for 'go'")
    args = p.parse_args(argv)
    if not 1 <= args.concurrency <= 4096 or not 0 < args.seconds <= 600:
        p.error("concurrency must be 1..4096 and seconds in (0, 600]")
    return args


def main(argv: list[str] | None = None) -> int:
    """Wait for ``go`` (unless ``--no-wait``), run, print the JSON line."""
    args = parse_args(argv)
    if not args.no_wait:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 2  # the coordinator went away
    with new_loop_runner() as runner:
        outcome = runner.run(_run(args))
    sys.stdout.write(orjson.dumps(outcome).decode() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
