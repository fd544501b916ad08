"""Prefix affinity against round robin and least outstanding, over two replicas, side by side in one run.

    python -m benchmarks.prefix_affinity [--engine vllm|sim] [--groups 24] [--per-group 3]
        [--prefix-words 600] [--cache-prefixes 16] [--rounds 2] [--concurrency 4]

Two engines (real vLLM CPU engines serving SmolLM2, or two engine simulators with their prefix-cache
knob) and one gateway per policy in front of both. Each batch sends groups of requests that share a
long prompt prefix (600 words: ~670 SmolLM2 tokens, ~1,000 simulator tokens) and differ only in
their last line, in random order at fixed concurrency; every batch uses fresh prefixes, so no policy
profits from another's cache. Batches rotate through the policies (A B C, then C B A, ...) so
machine drift hits all alike.

Two effects separate the policies. Round robin sends a group's requests to both replicas, so each
replica misses it once (of 3 requests a group, 2 can hit under affinity, 1.25 on average under
round robin). And when one replica's cache holds fewer prefixes than there are groups, round robin
also evicts prefixes before their next request while affinity (half the groups a replica) keeps
them. ``--cache-prefixes`` sets that size: the simulator's cache, or vLLM's KV blocks
(``--num-gpu-blocks-override``). vLLM's default 1 GiB for SmolLM2 in float32 is 182 blocks of 128
tokens, 26 prefixes of 900 words: all 24 groups fit on every replica, and only the first effect shows.

Reports TTFT p50/p90, throughput and the engines' prefix cache hit rate; writes
``benchmarks/results/prefix_affinity.{json,md}`` (vLLM) or ``prefix_affinity-sim.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import readme
from benchmarks.client import RequestRecord, chat_body, json_headers, send
from benchmarks.prefix_affinity_engines import group_prefix, sim_engines, vllm_engines
from benchmarks.stats import distribution
from tests.integration.servers import GatewayProcess, engine_gauge

RESULTS = readme.RESULTS
POLICIES = ("prefix_affinity", "round_robin", "least_outstanding")


async def run_batch(base_url: str, batch: str, args: argparse.Namespace) -> dict[str, Any]:
    """All groups x per-group requests in random order at fixed concurrency; TTFT per request."""
    jobs = [(g, i) for g in range(args.groups) for i in range(args.per_group)]
    random.Random(batch).shuffle(jobs)
    records: list[RequestRecord] = []
    replicas: dict[str, str] = {}  # request id -> the replica that answered (X-Offload-Replica)
    groups: dict[str, int] = {}  # request id -> its group
    tracing = aiohttp.TraceConfig()

    async def answered(session: object, context: object, params: aiohttp.TraceRequestEndParams) -> None:
        request_id = params.headers.get("X-Request-Id", "")
        replicas[request_id] = params.response.headers.get("X-Offload-Replica", "?")

    tracing.on_request_end.append(answered)
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(trace_configs=[tracing]) as session:

        async def worker() -> None:
            while jobs:
                g, i = jobs.pop()
                prompt = group_prefix(batch, g, args.prefix_words) + f"Question {i}: name one word from it."
                body = chat_body("chat", prompt, args.max_tokens, True, True, {})
                request_id = f"{batch}/{g}/{i}"
                groups[request_id] = g
                records.append(
                    await send(
                        session,
                        base_url + "/v1/chat/completions",
                        body,
                        stream=True,
                        embeddings=False,
                        headers=json_headers({"X-Request-Id": request_id}),
                        timeout=600,
                        record=RequestRecord(start=0.0),
                        t0=t0,
                    )
                )

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    wall = time.perf_counter() - t0
    ok = [r for r in records if r.ok]
    return {
        "kept_together": kept_together(groups, replicas),
        "requests": len(records),
        "errors": len(records) - len(ok),
        "wall_s": wall,
        "req_per_s": len(ok) / wall,
        "prompt_tokens_per_s": sum(r.prompt_tokens for r in ok) / wall,
        "mean_prompt_tokens": sum(r.prompt_tokens for r in ok) / max(1, len(ok)),
        "ttft": distribution([r.ttft for r in ok if r.ttft is not None]),
    }


def kept_together(groups: dict[str, int], replicas: dict[str, str]) -> float:
    """The share of requests that went to their group's most used replica (1.0: no group split)."""
    by_group: dict[int, Counter[str]] = {}
    for request_id, group in groups.items():
        by_group.setdefault(group, Counter())[replicas.get(request_id, "?")] += 1
    kept = sum(c.most_common(1)[0][1] for c in by_group.values())
    return kept / max(1, len(groups))


def _cache_counters(urls: list[str]) -> tuple[float, float]:
    return (
        sum(engine_gauge(u, "vllm:prefix_cache_hits_total") for u in urls),
        sum(engine_gauge(u, "vllm:prefix_cache_queries_total") for u in urls),
    )


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Start engines and gateways, run the batches; the per-policy batch results and the set-up."""
    work = Path(tempfile.mkdtemp(prefix="offload-bench-"))
    engines = sim_engines if args.engine == "sim" else vllm_engines
    policies: list[str] = args.policies
    batches: dict[str, list[dict[str, Any]]] = {p: [] for p in policies}
    with engines(work, args) as (urls, setup):
        gateways: dict[str, GatewayProcess] = {}
        try:
            for policy in policies:
                models = [
                    {
                        "name": "chat",
                        "task": "chat",
                        "policy": policy,
                        "engines": [{"url": u, "served_name": f"replica{i}"} for i, u in enumerate(urls)],
                    }
                ]
                gateways[policy] = GatewayProcess(work, models, {"OFFLOAD_LOG__ACCESS": "false"}).start()
            for r in range(args.rounds):
                for policy in policies if r % 2 == 0 else policies[::-1]:
                    hits0, queries0 = _cache_counters(urls)
                    result = asyncio.run(run_batch(gateways[policy].base_url, f"{policy}-{r}", args))
                    hits1, queries1 = _cache_counters(urls)
                    result["prefix_cache_hit_rate"] = (hits1 - hits0) / max(1.0, queries1 - queries0)
                    batches[policy].append(result)
                    print(
                        f"{policy:18s} round {r}: TTFT p50 {result['ttft']['p50'] * 1000:7.0f} ms  "
                        f"p90 {result['ttft']['p90'] * 1000:7.0f} ms  {result['req_per_s']:.2f} req/s  "
                        f"cache hits {result['prefix_cache_hit_rate']:.0%}  "
                        f"kept together {result['kept_together']:.0%}",
                        flush=True,
                    )
        finally:
            for gw in gateways.values():
                gw.stop()
    return {"setup": setup, "batches": batches}


def summarise(batches: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per policy: TTFT p50/p90 over all its requests' batch figures (median of batches), means of the rest."""
    summary: dict[str, dict[str, float]] = {}
    for policy, runs in batches.items():

        def median(values: list[float]) -> float:
            ordered = sorted(values)
            mid = len(ordered) // 2
            return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

        def mean(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return sum(float(b[key]) for b in runs) / len(runs)

        summary[policy] = {
            "ttft_p50_ms": 1000 * median([b["ttft"]["p50"] for b in runs]),
            "ttft_p90_ms": 1000 * median([b["ttft"]["p90"] for b in runs]),
            "req_per_s": mean("req_per_s"),
            "prompt_tokens_per_s": mean("prompt_tokens_per_s"),
            "prefix_cache_hit_rate": mean("prefix_cache_hit_rate"),
            "kept_together": mean("kept_together"),
            "mean_prompt_tokens": mean("mean_prompt_tokens"),
            "errors": sum(b["errors"] for b in runs),
        }
    return summary


def report(
    args: argparse.Namespace,
    setup: str,
    batches: dict[str, list[dict[str, Any]]],
    summary: dict[str, dict[str, float]],
    when: str,
) -> list[str]:
    """The markdown summary: one table, affinity's gain over each other policy, each batch's TTFT p50."""
    a = summary.get("prefix_affinity")
    lines = [
        f"Replica policies on a shared-prefix workload: {setup}; {args.groups} groups x {args.per_group} requests, "
        f"~{next(iter(summary.values()))['mean_prompt_tokens']:.0f} prompt tokens, concurrency "
        f"{args.concurrency}, {args.rounds} batches each, measured {when} (a shared, noisy 2-core machine: "
        "read the ratios, measured side by side).",
        "",
        "| policy | TTFT p50 ms | TTFT p90 ms | req/s | prompt tokens/s | prefix cache hit rate "
        "| requests on their group's replica | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for policy, s in summary.items():
        lines.append(
            f"| {policy} | {s['ttft_p50_ms']:.0f} | {s['ttft_p90_ms']:.0f} | {s['req_per_s']:.2f} | "
            f"{s['prompt_tokens_per_s']:.0f} | {s['prefix_cache_hit_rate']:.0%} | {s['kept_together']:.0%} | "
            f"{s['errors']:.0f} |"
        )
    if a is not None:
        lines.append("")
        for policy, s in summary.items():
            if policy != "prefix_affinity":
                lines.append(
                    f"{policy} / prefix_affinity: TTFT p50 {s['ttft_p50_ms'] / a['ttft_p50_ms']:.2f}x, "
                    f"p90 {s['ttft_p90_ms'] / a['ttft_p90_ms']:.2f}x; throughput affinity / {policy} "
                    f"{a['req_per_s'] / s['req_per_s']:.2f}x."
                )
    per_batch = "; ".join(
        f"{policy} " + ", ".join(f"{b['ttft']['p50'] * 1000:.0f}" for b in runs)
        for policy, runs in batches.items()
    )
    lines += ["", f"TTFT p50 ms per batch, by round: {per_batch}."]
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The benchmark's options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.prefix_affinity", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--engine", choices=("vllm", "sim"), default="vllm")
    parser.add_argument("--policies", type=lambda s: s.split(","), default=list(POLICIES))
    parser.add_argument("--groups", type=int, default=24)
    parser.add_argument("--per-group", type=int, default=3)
    parser.add_argument("--prefix-words", type=int, default=600, help="about 1.1 SmolLM2 tokens a word")
    parser.add_argument(
        "--cache-prefixes",
        type=int,
        default=16,
        help="prefixes one replica's cache holds (vLLM: 0 = its whole 1 GiB, about 26)",
    )
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="batches per policy")
    parser.add_argument("--sim-ttft", type=float, default=0.5, help="simulator: uncached time to first token")
    parser.add_argument("--sim-block-tokens", type=int, default=16)
    parser.add_argument("--sim-max-running", type=int, default=2, help="simulator: requests running at once")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS / ("prefix_affinity" if args.engine == "vllm" else "prefix_affinity-sim")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    measured = measure(args)
    summary = summarise(measured["batches"])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = report(args, measured["setup"], measured["batches"], summary, when)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "setup": measured["setup"],
        "summary": summary,
        "batches": measured["batches"],
        "when": when,
    }
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    name = "prefix_affinity" if args.engine == "vllm" else "prefix_affinity_sim"
    print(readme.publish(name, args.out, lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
