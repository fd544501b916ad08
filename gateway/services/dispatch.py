"""From a public model name to one healthy replica, and the bookkeeping around an engine call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import orjson

from gateway.config import Task
from gateway.metrics import Metrics
from gateway.protocol.errors import ErrorResponse
from gateway.routing.health import HealthRegistry, State
from gateway.routing.policy import LeastOutstanding, ReplicaPolicy
from gateway.routing.table import Replica, Route, RouteTable
from gateway.services.accounting import RequestRecord
from gateway.services.errors import (
    EngineStatusError,
    EngineUnavailableError,
    InvalidRequestError,
    ModelNotFoundError,
)
from gateway.upstream import EngineConnectError

_TASK_NAMES = {"chat": "chat completions", "embeddings": "embeddings"}


class Dispatcher:
    """Resolves models to replicas and keeps replica health/in-flight state honest."""

    def __init__(
        self, table: RouteTable, health: HealthRegistry, metrics: Metrics, retry_after: int
    ) -> None:
        self.table = table
        self.health = health
        self._metrics = metrics
        self._retry_after = retry_after
        self._policy: ReplicaPolicy = LeastOutstanding(health)

    def pick(self, model: str, task: Task, record: RequestRecord) -> tuple[Route, Replica]:
        """Route ``model`` and choose its replica, noting both on the record."""
        route = self.route(model, task)
        record.routed_model = route.model
        self._metrics.begin(record)
        replica = self.choose(route)
        record.replica = replica.id
        return route, replica

    def route(self, model: str, task: Task) -> Route:
        """The route for a requested model, or a 404/400 the client can act on."""
        route = self.table.get(model)
        if route is None:
            known = ", ".join(r.model for r in self.table.routes if r.task == task)
            raise ModelNotFoundError(
                f"The model '{model}' does not exist. Available {_TASK_NAMES[task]} models: {known}.",
                param="model",
            )
        if route.task != task:
            raise InvalidRequestError(
                f"The model '{model}' does not support {_TASK_NAMES[task]}.", param="model"
            )
        return route

    def choose(self, route: Route) -> Replica:
        """A healthy replica of ``route``; 503 with Retry-After when there is none."""
        candidates = self.health.healthy(route.replicas)
        if not candidates:
            raise EngineUnavailableError(
                f"The model '{route.model}' has no engine ready to serve it; retry shortly.",
                retry_after=self._retry_after,
            )
        return self._policy.choose(candidates)

    @contextmanager
    def calling(self, replica: Replica) -> Iterator[None]:
        """Count the call in flight; mark the replica down if it cannot be reached."""
        self.health.begin(replica.id)
        try:
            yield
        except EngineConnectError as exc:
            self.health.mark(replica.id, State.DOWN)
            exc.retry_after = self._retry_after
            raise
        finally:
            self.health.end(replica.id)


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
    return EngineStatusError(status, message, param=param)


def _error_dict(body: bytes) -> object:
    data = orjson.loads(body)
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = dict(data["error"])
        err["code"] = None if err.get("code") is None else str(err["code"])
        return {"error": err}
    if isinstance(data, dict) and "message" in data:  # some engines answer {"message": ...}
        return {"error": {"message": str(data["message"]), "type": "error"}}
    raise ValueError("not an error body")
