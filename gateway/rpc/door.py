"""Builds the gRPC door from the app's own parts (called by :func:`gateway.app.create_app` only
when ``server.grpc_port`` is set: importing this imports the generated code)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.drain import Drain
from gateway.keys import KeyRing
from gateway.metrics import Metrics
from gateway.routing.router import Router
from gateway.rpc.calls import Calls
from gateway.services.chat import ChatService
from gateway.services.embeddings import EmbeddingsService
from gateway.services.limiter import Limiter
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.rpc.server import GrpcServer
    from gateway.tracing import Tracing


def grpc_door(
    settings: Settings,
    drain: Drain,
    keys: KeyRing,
    limiter: Limiter,
    metrics: Metrics,
    chat: ChatService,
    embeddings: EmbeddingsService,
    router: Router,
    tracing: Tracing | None = None,
) -> GrpcServer:
    """The gRPC server on ``server.host:server.grpc_port``, sharing the HTTP API's keys, limits,
    metrics and services; it follows ``drain`` (health NOT_SERVING when it begins; open calls may
    go on until its end)."""
    try:
        from gateway.rpc.server import GrpcServer
        from gateway.rpc.servicer import OffloadServicer
    except ImportError as exc:  # (the generated modules, or grpcio itself)
        raise RuntimeError(
            f"the gRPC door cannot open: {exc}. Its code is generated from gateway/rpc/offload.proto "
            "at install time (`make install`)."
        ) from None
    server = settings.server
    assert server.grpc_port is not None
    calls = Calls(keys, limiter, metrics, settings.log.access, tracing)
    servicer = OffloadServicer(calls, chat, embeddings, router, settings.upstream.keepalive_interval)
    return GrpcServer(
        servicer,
        server.host,
        server.grpc_port,
        drain,
        (server.drain_grace, server.drain_timeout),
        shared_port=server.worker_count() > 1,
    )
