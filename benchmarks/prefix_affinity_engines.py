"""The two replicas of ``benchmarks.prefix_affinity``: engine simulators with their prefix-cache knob,
or real vLLM CPU engines with a KV cache sized in prompt prefixes."""

from __future__ import annotations

import argparse
import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

from benchmarks.peers import sim_server, wait_all
from engines.sim.prefix_cache import CHARS_PER_TOKEN
from tests.integration.servers import free_port

VLLM_BLOCK = 128  # vLLM's CPU default block size (tokens)
VLLM_TOKENS_PER_WORD = 1.1  # SmolLM2 on this vocabulary: 900 words -> 994 prompt tokens (measured)
_WORDS = (
    *("river", "stone", "market", "engine", "lantern", "harbor", "meadow", "signal", "copper", "garden"),
    *("winter", "orbit", "canvas", "thunder", "pilot", "velvet", "anchor", "summit", "ledger", "prism"),
    *("falcon", "ember", "quarry", "tide", "beacon", "saddle"),
)


def group_prefix(batch: str, group: int, words: int) -> str:
    """A long shared context, unique to (batch, group)."""
    rng = random.Random(f"{batch}/{group}")
    body = " ".join(rng.choice(_WORDS) for _ in range(words))
    return f"Reference document {batch}-{group}. Read it carefully.\n{body}\n"


@contextlib.contextmanager
def sim_engines(work: Path, args: argparse.Namespace) -> Iterator[tuple[list[str], str]]:
    """Two simulators whose prefix caches hold ``cache_prefixes`` prompts; their URLs and a description."""
    prefix_tokens = len(group_prefix("x", 0, args.prefix_words)) // CHARS_PER_TOKEN
    cache = args.cache_prefixes * prefix_tokens
    extra = ["--prefix-cache-tokens", str(cache), "--prefix-block-tokens", str(args.sim_block_tokens)]
    extra += ["--max-running", str(args.sim_max_running)]
    sims = [
        sim_server(
            work, f"replica{i}", itl=0.005, output_tokens=args.max_tokens, ttft=args.sim_ttft, extra=extra
        )
        for i in range(2)
    ]
    try:
        wait_all([s.start() for s in sims])
        yield (
            [s.base_url for s in sims],
            f"2 engine simulators (prefix cache {cache} tokens = {args.cache_prefixes} prefixes of ~{prefix_tokens}, "
            f"blocks of {args.sim_block_tokens}; TTFT {args.sim_ttft * 1000:.0f} ms uncached, shorter by the cached "
            f"share; {args.sim_max_running} running at once)",
        )
    finally:
        for s in sims:
            s.stop()


@contextlib.contextmanager
def vllm_engines(work: Path, args: argparse.Namespace) -> Iterator[tuple[list[str], str]]:
    """Two vLLM CPU engines (SmolLM2) whose KV caches hold ``cache_prefixes`` prompts."""
    from engines.supervisor import Supervisor
    from gateway.config import EngineConfig, LocalEngine, ModelConfig, OffloadConfig
    from gateway.local_engines import engine_specs
    from gateway.settings import Settings

    blocks_per_prefix = int(args.prefix_words * VLLM_TOKENS_PER_WORD) // VLLM_BLOCK + 1
    blocks = args.cache_prefixes * blocks_per_prefix if args.cache_prefixes else 0
    extra = ("--num-gpu-blocks-override", str(blocks)) if blocks else ()
    config = OffloadConfig(
        models=tuple(
            ModelConfig(
                name=f"replica{i}",
                task="chat",
                engine=EngineConfig(
                    local=LocalEngine(
                        model="smollm2",
                        port=free_port(),
                        dtype="float32",
                        max_model_len=4096,
                        kv_cache_gib=1,
                        extra_args=extra,
                    )
                ),
            )
            for i in range(2)
        )
    )
    models_dir = Settings().models_dir
    supervisor = Supervisor(engine_specs(config, models_dir), models_dir, work / "logs")
    try:
        supervisor.prepare_models()
        supervisor.start_all()
        supervisor.wait_all()
        size = f"{blocks} KV blocks of {VLLM_BLOCK} tokens" if blocks else "KV cache 1 GiB"
        yield (
            [e.spec.base_url for e in supervisor.engines],
            f"2 vLLM CPU replicas (SmolLM2 float32, {size} each, prefix caching on)",
        )
    finally:
        supervisor.stop_all()
