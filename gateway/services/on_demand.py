"""Engines loaded on demand: a request for a stopped on-demand engine starts it and waits for it.

Only with ``offload run`` (an :class:`EngineControl` is given); the wait is bounded in time and in
how many requests may wait at once, past which they get a 503 with ``Retry-After``.
"""

from __future__ import annotations

from gateway.errors import EngineUnavailableError
from gateway.routing.breaker import Breakers, State
from gateway.routing.router import Pick, Router
from gateway.routing.table import Route, Version
from gateway.routing.versions import fallback_chain
from gateway.services.engine_control import EngineControl
from gateway.settings import UpstreamSettings


class OnDemand:
    """Starts stopped on-demand engines for the requests that need them."""

    def __init__(
        self,
        router: Router,
        breakers: Breakers,
        engines: EngineControl,
        settings: UpstreamSettings,
        retry_after: int,
    ) -> None:
        self._router = router
        self._breakers = breakers
        self._engines = engines
        self._wait = settings.on_demand_wait
        self._max_waiting = settings.on_demand_max_waiting
        self._retry_after = retry_after
        self._waiting = 0

    def needs_start(self, route: Route, version: Version) -> bool:
        """True when no replica can take a request now but an on-demand engine can be started."""
        if self._router.any_healthy(route, version):
            return False
        return any(
            self._engines.can_start(r.base_url) for v in fallback_chain(route, version) for r in v.replicas
        )

    async def choose_or_start(
        self, route: Route, version: Version, exclude: frozenset[str] = frozenset(), key: str | None = None
    ) -> Pick:
        """:meth:`Router.choose`, but an on-demand engine is started (and waited for) instead of a 503."""
        try:
            return self._router.choose(route, version, exclude, key)
        except EngineUnavailableError:
            startable = [
                r
                for v in fallback_chain(route, version)
                for r in v.replicas
                if r.id not in exclude and self._engines.can_start(r.base_url)
            ]
            if not startable:
                raise
        if self._waiting >= self._max_waiting:
            raise EngineUnavailableError(
                f"Too many requests are waiting for '{version.public_id}' to load; retry shortly.",
                retry_after=self._retry_after,
            )
        self._waiting += 1
        try:
            started = await self._engines.ensure_running(startable[0].base_url, self._wait)
        finally:
            self._waiting -= 1
        if not started:
            raise EngineUnavailableError(
                f"The model '{version.public_id}' did not load in time; retry shortly.",
                retry_after=self._retry_after,
            )
        self._breakers.mark(startable[0].id, State.UP)  # the supervisor saw it healthy
        return self._router.choose(route, version, exclude, key)
