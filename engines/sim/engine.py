"""The simulated engine's scheduler state: running and waiting requests, KV tokens, counters.

Admission is FIFO: with ``max_running`` requests generating, more wait; a finished request hands
its slot straight to the oldest waiter. A request that is cancelled (client gone) at any point gives
its slot back, so ``vllm:num_requests_running`` returns to 0 when clients leave.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque

from engines.sim.prefix_cache import PrefixCache

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_ABORT = "abort"


class SimEngine:
    """Counters and admission for one simulated engine (one event loop)."""

    def __init__(
        self,
        model_name: str,
        max_running: int = 0,
        kv_cache_tokens: int = 65536,
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        self.model_name = model_name
        self.prefix_cache = prefix_cache
        """Chat prompts' cached blocks; None: prefix caching off (no hits)."""
        self.max_running = max_running
        self.kv_cache_tokens = max(1, kv_cache_tokens)
        self.running = 0
        self.waiting = 0
        self.kv_tokens = 0
        """Tokens (prompt + generated so far) held by running requests."""
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.finished: Counter[str] = Counter()
        self.continued: Counter[str] = Counter()
        """Continuation requests by how their prefix matched: ``exact``, ``partial``, ``mismatch``
        (see :mod:`engines.sim.answer`); not in ``/metrics`` (vLLM has no such metric)."""
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def admit(self) -> None:
        """Wait for a running slot (FIFO). Pair every successful return with :meth:`release`."""
        if self.max_running <= 0 or (self.running < self.max_running and not self._waiters):
            self.running += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.waiting += 1
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._free_slot()  # a slot was handed over just as we were cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise
        finally:
            self.waiting -= 1

    def release(self, kv_tokens: int, generated: int, finish: str) -> None:
        """Give back a running slot and the KV tokens the request held; count how it ended."""
        self.kv_tokens -= kv_tokens
        self.generation_tokens_total += generated
        self.finished[finish] += 1
        self._free_slot()

    def _free_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # hand over: ``running`` stays the same
                return
        self.running -= 1

    @property
    def kv_usage(self) -> float:
        """Fraction of the simulated KV cache in use, 0..1."""
        return min(1.0, max(0.0, self.kv_tokens / self.kv_cache_tokens))

    def render_metrics(self) -> bytes:
        """Prometheus text exposition with vLLM's metric names and labels."""
        labels = '{engine="0",model_name="' + _escape(self.model_name) + '"}'
        lines: list[str] = []

        def metric(name: str, kind: str, doc: str, value: float, suffix: str = "") -> None:
            lines.append(f"# HELP {name} {doc}")
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{name}{suffix}{labels} {float(value)!r}")

        metric(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            self.running,
        )
        metric(
            "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", self.waiting
        )
        metric(
            "vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", self.kv_usage
        )
        metric(
            "vllm:prompt_tokens",
            "counter",
            "Number of prefill tokens processed.",
            self.prompt_tokens_total,
            "_total",
        )
        metric(
            "vllm:generation_tokens",
            "counter",
            "Number of generation tokens processed.",
            self.generation_tokens_total,
            "_total",
        )
        cache = self.prefix_cache
        metric(
            "vllm:prefix_cache_queries",
            "counter",
            "Prefix cache queries, in terms of number of queried tokens.",
            self.prompt_tokens_total if cache is None else cache.query_tokens,
            "_total",
        )
        metric(
            "vllm:prefix_cache_hits",
            "counter",
            "Prefix cache hits, in terms of number of cached tokens.",
            0 if cache is None else cache.hit_tokens,
            "_total",
        )
        lines.append("# HELP vllm:request_success Count of successfully processed requests.")
        lines.append("# TYPE vllm:request_success counter")
        for reason in (FINISH_STOP, FINISH_LENGTH, FINISH_ABORT):
            reason_labels = labels[:-1] + f',finished_reason="{reason}"}}'
            lines.append(f"vllm:request_success_total{reason_labels} {float(self.finished[reason])!r}")
        return ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
