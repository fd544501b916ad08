"""Offload's own cost: CPU per request and per stream event of the gateway's Python, with the network
parts taken out.

    python -m benchmarks.own_cost [--requests 5000] [--streams 2000]

The real ASGI app (routing, validation, dispatch, failover, metrics, access middleware, SSE parsing
and framing) is called directly, without a server, and its engine client answers from memory: a
32-token completion, or a 32-token stream of vLLM-shaped events. What is left out is what any
Python gateway on this stack pays as well: uvicorn, aiohttp and the sockets. The overhead benchmark
(``benchmarks.overhead``) measures the whole; this one says how much of it is Offload's own work, so
a change to that work can be judged without the machine's noise. Writes
``benchmarks/results/own_cost.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import uvloop
from litestar import Litestar

from gateway.app import create_app
from gateway.config import parse_config
from gateway.logging import configure_logging
from gateway.settings import HealthSettings, LogSettings, Settings
from gateway.upstream import EventStream, ProbeResult, Upstream, UpstreamReply

RESULTS = Path(__file__).parent / "results"
TOKENS = 32
PROMPT = {"model": "chat", "messages": [{"role": "user", "content": "word " * 128}], "max_tokens": TOKENS}
_CONFIG = """
models:
  - name: chat
    task: chat
    engine: {url: "http://127.0.0.1:9", served_name: engine}
"""


def _event(finish: str | None, content: str) -> bytes:
    return (
        b"data: "
        + orjson.dumps(
            {
                "id": "chatcmpl-0123456789abcdef",
                "object": "chat.completion.chunk",
                "created": 1795783500,
                "model": "engine",
                "choices": [
                    {"index": 0, "delta": {"content": content}, "logprobs": None, "finish_reason": finish}
                ],
            }
        )
        + b"\n\n"
    )


# What vLLM sends for a 32-token stream that asked for usage: one read per event, as at low load.
STREAM = [_event(None, " word") for _ in range(TOKENS - 1)] + [
    _event("length", " word"),
    b'data: {"id":"chatcmpl-0123456789abcdef","object":"chat.completion.chunk","created":1795783500,'
    b'"model":"engine","choices":[],'
    b'"usage":{"prompt_tokens":130,"completion_tokens":32,"total_tokens":162}}\n\n',
    b"data: [DONE]\n\n",
]
ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-0123456789abcdef",
        "object": "chat.completion",
        "created": 1795783500,
        "model": "engine",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " word" * TOKENS},
                "logprobs": None,
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 130, "completion_tokens": TOKENS, "total_tokens": 130 + TOKENS},
    }
)


class _Content:
    def __init__(self) -> None:
        self._reads = iter(STREAM)

    async def readany(self) -> bytes:
        return next(self._reads, b"")


class _Response:
    """The part of an aiohttp response that :class:`EventStream` reads."""

    def __init__(self) -> None:
        self.content = _Content()

    def close(self) -> None: ...

    def release(self) -> None: ...


class MemoryUpstream(Upstream):
    """An engine client that answers from memory, instantly and always the same."""

    async def post_json(self, base_url: str, path: str, body: bytes) -> UpstreamReply:
        return UpstreamReply(200, ANSWER)

    async def open_stream(self, base_url: str, path: str, body: bytes) -> UpstreamReply | EventStream:
        return EventStream(_Response(), idle_timeout=300, keepalive=15)  # type: ignore[arg-type]

    async def probe(self, base_url: str, timeout: float) -> ProbeResult:
        return ProbeResult.OK


def _scope(body: bytes) -> dict[str, Any]:
    headers = [
        (b"host", b"gateway"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


def _caller(app: Callable[..., Awaitable[None]], stream: bool) -> Callable[[], Awaitable[bytes]]:
    """One request through the app; returns the response body (checked by the caller)."""
    body = orjson.dumps({**PROMPT, "stream": stream})
    never = asyncio.Event()

    async def call() -> bytes:
        request: list[dict[str, Any]] = [{"type": "http.request", "body": body, "more_body": False}]
        out: list[bytes] = []
        status = 0

        async def receive() -> dict[str, Any]:
            if request:
                return request.pop()
            await never.wait()  # the client never leaves
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            else:
                out.append(message.get("body", b""))

        await app(_scope(body), receive, send)
        if status != 200:
            raise RuntimeError(f"the gateway answered {status}: {b''.join(out)[:300]!r}")
        return b"".join(out)

    return call


async def _per_call(call: Callable[[], Awaitable[bytes]], count: int, rounds: int) -> list[float]:
    """CPU seconds per call, for each of ``rounds`` rounds of ``count`` calls (after a warm-up)."""
    for _ in range(min(count, 200)):
        await call()
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(count):
            await call()
        samples.append((time.process_time() - started) / count)
    return samples


def _problem(answer: dict[str, Any], events: list[bytes]) -> str | None:
    """What is wrong with the gateway's answers, if anything: only right answers are timed."""
    if answer.get("model") != "chat" or answer.get("usage", {}).get("completion_tokens") != TOKENS:
        return f"unexpected answer: {answer}"
    if events[-2:] != [b"data: [DONE]", b""] or len(events) != TOKENS + 2 or b'"error"' in b"".join(events):
        return f"unexpected stream: {events[:2]} ... {events[-3:]}"
    return None


async def measure(requests: int, streams: int, rounds: int = 5) -> dict[str, Any]:
    """Median CPU microseconds per non-streaming request, per stream, and per stream event."""
    settings = Settings(
        health=HealthSettings(probe_interval=600, scrape_interval=0, dns_interval=0),
        log=LogSettings(access=False),
    )
    app = create_app(settings, parse_config(_CONFIG), upstream=MemoryUpstream(settings.upstream))
    litestar = app.app  # the front door hands lifespan to Litestar; run it here without a server
    assert isinstance(litestar, Litestar)
    async with litestar.lifespan():  # (raised inside, an error would reach us wrapped in a group)
        complete, stream = _caller(app, False), _caller(app, True)
        problem = _problem(orjson.loads(await complete()), (await stream()).split(b"\n\n"))
        if problem is None:
            per_request = await _per_call(complete, max(1, requests // rounds), rounds)
            per_stream = await _per_call(stream, max(1, streams // rounds), rounds)
    if problem is not None:
        raise RuntimeError(problem)
    request_us = statistics.median(per_request) * 1e6
    stream_us = statistics.median(per_stream) * 1e6
    return {
        "request_us": round(request_us, 1),
        "stream_us": round(stream_us, 1),
        # a stream's cost beyond a request's, over its events (32 tokens and the usage chunk)
        "event_us": round((stream_us - request_us) / (TOKENS + 1), 2),
        "rounds": {
            "request_us": [round(s * 1e6, 1) for s in per_request],
            "stream_us": [round(s * 1e6, 1) for s in per_stream],
        },
        "requests": requests,
        "streams": streams,
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def render(result: dict[str, Any]) -> str:
    return (
        f"# Offload's own cost (`python -m benchmarks.own_cost`, {result['when']})\n\n"
        "The gateway's ASGI app called directly, its engine client answering from memory: no server, no\n"
        "HTTP client, no sockets. Medians of the rounds' CPU time per call (Python "
        f"{result['python']}; 128-word prompt, {TOKENS}-token answers).\n\n"
        "| per | CPU µs | rounds |\n| --- | --- | --- |\n"
        f"| non-streaming request | {result['request_us']} | {result['rounds']['request_us']} |\n"
        f"| stream of {TOKENS} tokens | {result['stream_us']} | {result['rounds']['stream_us']} |\n"
        f"| stream event, beyond a request's cost | {result['event_us']} | |\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.own_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=5000, help="non-streaming requests (in 5 rounds)")
    p.add_argument("--streams", type=int, default=2000, help="streams (in 5 rounds)")
    p.add_argument("--out", default="own_cost", help="results name under benchmarks/results")
    args = p.parse_args(argv)
    configure_logging(LogSettings(level="warning", access=False))
    result = uvloop.run(measure(args.requests, args.streams))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.out}.md").write_text(render(result))
    print(
        f"Offload's own CPU: {result['request_us']} µs per request, {result['stream_us']} µs per "
        f"{TOKENS}-token stream, {result['event_us']} µs per event -> {RESULTS / args.out}.json, .md"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
