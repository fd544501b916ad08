"""Running an engine call with failover: another replica when the first failed before anything
reached the client, within the retry budget and the request's deadline."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from gateway.config import Task
from gateway.errors import (
    EngineConnectError,
    EngineError,
    EngineStatusError,
    EngineUnavailableError,
    GatewayError,
)
from gateway.metrics import Metrics
from gateway.record import RequestRecord
from gateway.routing.router import Pick, Router
from gateway.routing.table import Replica, Route, Version
from gateway.routing.versions import Choice
from gateway.services.leases import Leases
from gateway.services.on_demand import OnDemand

if TYPE_CHECKING:
    from gateway.tracing import Tracing

T = TypeVar("T")


def retryable(error: GatewayError) -> bool:
    """Failures that left nothing with the client and say nothing against the request: an engine
    that could not be reached, answered 502/503, or broke before its answer was complete."""
    if isinstance(error, EngineConnectError | EngineError):
        return True
    return isinstance(error, EngineStatusError) and error.status in (502, 503)


def resolve(
    router: Router,
    metrics: Metrics,
    record: RequestRecord,
    requested: str,
    task: Task,
    session: str | None,
    headers: Mapping[str, str] | None = None,
) -> tuple[Route, Choice]:
    """:meth:`Router.resolve`, noted on the record and counted as a routing decision."""
    route, choice = router.resolve(requested, task, session, headers, record.allowed_models)
    record.routed_model = route.model
    record.version = choice.version.label
    metrics.begin(record)
    metrics.child(metrics.decisions, route.model, choice.version.label, choice.reason).inc()
    return route, choice


class Failover:
    """Runs an attempt on a replica the router picks (starting an on-demand engine if need be)."""

    def __init__(
        self,
        router: Router,
        leases: Leases,
        metrics: Metrics,
        on_demand: OnDemand | None,
        max_retries: int,
        deadline: float,
        tracing: Tracing | None = None,
    ) -> None:
        self._router = router
        self._leases = leases
        self._metrics = metrics
        self._on_demand = on_demand
        self._max_retries = max_retries
        self._deadline = deadline
        self._tracing = tracing

    def needs_start(self, route: Route, version: Version) -> bool:
        """True when the request must first wait for an on-demand engine to load."""
        return self._on_demand is not None and self._on_demand.needs_start(route, version)

    async def pick(
        self,
        route: Route,
        version: Version,
        record: RequestRecord,
        exclude: frozenset[str] = frozenset(),
        key: str | None = None,
    ) -> Pick:
        """A replica for the request (noted on the record); 503 when none can be had."""
        if self._on_demand is None:
            pick = self._router.choose(route, version, exclude, key)
        else:
            pick = await self._on_demand.choose_or_start(route, version, exclude, key)
        if pick.fallback:
            self._metrics.child(self._metrics.decisions, route.model, pick.version.label, "fallback").inc()
            record.version = pick.version.label
        record.replica = pick.replica.id
        return pick

    async def run(
        self,
        route: Route,
        version: Version,
        record: RequestRecord,
        attempt: Callable[[Replica], Awaitable[T]],
        key: str | None = None,
    ) -> tuple[T, Version]:
        """Run ``attempt`` on a replica; on a :func:`retryable` failure try another one, within the
        retry budget and the request's deadline. Returns the result and the version that served it."""
        tried: set[str] = set()
        deadline = record.started + self._deadline
        failure: GatewayError | None = None
        while True:
            try:
                pick = await self.pick(route, version, record, frozenset(tried), key)
            except EngineUnavailableError:
                if failure is not None:
                    raise failure from None  # nothing left to retry on: the real reason, not a 503
                raise
            try:
                with self._leases.calling(pick.replica):
                    if self._tracing is None:
                        return await attempt(pick.replica), pick.version
                    with self._tracing.attempt(pick.replica.id):  # names the replica on the engine span
                        return await attempt(pick.replica), pick.version
            except GatewayError as exc:
                if not retryable(exc) or len(tried) >= self._max_retries or time.perf_counter() >= deadline:
                    raise
                failure = exc
                tried.add(pick.replica.id)
                record.retries += 1
                self._metrics.retries.labels(route.model, pick.version.label, pick.replica.id).inc()
