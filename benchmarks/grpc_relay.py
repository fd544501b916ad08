"""The gRPC door's relay overhead against HTTP's, side by side in one run, in front of the engine
simulator.

    python -m benchmarks.grpc_relay [--streams 300] [--rounds 2]

One simulator (32-token answers, a token every 10 ms, no TTFT delay) and one gateway serving both
doors. For 10 and 64 concurrent streams, the same streamed chat is sent three ways, interleaved
round by round: straight to the simulator (the floor), through the gateway's HTTP/SSE door, and
through its gRPC door. Reported per cell: the median and p90 time to the first token, the TTFT the
gateway adds (median minus the floor's median), and the gateway's CPU per stream (its process's
CPU time over the cell, from ``/proc``, divided by the streams). The clients run in this process
(aiohttp for HTTP, ``grpc.aio`` for gRPC). Writes ``benchmarks/results/grpc_relay.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson
import yaml

from benchmarks import peers
from benchmarks.procstat import cpu_seconds

RESULTS = Path(__file__).parent / "results"
TOKENS = 32
ITL = 0.01
CONCURRENCY = (10, 64)
MODES = ("direct", "http", "grpc")
PROMPT = [{"role": "user", "content": "word " * 64}]


def _gateway(workdir: Path, engine_url: str) -> tuple[peers.Server, int]:
    """``python -m gateway serve`` with both doors open, production defaults otherwise."""
    port, grpc_port = peers.free_port(), peers.free_port()
    config = workdir / "offload.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {"name": "chat", "task": "chat", "engine": {"url": engine_url, "served_name": "sim"}}
                ]
            }
        )
    )
    env = {
        "OFFLOAD_CONFIG": str(config),
        "OFFLOAD_LOG__ACCESS": "false",
        "OFFLOAD_SERVER__GRPC_PORT": str(grpc_port),
        "PYTHONPATH": str(peers.ROOT),
    }
    argv = [sys.executable, "-m", "gateway", "serve", "--port", str(port)]
    return peers.Server("offload", argv, port, "/ready?all=true", workdir / "offload.log", env=env), grpc_port


async def _http_stream(session: aiohttp.ClientSession, url: str, model: str) -> float:
    """One SSE stream; seconds to its first token (the whole stream is read)."""
    body = {"model": model, "messages": PROMPT, "max_tokens": TOKENS, "stream": True}
    start = time.perf_counter()
    first = 0.0
    async with session.post(url, json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if not first and line.startswith(b"data: {") and b'"content":"' in line:
                event = orjson.loads(line[6:])
                if event["choices"] and event["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - start
    assert first, "a stream without tokens"
    return first


async def _grpc_stream(stub: Any, request: Any) -> float:
    start = time.perf_counter()
    first = 0.0
    async for chunk in stub.Chat(request):
        if not first and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
    assert first, "a stream without tokens"
    return first


async def _cell(
    one: Callable[[], Awaitable[float]], streams: int, concurrency: int
) -> tuple[list[float], int]:
    """``streams`` streams, ``concurrency`` at a time: their TTFTs and the failures."""
    ttfts: list[float] = []
    errors = 0
    left = streams

    async def worker() -> None:
        nonlocal left, errors
        while left > 0:
            left -= 1
            try:
                ttfts.append(await one())
            except Exception as exc:
                errors += 1
                if errors == 1:
                    print(f"  first failure: {exc!r}", flush=True)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ttfts, errors


async def _run(
    sim: peers.Server, gw: peers.Server, grpc_port: int, streams: int, rounds: int
) -> list[dict[str, Any]]:
    from gateway.rpc.generated import offload_pb2 as pb
    from gateway.rpc.generated import offload_pb2_grpc as pb_grpc

    request = pb.ChatRequest(
        model="chat",
        messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in PROMPT],
        max_tokens=TOKENS,
    )
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    samples: dict[tuple[int, str], tuple[list[float], float, int]] = {}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
        await channel.channel_ready()
        stub = pb_grpc.OffloadStub(channel)
        clients: dict[str, Callable[[], Awaitable[float]]] = {
            "direct": lambda: _http_stream(session, sim.base_url + "/v1/chat/completions", "sim"),
            "http": lambda: _http_stream(session, gw.base_url + "/v1/chat/completions", "chat"),
            "grpc": lambda: _grpc_stream(stub, request),
        }
        for mode in MODES:  # warm-up: connections, code paths
            await _cell(clients[mode], 20, 10)
        for round_ in range(rounds):
            for concurrency in CONCURRENCY:
                order = MODES if round_ % 2 == 0 else tuple(reversed(MODES))
                for mode in order:
                    cpu = cpu_seconds(gw.pid)
                    ttfts, errors = await _cell(clients[mode], streams, concurrency)
                    spent = cpu_seconds(gw.pid) - cpu
                    before = samples.get((concurrency, mode), ([], 0.0, 0))
                    samples[(concurrency, mode)] = (before[0] + ttfts, before[1] + spent, before[2] + errors)
                    print(f"  round {round_ + 1} c={concurrency} {mode}: {len(ttfts)} streams", flush=True)
        await channel.close()
    cells = []
    for concurrency in CONCURRENCY:
        floor = statistics.median(samples[(concurrency, "direct")][0])
        for mode in MODES:
            ttfts, spent, errors = samples[(concurrency, mode)]
            median = statistics.median(ttfts)
            cells.append(
                {
                    "concurrency": concurrency,
                    "mode": mode,
                    "streams": len(ttfts),
                    "errors": errors,
                    "ttft_ms_median": round(median * 1000, 2),
                    "ttft_ms_p90": round(statistics.quantiles(ttfts, n=10)[-1] * 1000, 2),
                    "added_ttft_ms": None if mode == "direct" else round((median - floor) * 1000, 2),
                    "gateway_cpu_ms_per_stream": None
                    if mode == "direct"
                    else round(spent / len(ttfts) * 1000, 3),
                }
            )
    return cells


def render(result: dict[str, Any]) -> str:
    """The Markdown table of a run."""
    lines = [
        "# gRPC vs HTTP relay overhead",
        "",
        f"Engine simulator, {TOKENS}-token streams ({ITL * 1000:.0f} ms between tokens), "
        f"{result['streams_per_cell']} streams per cell and round, {result['rounds']} rounds interleaved; "
        f"{result['machine']['cpus']} CPUs, Python {result['machine']['python']}. "
        "Added TTFT: the median time to first token minus the direct (no gateway) median. "
        "Gateway CPU: the gateway process's CPU time per stream.",
        "",
        "| concurrent streams | door | median TTFT ms | p90 TTFT ms | added TTFT ms | gateway CPU ms/stream | errors |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for c in result["cells"]:
        added = "-" if c["added_ttft_ms"] is None else f"{c['added_ttft_ms']:.2f}"
        cpu = "-" if c["gateway_cpu_ms_per_stream"] is None else f"{c['gateway_cpu_ms_per_stream']:.2f}"
        lines.append(
            f"| {c['concurrency']} | {c['mode']} | {c['ttft_ms_median']:.2f} | {c['ttft_ms_p90']:.2f} | {added} "
            f"| {cpu} | {c['errors']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=300, help="streams per cell and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="grpc_relay")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="offload-grpc-relay-") as tmp:
        workdir = Path(tmp)
        sim = peers.sim_server(workdir, "sim", itl=ITL, output_tokens=TOKENS).start()
        gw, grpc_port = _gateway(workdir, sim.base_url)
        gw.start()
        try:
            peers.wait_all([sim, gw])
            cells = asyncio.run(_run(sim, gw, grpc_port, args.streams, args.rounds))
        finally:
            gw.stop()
            sim.stop()
    result = {
        "benchmark": "grpc_relay",
        "streams_per_cell": args.streams,
        "rounds": args.rounds,
        "tokens": TOKENS,
        "itl_s": ITL,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "cells": cells,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.out}.md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
