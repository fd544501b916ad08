"""The gRPC server: started in the gateway's own process and event loop (the app's lifespan), beside
the HTTP server, with health checking (``grpc.health.v1``) and server reflection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from gateway.drain import Drain
from gateway.rpc.generated import offload_pb2 as pb
from gateway.rpc.generated import offload_pb2_grpc as pb_grpc
from gateway.rpc.servicer import OffloadServicer

SERVICE = pb.DESCRIPTOR.services_by_name["Offload"].full_name
"""``offload.v1.Offload``."""
_log = structlog.get_logger("offload.main")
# The largest message either way: a long prompt or a batch of embeddings (HTTP's body limit is 8 MiB).
_MAX_MESSAGE = 16 * 1024 * 1024


class GrpcServer:
    """The gRPC door on ``host:port``; :meth:`lifespan` runs it for as long as the app runs."""

    def __init__(
        self,
        servicer: OffloadServicer,
        host: str,
        port: int,
        drain: Drain,
        drain_s: tuple[float, float],
        shared_port: bool = False,
    ) -> None:
        """``drain_s``: the drain's grace and timeout (``server.drain_grace``, ``server.drain_timeout``);
        ``shared_port``: other workers of this gateway listen on the port too."""
        self._servicer = servicer
        self._drain = drain
        self._address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._drain_s = drain_s
        self._shared_port = shared_port

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Any) -> AsyncIterator[None]:
        """Serve until the app shuts down. Health turns NOT_SERVING when the drain begins (as
        ``/ready`` does), while calls are still served; at shutdown new calls are refused and open
        ones may go on until the drain's end (its grace and timeout after it began), as HTTP's
        streams do; then they are cancelled, which aborts their engine requests."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                # A port in use is an error, not a second listener; except between the workers of one
                # gateway (gateway/workers.py), which all serve it (the first checked it was free).
                ("grpc.so_reuseport", int(self._shared_port)),
            ]
        )
        pb_grpc.add_OffloadServicer_to_server(self._servicer, server)
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        names = (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        try:
            server.add_insecure_port(self._address)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot listen for gRPC on {self._address}: {exc}") from None
        await server.start()
        for name in ("", SERVICE):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        _log.info("gRPC door open", address=self._address)
        loop = asyncio.get_running_loop()
        grace, timeout = self._drain_s
        ends = [0.0]  # the drain's end, set when it begins
        draining: list[asyncio.Task[None]] = []  # (a reference, so the task is not collected early)

        def began() -> None:
            ends[0] = loop.time() + grace + timeout
            draining.append(loop.create_task(health.enter_graceful_shutdown()))

        def not_serving() -> None:  # (may run in a signal handler: hand it to the loop)
            loop.call_soon_threadsafe(began)

        self._drain.on_begin(not_serving)
        try:
            yield
        finally:
            await health.enter_graceful_shutdown()
            left = ends[0] - loop.time() if self._drain.draining else timeout
            await server.stop(max(left, 1.0))
