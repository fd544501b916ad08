"""From a requested model to a version and a healthy replica, and the bookkeeping around engine calls."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import orjson

from gateway.config import Task
from gateway.metrics import Metrics
from gateway.protocol.errors import ErrorResponse
from gateway.routing.health import HealthRegistry, State
from gateway.routing.policy import ReplicaPolicy, make_policy
from gateway.routing.table import Replica, Route, RouteTable, Version
from gateway.routing.versions import Choice, UnknownVersion, choose_version, fallback_chain, split_model
from gateway.services.accounting import RequestRecord
from gateway.services.engine_control import EngineControl
from gateway.services.errors import (
    EngineError,
    EngineStatusError,
    EngineTimeoutError,
    EngineUnavailableError,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
)
from gateway.upstream import EngineConnectError, Upstream

T = TypeVar("T")
_TASK_NAMES = {"chat": "chat completions", "embeddings": "embeddings"}


def is_retryable(error: GatewayError) -> bool:
    """Failures that happen before the engine did any work for us: safe on another replica."""
    if isinstance(error, EngineConnectError):
        return True
    return isinstance(error, EngineStatusError) and error.status in (502, 503)


class Dispatcher:
    """Resolves models to versions and replicas; keeps health and in-flight state honest."""

    def __init__(
        self,
        table: RouteTable,
        health: HealthRegistry,
        metrics: Metrics,
        retry_after: int,
        max_retries: int = 2,
        deadline: float = 600.0,
        engines: EngineControl | None = None,
        on_demand_wait: float = 600.0,
        on_demand_max_waiting: int = 256,
    ) -> None:
        self._max_retries = max_retries
        self._deadline = deadline
        self.engines = engines
        self._on_demand_wait = on_demand_wait
        self._on_demand_max_waiting = on_demand_max_waiting
        self._waiting = 0
        self.table = table
        self.health = health
        self._metrics = metrics
        self._retry_after = retry_after
        self._policies: dict[tuple[str, str], ReplicaPolicy] = {}

    def replace_table(self, table: RouteTable) -> None:
        """Swap in a reloaded configuration; requests in flight keep the replicas they hold."""
        self.table = table
        self._policies.clear()
        self.health.forget({r.id for r in table.replicas()})

    def route(self, requested: str, task: Task) -> tuple[Route, str | None]:
        """The route for a requested model (``chat``, ``chat:v2``, ``chat:stable``) and its selector."""
        route = self.table.get(requested)
        selector = None
        if route is None:
            name, selector = split_model(requested)
            route = self.table.get(name) if selector is not None else None
        if route is None:
            known = ", ".join(r.model for r in self.table.routes if r.task == task)
            raise ModelNotFoundError(
                f"The model '{requested}' does not exist. Available {_TASK_NAMES[task]} models: {known}.",
                param="model",
            )
        if route.task != task:
            raise InvalidRequestError(
                f"The model '{requested}' does not support {_TASK_NAMES[task]}.", param="model"
            )
        return route, selector

    def resolve(
        self,
        requested: str,
        task: Task,
        session: str | None,
        record: RequestRecord,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Route, Choice]:
        """Route and version for a request, noted on the record. The session key is the route's
        session header when ``headers`` carry it, else ``session`` (the request's ``user``)."""
        route, selector = self.route(requested, task)
        if headers is not None:
            session = headers.get(route.session_header) or session
        try:
            choice = choose_version(route, selector, session)
        except UnknownVersion as exc:
            raise ModelNotFoundError(str(exc), param="model") from None
        record.routed_model = route.model
        record.version = choice.version.label
        self._metrics.begin(record)
        self._metrics.child(self._metrics.decisions, route.model, choice.version.label, choice.reason).inc()
        return route, choice

    def _policy(self, version: Version) -> ReplicaPolicy:
        key = (version.model, version.name)
        policy = self._policies.get(key)
        if policy is None:
            policy = self._policies[key] = make_policy(version.policy, self.health)
        return policy

    def choose(
        self,
        route: Route,
        version: Version,
        record: RequestRecord,
        exclude: frozenset[str] = frozenset(),
        key: str | None = None,
    ) -> tuple[Version, Replica]:
        """A replica of ``version`` (or of its fallbacks) that may take the request; 503 when none."""
        for candidate in fallback_chain(route, version):
            replicas = self.health.healthy(candidate.replicas, exclude)
            if replicas:
                if candidate is not version:
                    self._metrics.child(
                        self._metrics.decisions, route.model, candidate.label, "fallback"
                    ).inc()
                    record.version = candidate.label
                replica = self._policy(candidate).choose(replicas, key)
                record.replica = replica.id
                return candidate, replica
        raise EngineUnavailableError(
            f"The model '{version.public_id}' has no engine ready to serve it; retry shortly.",
            retry_after=self._retry_after,
        )

    def needs_start(self, route: Route, version: Version) -> bool:
        """True when no replica can take a request now but an on-demand engine can be started."""
        if self.engines is None:
            return False
        chain = fallback_chain(route, version)
        if any(self.health.healthy(v.replicas) for v in chain):
            return False
        return any(self.engines.can_start(r.base_url) for v in chain for r in v.replicas)

    async def choose_or_start(
        self,
        route: Route,
        version: Version,
        record: RequestRecord,
        exclude: frozenset[str] = frozenset(),
        key: str | None = None,
    ) -> tuple[Version, Replica]:
        """:meth:`choose`, but an on-demand engine is started (and waited for) instead of a 503."""
        try:
            return self.choose(route, version, record, exclude, key)
        except EngineUnavailableError:
            if self.engines is None:
                raise
            startable = [
                r
                for v in fallback_chain(route, version)
                for r in v.replicas
                if r.id not in exclude and self.engines.can_start(r.base_url)
            ]
            if not startable:
                raise
        if self._waiting >= self._on_demand_max_waiting:
            raise EngineUnavailableError(
                f"Too many requests are waiting for '{version.public_id}' to load; retry shortly.",
                retry_after=self._retry_after,
            )
        self._waiting += 1
        try:
            started = await self.engines.ensure_running(startable[0].base_url, self._on_demand_wait)
        finally:
            self._waiting -= 1
        if not started:
            raise EngineUnavailableError(
                f"The model '{version.public_id}' did not load in time; retry shortly.",
                retry_after=self._retry_after,
            )
        self.health.mark(startable[0].id, State.UP)  # the supervisor saw it healthy
        return self.choose(route, version, record, exclude, key)

    def hold(self, replica: Replica) -> Callable[[], None]:
        """Count a stream in flight on ``replica`` until the returned release is called."""
        self.health.begin(replica.id)
        if self.engines is not None:
            self.engines.begin(replica.base_url)

        def release() -> None:
            self.health.end(replica.id)
            if self.engines is not None:
                self.engines.end(replica.base_url)

        return release

    @contextmanager
    def calling(self, replica: Replica) -> Iterator[None]:
        """Count a call in flight and feed its outcome to the replica's circuit breaker."""
        self.health.begin(replica.id)
        if self.engines is not None:
            self.engines.begin(replica.base_url)
        try:
            yield
        except EngineConnectError as exc:
            self.health.failure(replica.id, unreachable=True)
            exc.retry_after = self._retry_after
            raise
        except (EngineError, EngineTimeoutError):
            self.health.failure(replica.id, unreachable=False)
            raise
        except EngineStatusError as exc:
            if exc.status >= 500:
                self.health.failure(replica.id, unreachable=False)
            else:
                self.health.success(replica.id)  # the engine works; the request was wrong
            raise
        except BaseException:
            self.health.abandoned(replica.id)  # cancelled (client left): no verdict on the engine
            raise
        else:
            self.health.success(replica.id)
        finally:
            self.health.end(replica.id)
            if self.engines is not None:
                self.engines.end(replica.base_url)

    async def with_failover(
        self,
        route: Route,
        version: Version,
        record: RequestRecord,
        attempt: Callable[[Replica], Awaitable[T]],
        key: str | None = None,
    ) -> tuple[T, Version]:
        """Run ``attempt`` on a replica; on a failure that left nothing with the client (unreachable,
        502/503, connection lost before the answer) try another replica, within the retry budget
        and the request's deadline. Returns the result and the version that served it."""
        tried: set[str] = set()
        deadline = record.started + self._deadline
        failure: GatewayError | None = None
        while True:
            try:
                used, replica = await self.choose_or_start(route, version, record, frozenset(tried), key)
            except EngineUnavailableError:
                if failure is not None:
                    raise failure from None  # nothing left to retry on: the real reason, not a 503
                raise
            try:
                with self.calling(replica):
                    return await attempt(replica), used
            except GatewayError as exc:
                retryable = is_retryable(exc) or isinstance(exc, EngineError)
                if not retryable or len(tried) >= self._max_retries or time.perf_counter() >= deadline:
                    raise
                failure = exc
                tried.add(replica.id)
                record.retries += 1
                self._metrics.retries.labels(route.model, used.label, replica.id).inc()


async def post_answer(
    upstream: Upstream, replica: Replica, path: str, data: dict[str, Any]
) -> dict[str, Any]:
    """POST ``data`` to ``replica`` under its served name; the engine's JSON answer, or the
    normalised error (engine status, unreadable answer)."""
    reply = await upstream.post_json(
        replica.base_url, path, orjson.dumps({**data, "model": replica.served_name})
    )
    if reply.status != 200:
        raise engine_error(reply.status, reply.body)
    try:
        answer = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        raise EngineError("The engine sent an unreadable answer.") from None
    if not isinstance(answer, dict):
        raise EngineError("The engine sent an unreadable answer.")
    return answer


def engine_error(status: int, body: bytes) -> EngineStatusError:
    """Normalise an engine's error answer (vLLM uses integer codes and its own type names)."""
    message = "The engine rejected the request."
    param = None
    try:
        detail = ErrorResponse.model_validate(_error_dict(body)).error
        message, param = detail.message, detail.param
    except ValueError:
        pass
    if status >= 500:
        # Engine internals are not the client's business; its 4xx messages are about the request.
        message = "The engine failed to process the request."
        status = 503 if status == 503 else 502
    error = EngineStatusError(status, message, param=param)
    if status in (429, 503):
        error.retry_after = 1  # the engine is busy, not broken
    return error


def _error_dict(body: bytes) -> object:
    data = orjson.loads(body)
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = dict(data["error"])
        err["code"] = None if err.get("code") is None else str(err["code"])
        return {"error": err}
    if isinstance(data, dict) and "message" in data:  # some engines answer {"message": ...}
        return {"error": {"message": str(data["message"]), "type": "error"}}
    raise ValueError("not an error body")
