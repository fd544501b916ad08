"""The ``offload.v1.Offload`` service: each RPC parses its request into the OpenAI JSON body and
calls the same service method as the HTTP route (routing, version pinning, caps, fair queues,
failover, metrics are theirs)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson

from gateway.errors import GatewayError
from gateway.protocol import paths
from gateway.routing.router import Router
from gateway.rpc import convert
from gateway.rpc.calls import Calls, Context
from gateway.rpc.generated import offload_pb2 as pb
from gateway.rpc.generated import offload_pb2_grpc as pb_grpc
from gateway.services.catalog import cards, visible
from gateway.services.chat import ChatService
from gateway.services.embeddings import EmbeddingsService


class InBandError(GatewayError):
    """An error the chat stream sent in-band (after its first chunk), re-raised as a status."""

    def __init__(self, error: dict[str, object]) -> None:
        code = error.get("code")
        super().__init__(str(error.get("message") or "The engine failed."), code=str(code) if code else None)
        self.status = (
            503 if self.code == "engine_unavailable" else 504 if self.code == "engine_timeout" else 502
        )


class OffloadServicer(pb_grpc.OffloadServicer):
    """Chat (streamed and whole), embeddings and the model list over gRPC."""

    def __init__(
        self,
        calls: Calls,
        chat: ChatService,
        embeddings: EmbeddingsService,
        router: Router,
        keepalive: float,
    ) -> None:
        self._calls = calls
        self._chat = chat
        self._embeddings = embeddings
        self._router = router
        self._keepalive = keepalive
        self._started_at = int(time.time())

    async def Chat(self, request: pb.ChatRequest, context: Context) -> AsyncIterator[pb.ChatChunk]:
        """A streamed completion. Cancelling the call closes the engine's stream (vLLM aborts)."""
        async with self._calls.call(context, paths.CHAT_COMPLETIONS) as (record, metadata):
            data, parsed = self._chat.prepare(convert.chat_body(request, stream=True), record)
            stream = await self._chat.open_stream(data, parsed, record, metadata, self._keepalive)
            try:
                async for payload in stream:
                    if not payload:
                        continue  # the engine is silent (gRPC keeps its connection alive itself)
                    event = orjson.loads(payload)
                    error = event.get("error")
                    if error is not None:
                        raise InBandError(error)
                    record.status = 200  # the first chunk: the call has "started", as HTTP's 200
                    yield convert.chunk(event)
            finally:
                await stream.aclose()  # however it ended (done, failed, cancelled): free the engine

    async def ChatComplete(self, request: pb.ChatRequest, context: Context) -> pb.ChatCompletion:
        """A whole completion."""
        async with self._calls.call(context, paths.CHAT_COMPLETIONS) as (record, metadata):
            data, parsed = self._chat.prepare(convert.chat_body(request, stream=False), record)
            answer = await self._chat.complete(data, parsed, record, metadata)
            return convert.completion(orjson.loads(answer))
        raise AssertionError("unreachable: the call either returned or aborted")

    async def Embed(self, request: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        """Float embeddings."""
        async with self._calls.call(context, paths.EMBEDDINGS) as (record, metadata):
            answer = await self._embeddings.embed(convert.embed_body(request), record, metadata)
            return convert.embeddings(orjson.loads(answer))
        raise AssertionError("unreachable: the call either returned or aborted")

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ModelList:
        """What ``/v1/models`` lists (for the call's key)."""
        async with self._calls.call(context, paths.MODELS, limited=False) as (record, _):
            routes = visible(self._router.table.routes, record.allowed_models)
            return convert.models([card for route in routes for card in cards(route, self._started_at)])
        raise AssertionError("unreachable: the call either returned or aborted")
