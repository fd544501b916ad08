"""Embeddings: validate, pick a replica, relay (float or base64 encoding is the engine's job)."""

from __future__ import annotations

import orjson

from gateway.protocol.embeddings import EmbeddingRequest
from gateway.services.accounting import RequestRecord
from gateway.services.dispatch import Dispatcher, engine_error
from gateway.services.errors import EngineError, InvalidRequestError
from gateway.services.parsing import parse_body
from gateway.upstream import Upstream

PATH = "/v1/embeddings"


class EmbeddingsService:
    """Serves ``/v1/embeddings`` for every configured embeddings model."""

    def __init__(self, dispatcher: Dispatcher, upstream: Upstream) -> None:
        self._dispatcher = dispatcher
        self._upstream = upstream

    async def embed(self, body: bytes, record: RequestRecord) -> bytes:
        """The engine's embedding list, with ``model`` set to the public name."""
        data, request = parse_body(body, EmbeddingRequest)
        record.model = request.model
        if request.input_is_empty():
            raise InvalidRequestError("'input' must not be empty.", param="input")
        route, replica = self._dispatcher.pick(request.model, "embeddings", record)
        data["model"] = replica.served_name
        with self._dispatcher.calling(replica):
            reply = await self._upstream.post_json(replica.base_url, PATH, orjson.dumps(data))
        if reply.status != 200:
            raise engine_error(reply.status, reply.body)
        try:
            answer = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            raise EngineError("The engine sent an unreadable answer.") from None
        usage = answer.get("usage") or {}
        record.prompt_tokens = usage.get("prompt_tokens")
        answer["model"] = route.model
        return orjson.dumps(answer)
