"""Streams broken once each, mid-answer, and resumed on the other replica: the gap at the splice.

    python -m benchmarks.resume [--streams 200] [--concurrency 16] [--tokens 64] [--itl 0.01]

Two engine simulators behind one gateway (resume is on: two replicas). Every stream carries its own
fault: its engine resets the connection after a random number of tokens, K in 1..tokens-1 (the
simulator's ``reset_after``, for the original request only, so the continuation does not break again).
The client sees one stream; this reports the gap between token K and K+1 (the splice: the break, a
new connection, the continuation's first token) against the other inter-token gaps of the same
streams, the share of streams completed whole, and the gateway's own measure of the gap
(``offload_stream_resume_gap_seconds``). Writes ``benchmarks/results/resume.{json,md}`` (and the
README's section, for a standard run). The gateway's circuit breakers are set not to trip: every
stream breaks on purpose, which would otherwise take both replicas out after a few.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from benchmarks import peers, readme
from benchmarks.client import RequestRecord, chat_body, json_headers, send
from benchmarks.peers import Server, wait_all
from benchmarks.stats import distribution
from tests.integration.servers import GatewayProcess

RESULTS = readme.RESULTS


def sim(workdir: Path, name: str, args: argparse.Namespace) -> Server:
    return peers.sim_server(workdir, "chat", itl=args.itl, output_tokens=args.tokens, name=name)


async def run(base_url: str, args: argparse.Namespace) -> list[tuple[int, RequestRecord]]:
    """Every stream with its break point K."""
    rng = random.Random(args.seed)
    jobs = [rng.randint(1, args.tokens - 1) for _ in range(args.streams)]
    done: list[tuple[int, RequestRecord]] = []
    t0 = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = list(enumerate(jobs))

        async def worker() -> None:
            while queue:
                i, k = queue.pop()
                # The simulator counts events, its role event first: K tokens are K + 1 events.
                fault = {"sim": {"reset_after": k + 1, "fault_scope": "original"}}
                body = chat_body("chat", f"Story {i}.", args.tokens, True, True, fault)
                record = await send(
                    session,
                    base_url + "/v1/chat/completions",
                    body,
                    stream=True,
                    embeddings=False,
                    headers=json_headers({}),
                    timeout=120,
                    record=RequestRecord(start=0.0),
                    t0=t0,
                )
                done.append((k, record))

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return done


def gateway_gap(metrics: str) -> dict[str, float]:
    """The gateway's resume-gap histogram: count and mean."""
    total = re.search(r"^offload_stream_resume_gap_seconds_sum\{[^}]*\} (\S+)$", metrics, re.M)
    count = re.search(r"^offload_stream_resume_gap_seconds_count\{[^}]*\} (\S+)$", metrics, re.M)
    if not (total and count) or float(count.group(1)) == 0:
        return {"count": 0, "mean": float("nan")}
    return {"count": float(count.group(1)), "mean": float(total.group(1)) / float(count.group(1))}


def render(report: dict[str, Any]) -> list[str]:
    a, splice, other = report["args"], report["splice_gap"], report["other_gaps"]
    return [
        f"Two engine simulators ({a['tokens']} tokens a stream, {a['itl'] * 1000:.0f} ms apart) behind one"
        f" gateway; {a['streams']} streams, {a['concurrency']} at a time, each broken once by a connection"
        " reset after a random number of tokens and resumed on the other replica.",
        "",
        "| | p50 | p99 | max |",
        "| --- | ---: | ---: | ---: |",
        f"| gap at the splice (client) | {splice['p50'] * 1000:.1f} ms | {splice['p99'] * 1000:.1f} ms"
        f" | {splice['max'] * 1000:.1f} ms |",
        f"| other inter-token gaps | {other['p50'] * 1000:.1f} ms | {other['p99'] * 1000:.1f} ms"
        f" | {other['max'] * 1000:.1f} ms |",
        "",
        f"Completed whole: {report['completed']} of {a['streams']} ({report['completed_share']:.1%}); text and"
        f" token count as unbroken: {report['exact']} of {a['streams']}. The gateway's own measure of the gap"
        f" (break to the continuation's first token): mean {report['gateway_gap']['mean'] * 1000:.1f} ms over"
        f" {report['gateway_gap']['count']:.0f} resumes.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resume", description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--itl", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "resume")
    args = parser.parse_args(argv)
    if not (1 <= args.streams <= 10_000 and 1 <= args.concurrency <= 256 and 2 <= args.tokens <= 4096):
        parser.error("--streams 1..10000, --concurrency 1..256, --tokens 2..4096")

    work = Path(tempfile.mkdtemp(prefix="offload-resume-"))
    replicas = [sim(work, f"sim-{i}", args).start() for i in range(2)]
    gw: GatewayProcess | None = None
    try:
        wait_all(replicas)
        engines = [{"url": r.base_url, "served_name": "chat"} for r in replicas]
        env = {
            "OFFLOAD_LOG__ACCESS": "false",
            # Every stream breaks here, by design: the breakers would rightly take both replicas out
            # after a few breaks in a row. This measures the splice, so they are told to look away.
            "OFFLOAD_HEALTH__FAILURE_THRESHOLD": "1000000",
        }
        gw = GatewayProcess(work, [{"name": "chat", "task": "chat", "engines": engines}], env)
        gw.start()
        done = asyncio.run(run(gw.base_url, args))
        metrics = httpx.get(gw.base_url + "/metrics").text
    finally:
        if gw is not None:
            gw.stop()
        for r in replicas:
            r.stop()

    splice: list[float] = []
    other: list[float] = []
    for k, record in done:
        if record.ok and len(record.itl) >= k:
            splice.append(record.itl[k - 1])  # the gap between token K and K + 1
            other += record.itl[: k - 1] + record.itl[k:]
    completed = sum(1 for _, r in done if r.ok)
    exact = sum(1 for _, r in done if r.ok and r.output_tokens == args.tokens and r.events >= args.tokens)
    report = {
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "completed": completed,
        "completed_share": completed / len(done),
        "exact": exact,
        "errors": sorted({r.error or "" for _, r in done if not r.ok}),
        "splice_gap": distribution(splice),
        "other_gaps": distribution(other),
        "gateway_gap": gateway_gap(metrics),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    print(readme.publish("resume", args.out, render(report)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
