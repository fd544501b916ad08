"""``/metrics`` for the whole gateway when it runs as several workers (gateway/workers.py).

Each worker counts what it serves in its own registry. The worker that answers a scrape asks every
other worker for its own figures, over that worker's private Unix socket, and adds them up, so that
Prometheus sees one gateway whichever worker it reached (prometheus_client's multiprocess mode
would do this through files, but not for the gateway's own collectors: the inter-token histogram
and the engine usage series).

How series are combined:

* counters and histograms (requests, tokens, latencies): summed;
* gauges of this gateway's own work (requests in flight, in flight per replica): summed;
* series describing an engine, which every worker reads from the same engine (``offload_engine_*``,
  counters included) and the other gauges (a replica up, limits shared): the highest, i.e. the
  freshest reading of a counter and "up" if any worker sees it up;
* a key's remaining budget: the lowest (the most used worker's view).

A worker that does not answer within the timeout (being replaced after a crash) is left out, and
``offload_workers_reporting`` says how many did: its counts return when it does, except those of a
crashed worker, which are lost with it (``rate()`` reads the drop as a counter reset).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import aiohttp
import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

_log = structlog.get_logger("offload.workers")

WORKER_SCOPE = "worker"
"""``/metrics?scope=worker``: this worker's own figures only (what peers ask each other for)."""

_SUMMED_GAUGES = frozenset({"offload_requests_in_flight", "offload_replica_in_flight"})
_LOWEST_GAUGES = frozenset({"offload_key_limit_remaining_ratio"})
_ENGINE_PREFIX = "offload_engine_"
_PEER_TIMEOUT = 2.0  # seconds: a scrape must not wait long for a worker being replaced

_SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def _combiner(family: Metric, sample_name: str) -> Callable[[float, float], float]:
    if family.name.startswith(_ENGINE_PREFIX):
        return max
    if sample_name.endswith("_created"):
        return min  # when the first worker created the series
    if family.type == "gauge":
        if family.name in _SUMMED_GAUGES:
            return _add
        return min if family.name in _LOWEST_GAUGES else max
    return _add  # counters, histograms, summaries, untyped


def _add(a: float, b: float) -> float:
    return a + b


def merge_expositions(texts: Iterable[str]) -> list[Metric]:
    """The metric families of several workers' ``/metrics`` texts, combined series by series (the
    first text's order and help strings; series only some workers have are kept)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[_SampleKey, float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            series = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = series.get(key)
                series[key] = (
                    sample.value if old is None else _combiner(family, sample.name)(old, sample.value)
                )
    for name, merged in families.items():
        for (sample_name, labels), value in values[name].items():
            merged.add_sample(sample_name, dict(labels), value)
    return list(families.values())


class _Families(Collector):
    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def render_merged(texts: Sequence[str], reporting: int) -> bytes:
    """One Prometheus text from the workers' texts, with ``offload_workers_reporting``."""
    registry = CollectorRegistry(auto_describe=False)
    gauge = Metric("offload_workers_reporting", "Gateway workers whose figures this scrape adds up", "gauge")
    gauge.add_sample("offload_workers_reporting", {}, float(reporting))
    registry.register(_Families([*merge_expositions(texts), gauge]))
    return generate_latest(registry)


class WorkerPeers:
    """The other workers of this gateway, reached on their private Unix sockets."""

    def __init__(self, sockets: Sequence[Path]) -> None:
        self._sockets = list(sockets)
        self._sessions: dict[Path, aiohttp.ClientSession] = {}

    def __len__(self) -> int:
        return len(self._sockets)

    async def totals(self, own: bytes) -> bytes:
        """This worker's ``/metrics`` text ``own`` added to every other worker's."""
        answers = await asyncio.gather(*(self._scrape(path) for path in self._sockets))
        texts = [own.decode(), *(a for a in answers if a is not None)]
        return render_merged(texts, len(texts))

    async def _scrape(self, path: Path) -> str | None:
        session = self._sessions.get(path)
        if session is None or session.closed:
            session = self._sessions[path] = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(path)),
                timeout=aiohttp.ClientTimeout(total=_PEER_TIMEOUT),
            )
        try:
            # (the host is a placeholder: the connector goes to the socket)
            async with session.get(f"http://worker/metrics?scope={WORKER_SCOPE}") as response:
                if response.status == 200:
                    return await response.text()
                _log.warning(
                    "a worker answered its metrics with an error", socket=path.name, status=response.status
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            _log.warning(
                "a worker did not answer for its metrics", socket=path.name, error=type(exc).__name__
            )
        return None

    async def close(self) -> None:
        """Close the connections to the other workers."""
        for session in self._sessions.values():
            with contextlib.suppress(Exception):
                await session.close()
        self._sessions.clear()
