"""Prefix affinity vs round robin over two real vLLM CPU replicas, side by side in one run.

    python -m benchmarks.prefix_affinity [--groups 8] [--per-group 4] [--prefix-words 900] [--rounds 2]

Starts two vLLM engines serving SmolLM2 (1 GiB of KV cache each, so that one replica cannot hold every
group's prefix), then two gateways in front of both: one with ``policy: prefix_affinity``, one with
``round_robin``. Each batch sends groups of requests that share a long prompt prefix (1,000+
tokens) and differ only in their last line; every batch uses fresh prefixes, so the policies never
profit from each other's cache. Batches alternate between the policies (A B B A ...) so machine
drift hits both alike. Reports TTFT p50/p90, throughput and the engines' prefix cache hit rate, and
writes ``benchmarks/results/prefix_affinity.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import readme
from benchmarks.client import RequestRecord, chat_body, json_headers, send
from benchmarks.stats import distribution
from engines.supervisor import Supervisor
from gateway.config import EngineConfig, LocalEngine, ModelConfig, OffloadConfig
from gateway.local_engines import engine_specs
from gateway.settings import Settings
from tests.integration.servers import GatewayProcess, engine_gauge, free_port

RESULTS = readme.RESULTS
_WORDS = [
    "river",
    "stone",
    "market",
    "engine",
    "lantern",
    "harbor",
    "meadow",
    "signal",
    "copper",
    "garden",
    "winter",
    "orbit",
    "canvas",
    "thunder",
    "pilot",
    "velvet",
    "anchor",
    "summit",
    "ledger",
    "prism",
    "falcon",
    "ember",
    "quarry",
    "tide",
    "beacon",
    "saddle",
]


def group_prefix(batch: str, group: int, words: int) -> str:
    """A long shared context, unique to (batch, group)."""
    rng = random.Random(f"{batch}/{group}")
    body = " ".join(rng.choice(_WORDS) for _ in range(words))
    return f"Reference document {batch}-{group}. Read it carefully.\n{body}\n"


async def run_batch(base_url: str, batch: str, args: argparse.Namespace) -> dict[str, Any]:
    """All groups x per-group requests in random order at fixed concurrency; TTFT per request."""
    jobs = [(g, i) for g in range(args.groups) for i in range(args.per_group)]
    random.Random(batch).shuffle(jobs)
    records: list[RequestRecord] = []
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        queue = list(jobs)

        async def worker() -> None:
            while queue:
                g, i = queue.pop()
                prompt = (
                    group_prefix(batch, g, args.prefix_words)
                    + f"Question {i}: name one word from the document."
                )
                body = chat_body("chat", prompt, args.max_tokens, True, True, {})
                rec = RequestRecord(start=0.0)
                records.append(
                    await send(
                        session,
                        base_url + "/v1/chat/completions",
                        body,
                        stream=True,
                        embeddings=False,
                        headers=json_headers({}),
                        timeout=600,
                        record=rec,
                        t0=t0,
                    )
                )

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    wall = time.perf_counter() - t0
    ok = [r for r in records if r.ok]
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "wall_s": wall,
        "req_per_s": len(ok) / wall,
        "prompt_tokens_per_s": sum(r.prompt_tokens for r in ok) / wall,
        "mean_prompt_tokens": sum(r.prompt_tokens for r in ok) / max(1, len(ok)),
        "ttft": distribution([r.ttft for r in ok if r.ttft is not None]),
    }


def _cache_counters(urls: list[str]) -> tuple[float, float]:
    return (
        sum(engine_gauge(u, "vllm:prefix_cache_hits_total") for u in urls),
        sum(engine_gauge(u, "vllm:prefix_cache_queries_total") for u in urls),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.prefix_affinity", description=__doc__.split("\n")[0]
    )
    # 24 groups x ~1,200 tokens overflow one replica's 1 GiB KV cache (~23,000 tokens) under round
    # robin, while prefix affinity gives each replica half the groups, which fit.
    parser.add_argument("--groups", type=int, default=24)
    parser.add_argument("--per-group", type=int, default=3)
    parser.add_argument("--prefix-words", type=int, default=900, help="about 1.3 tokens a word")
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="batches per policy")
    parser.add_argument("--kv-cache-gib", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "prefix_affinity")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="offload-bench-"))
    engine = {
        "model": "smollm2",
        "dtype": "float32",
        "max_model_len": 4096,
        "kv_cache_gib": args.kv_cache_gib,
    }
    config = OffloadConfig(
        models=tuple(
            ModelConfig(
                name=f"replica{i}",
                task="chat",
                engine=EngineConfig(local=LocalEngine(port=free_port(), **engine)),
            )
            for i in range(2)
        )
    )
    models_dir = Settings().models_dir
    supervisor = Supervisor(engine_specs(config, models_dir), models_dir, work / "logs")
    gateways: dict[str, GatewayProcess] = {}
    try:
        supervisor.prepare_models()
        supervisor.start_all()
        supervisor.wait_all()
        urls = [e.spec.base_url for e in supervisor.engines]
        for policy in ("prefix_affinity", "round_robin"):
            models = [
                {
                    "name": "chat",
                    "task": "chat",
                    "policy": policy,
                    "engines": [{"url": u, "served_name": f"replica{i}"} for i, u in enumerate(urls)],
                }
            ]
            gateways[policy] = GatewayProcess(work, models, {"OFFLOAD_LOG__ACCESS": "false"}).start()
        order = ["prefix_affinity", "round_robin"]
        batches: dict[str, list[dict[str, Any]]] = {p: [] for p in order}
        for r in range(args.rounds):
            for policy in order if r % 2 == 0 else order[::-1]:
                hits0, queries0 = _cache_counters(urls)
                result = asyncio.run(run_batch(gateways[policy].base_url, f"{policy}-{r}", args))
                hits1, queries1 = _cache_counters(urls)
                result["prefix_cache_hit_rate"] = (hits1 - hits0) / max(1.0, queries1 - queries0)
                batches[policy].append(result)
                print(
                    f"{policy:16s} round {r}: TTFT p50 {result['ttft']['p50'] * 1000:7.0f} ms  "
                    f"p90 {result['ttft']['p90'] * 1000:7.0f} ms  {result['req_per_s']:.2f} req/s  "
                    f"cache hits {result['prefix_cache_hit_rate']:.0%}",
                    flush=True,
                )
    finally:
        for gw in gateways.values():
            gw.stop()
        supervisor.stop_all()

    def merged(policy: str, key: str) -> float:
        return sum(b[key] if key != "ttft" else 0 for b in batches[policy]) / len(batches[policy])

    summary = {}
    for policy in batches:
        ttfts_p50 = sorted(b["ttft"]["p50"] for b in batches[policy])
        ttfts_p90 = sorted(b["ttft"]["p90"] for b in batches[policy])
        summary[policy] = {
            "ttft_p50_ms": 1000 * ttfts_p50[len(ttfts_p50) // 2],
            "ttft_p90_ms": 1000 * ttfts_p90[len(ttfts_p90) // 2],
            "req_per_s": merged(policy, "req_per_s"),
            "prompt_tokens_per_s": merged(policy, "prompt_tokens_per_s"),
            "prefix_cache_hit_rate": merged(policy, "prefix_cache_hit_rate"),
            "mean_prompt_tokens": merged(policy, "mean_prompt_tokens"),
            "errors": sum(b["errors"] for b in batches[policy]),
        }
    a, b = summary["prefix_affinity"], summary["round_robin"]
    ratios = {
        "ttft_p50_rr_over_affinity": b["ttft_p50_ms"] / a["ttft_p50_ms"],
        "ttft_p90_rr_over_affinity": b["ttft_p90_ms"] / a["ttft_p90_ms"],
        "throughput_affinity_over_rr": a["req_per_s"] / b["req_per_s"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "summary": summary,
        "ratios": ratios,
        "batches": batches,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    lines = [
        f"Prefix affinity vs round robin, 2 vLLM CPU replicas (SmolLM2, KV cache {args.kv_cache_gib} GiB each), "
        f"{args.groups} groups x {args.per_group} requests, ~{a['mean_prompt_tokens']:.0f} prompt tokens, "
        f"concurrency {args.concurrency}, {args.rounds} batches each, measured {payload['when']}.",
        "",
        "| policy | TTFT p50 ms | TTFT p90 ms | req/s | prompt tokens/s | prefix cache hit rate | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for policy, s in summary.items():
        lines.append(
            f"| {policy} | {s['ttft_p50_ms']:.0f} | {s['ttft_p90_ms']:.0f} | {s['req_per_s']:.2f} | "
            f"{s['prompt_tokens_per_s']:.0f} | {s['prefix_cache_hit_rate']:.0%} | {s['errors']} |"
        )
    lines += [
        "",
        f"Round robin / affinity: TTFT p50 {ratios['ttft_p50_rr_over_affinity']:.2f}x, "
        f"p90 {ratios['ttft_p90_rr_over_affinity']:.2f}x; throughput affinity / round robin "
        f"{ratios['throughput_affinity_over_rr']:.2f}x.",
    ]
    print(readme.publish("prefix_affinity", args.out, lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
