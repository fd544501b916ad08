"""From a requested model to a route, a version and a replica: pure and synchronous.

The router holds the current route table and reads the breakers (who may take traffic) and the
loads (who is least busy); it never awaits and never does I/O. Executing the call (retries,
leases, on-demand starts) is :mod:`gateway.services.failover`'s job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from gateway.config import Task
from gateway.errors import EngineUnavailableError, InvalidRequestError, ModelNotFoundError
from gateway.routing.breaker import Breakers
from gateway.routing.load import Loads
from gateway.routing.policy import ReplicaPolicy, make_policy
from gateway.routing.table import Replica, Route, RouteTable, Version
from gateway.routing.versions import Choice, UnknownVersion, choose_version, fallback_chain, split_model

_TASK_NAMES = {"chat": "chat completions", "embeddings": "embeddings"}


class Pick(NamedTuple):
    """The replica chosen for a request, and the version it belongs to (a fallback, perhaps).

    A named tuple: made once per request, and a frozen dataclass costs five times as much to build.
    """

    version: Version
    replica: Replica
    fallback: bool  # True when ``version`` is a fallback of the one asked for


class Router:
    """Resolves models to versions and replicas over the current route table."""

    def __init__(self, table: RouteTable, breakers: Breakers, loads: Loads, retry_after: int) -> None:
        self._table = table
        self.breakers = breakers
        self.loads = loads
        self._retry_after = retry_after
        self._policies: dict[tuple[str, str], ReplicaPolicy] = {}

    @property
    def table(self) -> RouteTable:
        """The route table in force."""
        return self._table

    def replace_table(self, table: RouteTable) -> None:
        """Swap in a rebuilt table; requests in flight keep the replicas they hold."""
        self._table = table
        self._policies.clear()
        keep = {r.id for r in table.replicas()}
        self.breakers.forget(keep)
        self.loads.forget(keep)

    def route(
        self, requested: str, task: Task, allowed: frozenset[str] | None = None
    ) -> tuple[Route, str | None]:
        """The route for a requested model (``chat``, ``chat:v2``, ``chat:stable``) and its selector.

        ``allowed``: the public model names the caller's key may use (None: all). Checked on the
        resolved route, so neither an alias nor a ``name:version`` gets around it, and a model the
        key may not use is answered exactly as one that does not exist.
        """
        route = self._table.get(requested)
        selector = None
        if route is None:
            name, selector = split_model(requested)
            route = self._table.get(name) if selector is not None else None
        if route is not None and allowed is not None and route.model not in allowed:
            route = None
        if route is None:
            known = ", ".join(
                r.model
                for r in self._table.routes
                if r.task == task and (allowed is None or r.model in allowed)
            )
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
        headers: Mapping[str, str] | None = None,
        allowed: frozenset[str] | None = None,
    ) -> tuple[Route, Choice]:
        """Route and version for a request. The session key is the route's session header when
        ``headers`` carry it, else ``session`` (the request's ``user``); ``allowed`` as for
        :meth:`route`."""
        route, selector = self.route(requested, task, allowed)
        if headers is not None:
            session = headers.get(route.session_header) or session
        try:
            return route, choose_version(route, selector, session)
        except UnknownVersion as exc:
            raise ModelNotFoundError(str(exc), param="model") from None

    def _policy(self, version: Version) -> ReplicaPolicy:
        key = (version.model, version.name)
        policy = self._policies.get(key)
        if policy is None:
            policy = self._policies[key] = make_policy(version.policy, self.loads)
        return policy

    def choose(
        self, route: Route, version: Version, exclude: frozenset[str] = frozenset(), key: str | None = None
    ) -> Pick:
        """A replica of ``version`` (or of its fallbacks) that may take the request; 503 when none."""
        for candidate in fallback_chain(route, version):
            replicas = self.breakers.healthy(candidate.replicas, exclude)
            if replicas:
                return Pick(
                    candidate, self._policy(candidate).choose(replicas, key), candidate is not version
                )
        raise EngineUnavailableError(
            f"The model '{version.public_id}' has no engine ready to serve it; retry shortly.",
            retry_after=self._retry_after,
        )

    def any_healthy(self, route: Route, version: Version) -> bool:
        """True when a replica of ``version`` or of its fallbacks may take a request now."""
        return any(self.breakers.healthy(v.replicas) for v in fallback_chain(route, version))

    def least_loaded(self, version: Version) -> Replica | None:
        """The least loaded replica of ``version`` that may take a request (shadow copies), or None."""
        healthy = self.breakers.healthy(version.replicas)
        if len(healthy) < 2:
            return healthy[0] if healthy else None
        return min(healthy, key=lambda r: self.loads.load(r.id))
