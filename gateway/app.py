"""``create_app(settings)``: the one composition root. No module-level state, no import-time I/O."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.di import Provide

from gateway.api.chat import chat_route
from gateway.api.embeddings import embeddings_route
from gateway.api.engines import EnginesController
from gateway.api.errors import EXCEPTION_HANDLERS
from gateway.api.health import OpsController
from gateway.api.hot import HotRoutes
from gateway.api.middleware import AccessMiddleware
from gateway.api.models import ModelsController
from gateway.config import OffloadConfig, load_config
from gateway.discovery import TableSource, dns_names
from gateway.metrics import Metrics
from gateway.monitor import HealthMonitor
from gateway.reloader import ConfigReloader
from gateway.routing.health import HealthRegistry
from gateway.routing.table import RouteTable
from gateway.services.chat import ChatService
from gateway.services.dispatch import Dispatcher
from gateway.services.embeddings import EmbeddingsService
from gateway.services.engine_control import EngineControl
from gateway.services.shadow import ShadowSender
from gateway.settings import Settings
from gateway.upstream import Upstream


def _const(value: object) -> Provide:
    return Provide(lambda: value, use_cache=True, sync_to_thread=False)


def create_app(
    settings: Settings,
    config: OffloadConfig | None = None,
    engines: EngineControl | None = None,
    upstream: Upstream | None = None,
) -> Litestar:
    """Build the gateway for ``config`` (default: the file named by ``settings.config``).

    ``engines`` is given when this process also supervises local engines (``offload run``): it
    enables on-demand loading and the ``/admin/engines`` API. ``upstream``: the engine client to
    use instead of a new one (``benchmarks/own_cost.py`` measures the gateway with engines replaced).
    """
    if config is None:
        config = load_config(settings.config)
    h = settings.health
    health = HealthRegistry(h.failure_threshold, h.cooldown, h.max_cooldown)
    metrics = Metrics()
    upstream = upstream or Upstream(settings.upstream)
    dispatcher = Dispatcher(
        RouteTable.from_config(config),
        health,
        metrics,
        h.retry_after_seconds,
        max_retries=settings.upstream.max_retries,
        deadline=settings.upstream.request_timeout,
        engines=engines,
        on_demand_wait=settings.upstream.on_demand_wait,
        on_demand_max_waiting=settings.upstream.on_demand_max_waiting,
    )
    shadows = ShadowSender(dispatcher, upstream, metrics, settings.upstream.max_shadow_in_flight)
    monitor = HealthMonitor(lambda: dispatcher.table, health, upstream, metrics, h)
    source = TableSource(config, dispatcher, monitor)
    reloader = ConfigReloader(settings.config, source) if settings.config else None
    max_body = settings.server.max_body_bytes

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        if dns_names(config):
            await source.rebuild()  # discover replicas behind DNS names
        await monitor.probe_all()  # know who is up before the first request
        tasks = [asyncio.create_task(monitor.run(), name="offload-health-monitor")]
        if settings.health.dns_interval:  # also picks up dns engines added by a reload
            tasks.append(asyncio.create_task(source.watch_dns(settings.health.dns_interval)))
        if reloader is not None:
            if settings.reload.watch_interval:
                tasks.append(asyncio.create_task(reloader.watch(settings.reload.watch_interval)))
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(
                    signal.SIGHUP, lambda: tasks.append(asyncio.create_task(reloader.reload()))
                )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await shadows.close()
            await upstream.close()

    hot = [
        chat_route(
            ChatService(dispatcher, upstream, metrics, shadows),
            settings.upstream.keepalive_interval,
            max_body,
        ),
        embeddings_route(EmbeddingsService(dispatcher, upstream), max_body),
    ]
    app = Litestar(
        route_handlers=[*hot, ModelsController, OpsController, EnginesController],
        dependencies={
            "dispatcher": _const(dispatcher),
            "metrics": _const(metrics),
            "upstream_settings": _const(settings.upstream),
            "started_at": _const(int(time.time())),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        request_max_body_size=max_body,
        openapi_config=None,
        debug=False,
    )
    # Outside Litestar's router (its `middleware=` runs per matched route), so that requests no route
    # matches (404, 405) also get a request id, a log line and metrics; inside it, the hot routes skip
    # Litestar's router and exception middleware (Litestar still has them, for other methods: 405).
    app.asgi_handler = AccessMiddleware(HotRoutes(app.asgi_handler, hot), metrics, settings.log.access)
    return app
