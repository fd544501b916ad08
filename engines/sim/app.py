"""``create_sim_app(SimConfig)``: the engine SIMULATOR as a Starlette app shaped like vLLM's server.

Routes: ``POST /v1/chat/completions``, ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /health``,
``GET /metrics``. It generates no real text: it replays fixed tokens with configurable timing and
faults (see :mod:`engines.sim.config`), for tests and benchmarks of the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engines.sim.chat import ChatHandler
from engines.sim.config import KnobError, SimConfig, resolve
from engines.sim.embeddings import EmbeddingsHandler
from engines.sim.engine import SimEngine
from engines.sim.errors import SimError, error_response
from engines.sim.faults import QUIET_RESETS
from engines.sim.prefix_cache import PrefixCache


class SimServer:
    """The state and the small endpoints of one simulated engine."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        cache = (
            PrefixCache(config.prefix_cache_tokens, config.prefix_block_tokens)
            if config.prefix_cache_tokens > 0
            else None
        )
        self.engine = SimEngine(config.model, config.max_running, config.kv_cache_tokens, cache)
        rng = random.Random(config.seed)
        self.chat = ChatHandler(config, self.engine, rng)
        self.embeddings = EmbeddingsHandler(config, self.engine, rng)
        self._created = int(time.time())

    async def models(self, request: Request) -> Response:
        cards: list[dict[str, Any]] = [
            {
                "id": name,
                "object": "model",
                "created": self._created,
                "owned_by": "vllm",
                "root": self.config.model,
                "parent": None,
                "max_model_len": self.config.max_model_len,
                "permission": [],
            }
            for name in self.config.served_names
        ]
        return Response(orjson.dumps({"object": "list", "data": cards}), media_type="application/json")

    async def health(self, request: Request) -> Response:
        try:
            knobs = resolve(self.config.knobs, request.headers.raw)
        except KnobError as exc:
            return error_response(SimError(str(exc), param=exc.name))
        if knobs.health_delay > 0:
            await asyncio.sleep(knobs.health_delay)
        return Response(status_code=200)

    async def metrics(self, request: Request) -> Response:
        return Response(self.engine.render_metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # Simulated resets raise after the response started; keep them out of the server's error log.
        logging.getLogger("uvicorn.error").addFilter(QUIET_RESETS)
        yield


def create_sim_app(config: SimConfig | None = None) -> Starlette:
    """A new simulator app (no global state: each app has its own counters)."""
    server = SimServer(config or SimConfig())
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", server.chat.handle, methods=["POST"]),
            Route("/v1/embeddings", server.embeddings.handle, methods=["POST"]),
            Route("/v1/models", server.models, methods=["GET"]),
            Route("/health", server.health, methods=["GET"]),
            Route("/metrics", server.metrics, methods=["GET"]),
        ],
        lifespan=server.lifespan,
    )
    app.state.sim = server
    return app
