"""Issuing the requests of a load run: closed loop (fixed concurrency) or open loop (Poisson)."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import TYPE_CHECKING

import aiohttp

from benchmarks.client import (
    CHAT_PATH,
    EMBEDDINGS_PATH,
    RequestRecord,
    chat_body,
    embeddings_body,
    json_headers,
    send,
)

if TYPE_CHECKING:
    from benchmarks.load import LoadConfig

MAX_REQUESTS = 1_000_000
MAX_DURATION = 3600.0
_WORDS = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
)


def make_prompt(tokens: int, index: int, rng: random.Random) -> str:
    """About ``tokens`` tokens of words, starting with the request index (defeats prefix caching)."""
    return f"{index} " + " ".join(rng.choices(_WORDS, k=max(0, tokens - 1)))


class Runner:
    """Issues requests within the bounds and collects their records."""

    def __init__(self, config: LoadConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self.rng = random.Random(config.seed)
        self.records: list[RequestRecord] = []
        self.issued = 0
        self.in_flight = 0
        self.t0 = time.perf_counter()
        limit = config.duration if config.duration is not None else MAX_DURATION
        self.deadline = self.t0 + limit
        self.max_requests = config.requests if config.requests is not None else MAX_REQUESTS
        path = EMBEDDINGS_PATH if config.kind == "embeddings" else CHAT_PATH
        self.url = config.base_url.rstrip("/") + path
        self.headers = json_headers(config.headers)

    def claim(self) -> int | None:
        """The index of the next request, or None once the count or the time is used up."""
        if self.issued >= self.max_requests or time.perf_counter() >= self.deadline:
            return None
        self.issued += 1
        return self.issued - 1

    async def one(self, index: int) -> None:
        config = self.config
        prompt = make_prompt(config.prompt_tokens.sample(self.rng), index, self.rng)
        if config.kind == "embeddings":
            body = embeddings_body(config.model, prompt, config.extra_body)
        else:
            body = chat_body(
                config.model,
                prompt,
                config.output_tokens.sample(self.rng),
                config.stream,
                config.ignore_eos,
                config.extra_body,
            )
        self.in_flight += 1
        try:
            record = await send(
                self.session,
                self.url,
                body,
                stream=config.stream and config.kind == "chat",
                embeddings=config.kind == "embeddings",
                headers=self.headers,
                timeout=config.timeout,
                record=RequestRecord(0.0),
                t0=self.t0,
            )
        finally:
            self.in_flight -= 1
        self.records.append(record)

    async def closed_loop(self, workers: int) -> None:
        async def worker() -> None:
            while (index := self.claim()) is not None:
                await self.one(index)

        await asyncio.gather(*(worker() for _ in range(workers)))

    async def open_loop(self, rate: float, cap: int | None) -> None:
        gate = asyncio.Semaphore(cap) if cap else None
        tasks: set[asyncio.Task[None]] = set()

        async def gated(index: int) -> None:
            try:
                await self.one(index)
            finally:
                if gate is not None:
                    gate.release()

        next_at = time.perf_counter()
        try:
            while True:
                if gate is not None:
                    await gate.acquire()
                index = self.claim()
                if index is None:
                    if gate is not None:
                        gate.release()
                    break
                task = asyncio.create_task(gated(index))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if self.issued >= self.max_requests:
                    break
                next_at += self.rng.expovariate(rate)
                await asyncio.sleep(max(0.0, min(next_at, self.deadline) - time.perf_counter()))
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def report_progress(self) -> None:
        last_done, last_at = 0, self.t0
        while True:
            await asyncio.sleep(self.config.progress_interval)
            now = time.perf_counter()
            done = len(self.records)
            tokens = sum(r.output_tokens for r in self.records[last_done:])
            failed = sum(1 for r in self.records if r.error is not None)
            span = max(now - last_at, 1e-9)
            print(
                f"[{now - self.t0:7.1f}s] {done} done ({failed} failed), {self.in_flight} in flight, "
                f"{(done - last_done) / span:.1f} req/s, {tokens / span:.0f} tok/s",
                file=sys.stderr,
                flush=True,
            )
            last_done, last_at = done, now


def new_loop_runner() -> asyncio.Runner:
    """An asyncio runner on uvloop when it is installed (the benchmarks' load generators use it)."""
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.Runner()
