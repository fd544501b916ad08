"""Operational endpoints: ``/health`` (alive), ``/ready`` (routable), ``/metrics`` (Prometheus)."""

from __future__ import annotations

import orjson
from litestar import Controller, Response, get

from gateway import metrics as metrics_module
from gateway.metrics import Metrics
from gateway.services.dispatch import Dispatcher


class OpsController(Controller):
    """Liveness, readiness and metrics (not part of the OpenAI API; no access log)."""

    @get("/health")
    async def health(self) -> Response[bytes]:
        """200 while the process serves requests."""
        return Response(b'{"status":"ok"}', media_type="application/json")

    @get("/ready")
    async def ready(self, dispatcher: Dispatcher) -> Response[bytes]:
        """200 when every configured model has a healthy engine, else 503 naming the ones that lack one."""
        health, engines = dispatcher.health, dispatcher.engines

        def routable(base_url: str, replica_id: str) -> bool:
            # an on-demand engine that is stopped is routable: the request starts it
            return health.is_up(replica_id) or (engines is not None and engines.can_start(base_url))

        models = {r.model: any(routable(x.base_url, x.id) for x in r.replicas) for r in dispatcher.table.routes}
        ok = all(models.values())
        body = {"status": "ready" if ok else "not_ready", "models": models}
        return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json")

    @get("/metrics")
    async def metrics(self, metrics: Metrics) -> Response[bytes]:
        """Prometheus text exposition."""
        return Response(metrics.render(), media_type=metrics_module.CONTENT_TYPE)
