"""Shadow traffic: copies of requests sent to shadow versions, answers discarded.

A copy never delays or fails the client's request: it runs as a background task after the primary
has been dispatched, is dropped when too many copies are already in flight, and only its latency
and outcome are recorded, under the shadow version's own labels.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import structlog

from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.routing.router import Router
from gateway.routing.table import Route, Version
from gateway.upstream import Upstream

_log = structlog.get_logger("offload.shadow")


class ShadowSender:
    """Fire-and-forget copies with bounded concurrency."""

    def __init__(self, router: Router, upstream: Upstream, metrics: Metrics, limit: int = 32) -> None:
        self._router = router
        self._upstream = upstream
        self._metrics = metrics
        self._limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, route: Route, versions: list[Version], path: str, data: dict[str, Any]) -> None:
        """Start one copy per shadow version (non-streaming: only latency and outcome matter)."""
        for version in versions:
            replica = self._router.least_loaded(version)
            if replica is None or len(self._tasks) >= self._limit:
                label = replica.id if replica is not None else "-"
                self._metrics.shadow.labels(route.model, version.label, label, "skipped").inc()
                continue
            copy = {k: v for k, v in data.items() if k != "stream_options"}
            copy["stream"] = False
            copy["model"] = replica.served_name
            task = asyncio.create_task(
                self._run(route, version, replica.id, replica.base_url, path, orjson.dumps(copy))
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(
        self, route: Route, version: Version, replica_id: str, base_url: str, path: str, body: bytes
    ) -> None:
        labels = (route.model, version.label, replica_id)
        started = time.perf_counter()
        outcome = "error"
        try:
            reply = await self._upstream.post_json(base_url, path, body)
            outcome = "ok" if reply.status == 200 else f"status_{reply.status}"
        except GatewayError as exc:
            outcome = exc.code or "error"
        finally:
            self._metrics.shadow.labels(*labels, outcome).inc()
            self._metrics.shadow_latency.labels(*labels).observe(time.perf_counter() - started)

    async def close(self) -> None:
        """Cancel copies still running (shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
