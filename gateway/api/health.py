"""Operational endpoints: ``/health`` (alive), ``/ready`` (routable), ``/metrics`` (Prometheus),
``/schema`` (the OpenAPI description of the OpenAI endpoints)."""

from __future__ import annotations

import orjson
from litestar import Controller, Response, get
from litestar.params import Parameter

from gateway import metrics as metrics_module
from gateway.api import schema
from gateway.drain import Drain
from gateway.metrics import Metrics
from gateway.protocol import paths
from gateway.routing.breaker import Breakers
from gateway.routing.router import Router
from gateway.services.engine_control import EngineControl
from gateway.worker_metrics import WORKER_SCOPE, WorkerPeers


class OpsController(Controller):
    """Liveness, readiness and metrics (not part of the OpenAI API; no access log)."""

    @get(paths.HEALTH)
    async def health(self) -> Response[bytes]:
        """200 while the process serves requests."""
        return Response(b'{"status":"ok"}', media_type="application/json")

    @get(paths.READY)
    async def ready(
        self,
        router: Router,
        breakers: Breakers,
        engines: EngineControl | None,
        drain: Drain,
        require_all: bool = Parameter(query="all", default=False),
    ) -> Response[bytes]:
        """200 while at least one configured model can be served (``degraded`` when some cannot), 503
        when none can; ``?all=true``: 200 only when every model can. The body names each model's state.

        A readiness probe must not take the gateway out of service because one model is down: its
        other models would go with it, and that model's clients would lose the gateway's 503 with
        Retry-After for a connection error. ``?all=true`` is for start-up scripts and tests. From
        SIGTERM on it is 503 ``draining`` (requests are still served for a grace period).
        """
        if drain.draining:
            body = {"status": "draining", "models": {r.model: False for r in router.table.routes}}
            return Response(orjson.dumps(body), status_code=503, media_type="application/json")

        def routable(base_url: str, replica_id: str) -> bool:
            # an on-demand engine that is stopped is routable: the request starts it
            return breakers.is_up(replica_id) or (engines is not None and engines.can_start(base_url))

        models = {r.model: any(routable(x.base_url, x.id) for x in r.replicas) for r in router.table.routes}
        every, some = all(models.values()), any(models.values())
        status = "ready" if every else "degraded" if some else "not_ready"
        ok = every if require_all else some
        body = {"status": status, "models": models}
        return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json")

    @get(paths.METRICS)
    async def metrics(
        self,
        metrics: Metrics,
        peers: WorkerPeers | None,
        worker_scope: str | None = Parameter(query="scope", default=None),
    ) -> Response[bytes]:
        """Prometheus text exposition: with several workers, the totals of all of them
        (``?scope=worker``: only the figures of the worker that answers)."""
        own = metrics.render()
        body = own if peers is None or worker_scope == WORKER_SCOPE else await peers.totals(own)
        return Response(body, media_type=metrics_module.CONTENT_TYPE)

    @get(paths.SCHEMA)
    async def schema(self) -> Response[bytes]:
        """The OpenAPI 3.1 document of ``/v1/`` (:mod:`gateway.api.schema`); open, like ``/health``."""
        return Response(schema.document_bytes(), media_type="application/json")
