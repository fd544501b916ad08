"""A real vLLM CPU engine, directly and through Offload, side by side (issue figures for the README).

    python -m benchmarks.real_engine [--rounds 3] [--output-tokens 64]

Starts one SmolLM2 engine and a gateway in front of it, then streams at 1 and 16 concurrent
requests (64 generated tokens each, ``ignore_eos``) alternately against the engine and the gateway
(direct, gateway, gateway, direct, ...) so machine drift hits both alike. Reports generated tokens/s
and TTFT for each, the ratio gateway/direct (target: >= 0.98 of direct tokens/s, TTFT within 5 ms),
and writes ``benchmarks/results/real_engine.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import readme
from benchmarks.load import Dist, LoadConfig, run_load
from engines.supervisor import Supervisor
from gateway.config import EngineConfig, LocalEngine, ModelConfig, OffloadConfig
from gateway.local_engines import engine_specs
from gateway.settings import Settings
from tests.integration.servers import GatewayProcess, free_port

RESULTS = readme.RESULTS


async def _measure(base_url: str, model: str, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    config = LoadConfig(
        base_url=base_url,
        model=model,
        stream=True,
        concurrency=concurrency,
        requests=concurrency * args.requests_per_stream,
        prompt_tokens=Dist(32, 32),
        output_tokens=Dist(args.output_tokens, args.output_tokens),
        timeout=600,
    )
    result = await run_load(config)
    ok = result.ok
    ttfts = [1000 * r.ttft for r in ok if r.ttft is not None]
    gaps = [1000 * gap for r in ok for gap in r.itl]
    return {
        "requests": len(result.records),
        "errors": len(result.records) - len(ok),
        "tokens_per_s": sum(r.output_tokens for r in ok) / result.elapsed,
        "ttft_p50_ms": statistics.median(ttfts) if ttfts else None,
        "itl_p50_ms": statistics.median(gaps) if gaps else None,
        "ttfts_ms": ttfts,
        "gaps_ms": gaps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.real_engine", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=4, help="direct/gateway pairs per concurrency")
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--requests-per-stream", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--out", type=Path, default=RESULTS / "real_engine")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="offload-bench-"))
    config = OffloadConfig(
        models=(
            ModelConfig(
                name="smollm2",
                task="chat",
                engine=EngineConfig(
                    local=LocalEngine(model="smollm2", port=free_port(), dtype="float32", max_model_len=2048)
                ),
            ),
        )
    )
    models_dir = Settings().models_dir
    supervisor = Supervisor(engine_specs(config, models_dir), models_dir, work / "logs")
    gateway = None
    rows: dict[int, dict[str, list[dict[str, Any]]]] = {}
    try:
        started = time.monotonic()
        supervisor.prepare_models()
        supervisor.start_all()
        supervisor.wait_all()
        engine_start = time.monotonic() - started
        engine_url = supervisor.engines[0].spec.base_url
        gateway = GatewayProcess(
            work,
            [{"name": "smollm2", "task": "chat", "engine": {"url": engine_url}}],
            {"OFFLOAD_LOG__ACCESS": "false"},
        ).start()
        targets = {"direct": engine_url, "offload": gateway.base_url}
        asyncio.run(_measure(engine_url, "smollm2", 2, args))  # warm-up
        for c in args.concurrency:
            rows[c] = {"direct": [], "offload": []}
            for r in range(args.rounds):
                for name in ("direct", "offload") if r % 2 == 0 else ("offload", "direct"):
                    res = asyncio.run(_measure(targets[name], "smollm2", c, args))
                    rows[c][name].append(res)
                    print(
                        f"{c:3d} streams {name:8s}: {res['tokens_per_s']:7.1f} tokens/s  "
                        f"TTFT p50 {res['ttft_p50_ms']:.1f} ms",
                        flush=True,
                    )
    finally:
        if gateway is not None:
            gateway.stop()
        supervisor.stop_all()

    summary = {}
    for c, by in rows.items():
        d_tps = statistics.median(x["tokens_per_s"] for x in by["direct"])
        o_tps = statistics.median(x["tokens_per_s"] for x in by["offload"])
        # TTFT and inter-token gap: medians over every request (every gap) of all runs, not of run medians.
        d_ttft = statistics.median(t for x in by["direct"] for t in x.pop("ttfts_ms"))
        o_ttft = statistics.median(t for x in by["offload"] for t in x.pop("ttfts_ms"))
        d_itl = statistics.median(g for x in by["direct"] for g in x.pop("gaps_ms"))
        o_itl = statistics.median(g for x in by["offload"] for g in x.pop("gaps_ms"))
        summary[c] = {
            "direct_tokens_per_s": d_tps,
            "offload_tokens_per_s": o_tps,
            "ratio": o_tps / d_tps,
            "direct_ttft_p50_ms": d_ttft,
            "offload_ttft_p50_ms": o_ttft,
            "added_ttft_ms": o_ttft - d_ttft,
            "direct_itl_p50_ms": d_itl,
            "offload_itl_p50_ms": o_itl,
            "added_itl_ms": o_itl - d_itl,
            "tokens_per_s_runs": {k: [round(x["tokens_per_s"], 1) for x in v] for k, v in by.items()},
        }
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps(
            {"when": when, "engine_start_s": engine_start, "summary": summary, "rounds": rows}, indent=2
        )
    )
    lines = [
        f"SmolLM2-135M (float32, eager) on vLLM CPU, streaming {args.output_tokens} tokens per request, "
        f"medians of {args.rounds} interleaved runs each, measured {when}; engine start {engine_start:.0f} s.",
        "TTFT and inter-token gap p50: over every request and every gap of those runs.",
        "",
        (
            "| streams | tokens/s direct | via Offload | ratio | TTFT p50 ms direct | via Offload | added | "
            "inter-token gap p50 ms direct | via Offload | added |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, s in summary.items():
        lines.append(
            f"| {c} | {s['direct_tokens_per_s']:.1f} | {s['offload_tokens_per_s']:.1f} | {s['ratio']:.3f} | "
            f"{s['direct_ttft_p50_ms']:.1f} | {s['offload_ttft_p50_ms']:.1f} | {s['added_ttft_ms']:+.1f} | "
            f"{s['direct_itl_p50_ms']:.2f} | {s['offload_itl_p50_ms']:.2f} | {s['added_itl_ms']:+.2f} |"
        )
    for c, s in summary.items():
        runs = s["tokens_per_s_runs"]
        lines.append(
            f"\nTokens/s per run at {c} stream{'s' if c != 1 else ''}: direct {runs['direct']}, "
            f"via Offload {runs['offload']}."
        )
    print(readme.publish("real_engine", args.out, lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
