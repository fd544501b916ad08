"""Load generator for OpenAI-compatible servers (the gateway, vLLM, the engine simulator).

    python -m benchmarks.load --base-url http://127.0.0.1:8000 --model chat --concurrency 16 --requests 200
    python -m benchmarks.load --base-url ... --model chat --rate 20 --duration 30 --out r.json --plot r.png

Fixed concurrency (closed loop) or Poisson arrivals at ``--rate`` (open loop, optionally capped by
``--concurrency``); streaming or not; chat or embeddings. Every run is bounded in requests and time
and only ever targets loopback addresses. Reuse it from Python: ``await run_load(LoadConfig(...))``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import orjson

from benchmarks.runner import MAX_DURATION, MAX_REQUESTS, Runner
from benchmarks.stats import LoadResult, format_table


@dataclass(frozen=True, slots=True)
class Dist:
    """A token count: fixed (``low == high``) or uniform over ``low..high`` inclusive."""

    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> Dist:
        """``"128"`` or ``"64-256"``."""
        low, _, high = text.partition("-")
        dist = cls(int(low), int(high or low))
        if dist.low < 1 or dist.high < dist.low:
            raise ValueError(f"bad token range {text!r}: want N or LOW-HIGH with 1 <= LOW <= HIGH")
        return dist

    def sample(self, rng: random.Random) -> int:
        return self.low if self.low == self.high else rng.randint(self.low, self.high)


@dataclass(slots=True)
class LoadConfig:
    """One load run. At least one of ``requests`` and ``duration`` bounds it; both are capped."""

    base_url: str
    model: str
    kind: Literal["chat", "embeddings"] = "chat"
    stream: bool = True
    concurrency: int | None = None
    """Closed loop: requests in flight (default 8). With ``rate``: the cap on requests in flight."""
    rate: float | None = None
    """Poisson arrivals per second (open loop)."""
    requests: int | None = None
    duration: float | None = None
    prompt_tokens: Dist = field(default_factory=lambda: Dist(128, 128))
    output_tokens: Dist = field(default_factory=lambda: Dist(64, 64))
    ignore_eos: bool = True
    """Send vLLM's ``ignore_eos`` so that every answer has exactly the sampled output length."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 120.0
    """Per request, seconds."""
    seed: int = 0
    progress: bool = False
    progress_interval: float = 1.0

    def validate(self) -> None:
        """Raise ValueError for a run that is unbounded, off-loopback or nonsensical."""
        ensure_loopback(self.base_url)
        if self.requests is None and self.duration is None:
            raise ValueError("give --requests or --duration (or both)")
        if self.requests is not None and not 1 <= self.requests <= MAX_REQUESTS:
            raise ValueError(f"requests must be 1..{MAX_REQUESTS}")
        if self.duration is not None and not 0 < self.duration <= MAX_DURATION:
            raise ValueError(f"duration must be in (0, {MAX_DURATION}] seconds")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be > 0")
        if self.timeout <= 0:
            raise ValueError("timeout must be > 0")


def ensure_loopback(base_url: str) -> None:
    """Refuse any target that is not a loopback address (127.0.0.0/8, ::1, localhost)."""
    host = urlsplit(base_url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"refusing to send load to {host or base_url!r}: loopback addresses only")


async def run_load(config: LoadConfig) -> LoadResult:
    """Run the load described by ``config`` and return every request's measurements."""
    config.validate()
    connections = config.concurrency or (0 if config.rate else 8)
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0)
    result = LoadResult(config=_describe(config), started_at=time.time())
    async with aiohttp.ClientSession(
        connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
    ) as session:
        run = Runner(config, session)
        reporter = asyncio.create_task(run.report_progress()) if config.progress else None
        try:
            if config.rate:
                await run.open_loop(config.rate, config.concurrency)
            else:
                await run.closed_loop(config.concurrency or 8)
        finally:
            if reporter is not None:
                reporter.cancel()
        result.elapsed = time.perf_counter() - run.t0  # issuing window and last answer included
        result.records = run.records
    return result


def _describe(config: LoadConfig) -> dict[str, Any]:
    described = asdict(config)
    described["stream"] = config.stream and config.kind == "chat"
    if config.concurrency is None and not config.rate:
        described["concurrency"] = 8
    described["headers"] = {
        k: ("***" if k.lower() == "authorization" else v) for k, v in config.headers.items()
    }
    return described


def parse_args(argv: Sequence[str] | None = None) -> tuple[LoadConfig, argparse.Namespace]:
    """A :class:`LoadConfig` (and the output options) from command-line flags."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000 (loopback only)")
    p.add_argument("--model", required=True)
    p.add_argument("--kind", choices=("chat", "embeddings"), default="chat")
    p.add_argument("--no-stream", dest="stream", action="store_false", help="non-streaming chat")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="requests in flight (default 8); with --rate: the cap on requests in flight",
    )
    p.add_argument("--rate", type=float, default=None, help="Poisson arrivals per second (open loop)")
    p.add_argument("--requests", type=int, default=None, help="number of requests")
    p.add_argument("--duration", type=float, default=None, help="seconds to keep issuing requests")
    p.add_argument("--prompt-tokens", type=Dist.parse, default=Dist(128, 128), help="N or LOW-HIGH")
    p.add_argument("--output-tokens", type=Dist.parse, default=Dist(64, 64), help="N or LOW-HIGH")
    p.add_argument(
        "--no-ignore-eos",
        dest="ignore_eos",
        action="store_false",
        help="do not send vLLM's ignore_eos (answers may be shorter than --output-tokens)",
    )
    p.add_argument("--extra-body", type=orjson.loads, default={}, help="JSON object merged into each body")
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="extra request header (repeatable), e.g. 'X-Sim-TTFT: 0.05'",
    )
    p.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
    p.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    p.add_argument("--no-records", action="store_true", help="JSON without the per-request records")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG (needs matplotlib)")
    args = p.parse_args(argv)
    if not isinstance(args.extra_body, dict):
        p.error("--extra-body must be a JSON object")
    headers = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            p.error(f"--header wants NAME:VALUE, got {item!r}")
        headers[name.strip()] = value.strip()
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    config = LoadConfig(
        base_url=args.base_url,
        model=args.model,
        kind=args.kind,
        stream=args.stream,
        concurrency=args.concurrency,
        rate=args.rate,
        requests=args.requests,
        duration=args.duration,
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        ignore_eos=args.ignore_eos,
        extra_body=args.extra_body,
        headers=headers,
        timeout=args.timeout,
        seed=args.seed,
        progress=not args.quiet,
    )
    try:
        config.validate()
    except ValueError as exc:
        p.error(str(exc))
    return config, args


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the summary table, write the JSON and the plot. Exit 1 if every request failed."""
    config, args = parse_args(argv)
    result = asyncio.run(run_load(config))
    print(format_table(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(
            orjson.dumps(
                result.to_json(include_records=not args.no_records),
                option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY,
            )
        )
        print(f"wrote {args.out}")
    if args.plot is not None:
        from benchmarks.plot import plot  # matplotlib is optional

        if plot(result, args.plot):
            print(f"wrote {args.plot}")
        else:
            print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
    return 0 if result.ok or not result.records else 1


if __name__ == "__main__":
    sys.exit(main())
