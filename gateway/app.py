"""``create_app(settings)``: the one composition root. No module-level state, no import-time I/O."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import cast

from litestar import Litestar
from litestar.di import Provide

from gateway.api.asgi import ASGIApp
from gateway.api.chat import chat_handler
from gateway.api.embeddings import embeddings_handler
from gateway.api.engines import EnginesController
from gateway.api.errors import EXCEPTION_HANDLERS
from gateway.api.front import FrontDoor
from gateway.api.health import OpsController
from gateway.api.models import ModelsController
from gateway.api.playground import page_routes
from gateway.config import OffloadConfig, keys_file_of, load_config
from gateway.discovery import TableSource, dns_names
from gateway.drain import Drain
from gateway.engine_usage import EngineUsageCollector
from gateway.keys import KeyRing
from gateway.local_engines import engine_specs
from gateway.metrics import Metrics
from gateway.monitor import HealthMonitor
from gateway.protocol import paths
from gateway.reloader import ConfigReloader, Reloadable, take_hangup
from gateway.rollout import Rollout
from gateway.routing.breaker import Breakers
from gateway.routing.load import Loads
from gateway.routing.router import Router
from gateway.routing.table import RouteTable
from gateway.services.admission import Admission
from gateway.services.caps import Caps
from gateway.services.chat import ChatService
from gateway.services.embeddings import EmbeddingsService
from gateway.services.engine_control import EngineControl, EngineMeter, EngineSet
from gateway.services.failover import Failover
from gateway.services.leases import Leases
from gateway.services.limiter import Limiter
from gateway.services.on_demand import OnDemand
from gateway.services.resume import Resumer
from gateway.services.shadow import ShadowSender
from gateway.settings import Settings
from gateway.tracing import Tracing, start_tracing
from gateway.upstream import TracedUpstream, Upstream
from gateway.worker_metrics import WorkerPeers


def _const(value: object) -> Provide:
    return Provide(lambda: value, use_cache=True, sync_to_thread=False)


class _Reloads:
    """A reload applied to each part in turn: the keys first (a revoked key is refused at once),
    the caps, then the routes (whose new replicas are probed first)."""

    def __init__(self, *targets: Reloadable) -> None:
        self._targets = targets

    async def rebuild(self, config: OffloadConfig) -> None:
        for target in self._targets:
            await target.rebuild(config)


class _Background:
    """What runs beside the requests: DNS discovery, health probes, configuration reloads."""

    def __init__(
        self,
        settings: Settings,
        config: OffloadConfig,
        routing: tuple[Router, Breakers],
        reloads: tuple[KeyRing, Caps, Limiter, Admission],
        monitor: HealthMonitor,
        closing: tuple[ShadowSender, Upstream, Limiter],
        engines: EngineControl | None,
    ) -> None:
        self._settings = settings
        self._needs_dns = bool(dns_names(config))
        self._monitor = monitor
        self._source = TableSource(config, *routing, monitor)
        # With engines of its own (`offload run`), a reload starts and stops them: gateway/rollout.py.
        self._rollout: Rollout | None = (
            Rollout(
                engines,
                self._source,
                config,
                lambda c: engine_specs(c, settings.models_dir),
                settings.server.drain_timeout,
            )
            if isinstance(engines, EngineSet)
            else None
        )
        self._reloader = (
            ConfigReloader(
                settings.config,
                _Reloads(*reloads, self._rollout or self._source),
                keys_file_of(config, settings.config),
            )
            if settings.config
            else None
        )
        self._closing = closing

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Litestar) -> AsyncIterator[None]:
        """Start the background tasks once the first table is probed; stop and close them at exit."""
        h, reloader = self._settings.health, self._reloader
        if self._needs_dns:
            await self._source.rebuild()  # discover replicas behind DNS names
        await self._monitor.probe_all()  # know who is up before the first request
        tasks: list[asyncio.Task[object]] = [
            asyncio.create_task(self._monitor.run(), name="offload-health-monitor")
        ]
        if h.dns_interval:  # also picks up dns engines added by a reload
            tasks.append(asyncio.create_task(self._source.watch_dns(h.dns_interval)))
        if reloader is not None:
            if self._settings.reload.watch_interval:
                tasks.append(asyncio.create_task(reloader.watch(self._settings.reload.watch_interval)))
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().add_signal_handler(
                    signal.SIGHUP, lambda: tasks.append(asyncio.create_task(reloader.reload()))
                )
            if take_hangup():  # asked while the gateway started: the file may have changed since
                tasks.append(asyncio.create_task(reloader.reload()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._rollout is not None:
                await self._rollout.close()
            shadows, upstream, limiter = self._closing
            await shadows.close()
            await upstream.close()
            await limiter.close()


def _closed_at_exit(peers: WorkerPeers) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await peers.close()

    return lifespan


def create_app(
    settings: Settings,
    config: OffloadConfig | None = None,
    engines: EngineControl | None = None,
    upstream: Upstream | None = None,
    drain: Drain | None = None,
    tracing: Tracing | None = None,
    peers: WorkerPeers | None = None,
) -> FrontDoor:
    """Build the gateway for ``config`` (default: the file named by ``settings.config``): the ASGI
    app to serve, a :class:`FrontDoor` in front of the Litestar app.

    ``engines`` is given when this process also supervises local engines (``offload run``): it
    enables on-demand loading and the ``/admin/engines`` API. ``upstream``: the engine client to
    use instead of a new one (``benchmarks/own_cost.py`` measures the gateway with engines replaced).
    ``drain``: the shutdown state the server drives on SIGTERM (:mod:`gateway.drain`).
    ``tracing``: spans to make instead of those ``settings.tracing`` asks for (tests: in memory).
    ``peers``: the other workers of this gateway (gateway/workers.py), whose figures ``/metrics`` adds.
    """
    drain = drain or Drain()
    if config is None:
        config = load_config(settings.config)
    h, up, max_body = settings.health, settings.upstream, settings.server.max_body_bytes
    breakers = Breakers(h.failure_threshold, h.cooldown, h.max_cooldown)
    loads = Loads()
    metrics = Metrics()
    tracing = tracing or start_tracing(settings.tracing)  # None: tracing off, nothing on the hot path
    upstream = upstream or (Upstream(up) if tracing is None else TracedUpstream(up, tracing))
    router = Router(RouteTable.from_config(config), breakers, loads, h.retry_after_seconds)
    leases = Leases(breakers, loads, engines, h.retry_after_seconds)
    on_demand = (
        OnDemand(router, breakers, engines, up, h.retry_after_seconds) if engines is not None else None
    )
    failover = Failover(router, leases, metrics, on_demand, up.max_retries, up.request_timeout, tracing)
    shadows = ShadowSender(router, upstream, metrics, up.max_shadow_in_flight)
    local_usage = engines.usage if isinstance(engines, EngineMeter) else None
    monitor = HealthMonitor(lambda: router.table, breakers, loads, upstream, metrics, h, local_usage)
    EngineUsageCollector(metrics.registry, monitor.engine_figures)  # offload_engine_* on /metrics
    keys, caps = KeyRing(config.auth), Caps(config.limits)
    limiter = Limiter(config.limits.window_seconds, metrics, config.limits.redis_url)
    admission = Admission(config.admission, metrics)
    reloads = (keys, caps, limiter, admission)
    background = _Background(
        settings, config, (router, breakers), reloads, monitor, (shadows, upstream, limiter), engines
    )

    chat = ChatService(
        router,
        failover,
        leases,
        upstream,
        metrics,
        shadows,
        caps,
        admission,
        Resumer(router, upstream, leases, metrics, up.max_resumes, up.request_timeout),
    )
    embeddings = EmbeddingsService(router, failover, upstream, metrics, caps, admission)
    lifespans: list[Callable[[Litestar], AbstractAsyncContextManager[None]]] = [background.lifespan]
    if tracing is not None:
        lifespans.insert(0, tracing.lifespan)  # ended last: spans of the shutdown itself are exported
    if settings.server.grpc_port is not None:  # the gRPC door: imported only when opened
        from gateway.rpc.door import grpc_door

        lifespans.append(
            grpc_door(settings, drain, keys, limiter, metrics, chat, embeddings, router, tracing).lifespan
        )

    if peers is not None:
        lifespans.append(_closed_at_exit(peers))
    app = Litestar(
        route_handlers=[ModelsController, OpsController, EnginesController, *page_routes()],
        dependencies={
            "router": _const(router),
            "breakers": _const(breakers),
            "engines": _const(engines),
            "metrics": _const(metrics),
            "monitor": _const(monitor),
            "started_at": _const(int(time.time())),
            "drain": _const(drain),
            "peers": _const(peers),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespans,
        request_max_body_size=max_body,
        openapi_config=None,
        debug=False,
    )
    hot = {
        paths.CHAT_COMPLETIONS: chat_handler(chat, up.keepalive_interval, max_body, drain),
        paths.EMBEDDINGS: embeddings_handler(embeddings, max_body),
    }
    # Litestar types its ASGI signature with its own TypedDicts: the same messages, typed narrower.
    return FrontDoor(
        cast("ASGIApp", app),
        hot,
        metrics,
        settings.log.access,
        keys,
        settings.server.max_header_bytes,
        limiter,
        tracing,
    )
