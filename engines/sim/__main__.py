"""``python -m engines.sim --host 127.0.0.1 --port 8201 --model chat --ttft 0.05 --itl 0.01``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import uvicorn

from engines.sim.app import create_sim_app
from engines.sim.config import PARSERS, KnobError, Knobs, SimConfig, parse_knob
from engines.sim.faults import QUIET_RESETS

_KNOB_HELP = {
    "ttft": "seconds before the first token",
    "itl": "seconds between tokens",
    "output_tokens": "tokens generated before a natural stop (capped by max_tokens)",
    "error_rate": "probability (0..1) that a request fails with --error-status",
    "error_status": "HTTP status of simulated errors",
    "stall_after": "go silent after N SSE events (for --stall-s seconds)",
    "stall_s": "length of a stall in seconds",
    "reset_after": "drop the connection after N SSE events",
    "close_after": "end the stream cleanly, without [DONE], after N SSE events",
    "fault_scope": "requests the stall/reset/close faults hit: all, original (not continuations), continuation",
    "health_delay": "seconds before /health answers",
}


def parse_args(argv: Sequence[str] | None = None) -> tuple[SimConfig, argparse.Namespace]:
    """The simulator's configuration from command-line flags."""
    parser = argparse.ArgumentParser(
        prog="python -m engines.sim",
        description="Engine SIMULATOR (vLLM-shaped OpenAI server, no model) for tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--model", default="sim", help="served model name")
    parser.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        help="served names (like vLLM); replaces --model, the first labels metrics",
    )
    parser.add_argument(
        "--max-running", type=int, default=0, help="concurrent running requests (0: no limit)"
    )
    parser.add_argument("--embedding-dims", type=int, default=384)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--kv-cache-tokens", type=int, default=65536)
    parser.add_argument(
        "--prefix-cache-tokens",
        type=int,
        default=0,
        help="prefix cache size in tokens, an LRU of prompt blocks; a hit shortens the TTFT by the "
        "cached share of the prompt (default: 0, off)",
    )
    parser.add_argument(
        "--prefix-block-tokens", type=int, default=16, help="tokens per prefix-cache block (default: 16)"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--log-level", default="warning")
    defaults = Knobs()
    for name in PARSERS:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=getattr(defaults, name),
            help=f"{_KNOB_HELP[name]} (default: {getattr(defaults, name)})",
        )
    args = parser.parse_args(argv)
    try:
        knobs = Knobs(**{name: parse_knob(name, getattr(args, name)) for name in PARSERS})
    except KnobError as exc:
        parser.error(str(exc))
    if args.prefix_cache_tokens < 0 or args.prefix_block_tokens < 1:
        parser.error("--prefix-cache-tokens must be >= 0 and --prefix-block-tokens >= 1")
    names = tuple(args.served_model_name or (args.model,))
    config = SimConfig(
        model=names[0],
        aliases=names[1:],
        max_running=args.max_running,
        embedding_dims=args.embedding_dims,
        max_model_len=args.max_model_len,
        kv_cache_tokens=args.kv_cache_tokens,
        prefix_cache_tokens=args.prefix_cache_tokens,
        prefix_block_tokens=args.prefix_block_tokens,
        seed=args.seed,
        knobs=knobs,
    )
    return config, args


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the simulator with uvicorn until interrupted."""
    config, args = parse_args(argv)
    logging.getLogger("uvicorn.error").addFilter(QUIET_RESETS)
    uvicorn.run(
        create_sim_app(config),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        loop="auto",
        http="auto",
    )


if __name__ == "__main__":
    main()
