"""Embeddings: validate, choose version and replica, relay (float/base64 encoding is the engine's job)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.protocol.embeddings import EmbeddingRequest
from gateway.routing.table import Replica
from gateway.services.accounting import RequestRecord
from gateway.services.dispatch import Dispatcher, post_answer
from gateway.services.errors import InvalidRequestError
from gateway.services.parsing import parse_body
from gateway.upstream import Upstream

PATH = "/v1/embeddings"


class EmbeddingsService:
    """Serves ``/v1/embeddings`` for every configured embeddings model."""

    def __init__(self, dispatcher: Dispatcher, upstream: Upstream) -> None:
        self._dispatcher = dispatcher
        self._upstream = upstream

    async def embed(self, body: bytes, record: RequestRecord, headers: Mapping[str, str]) -> bytes:
        """The engine's embedding list, with ``model`` set to the public name of what served it."""
        data, request = parse_body(body, EmbeddingRequest)
        record.model = request.model
        if request.input_is_empty():
            raise InvalidRequestError("'input' must not be empty.", param="input")
        route, choice = self._dispatcher.resolve(request.model, "embeddings", request.user, record, headers)

        async def attempt(replica: Replica) -> dict[str, Any]:
            return await post_answer(self._upstream, replica, PATH, data)

        answer, used = await self._dispatcher.with_failover(route, choice.version, record, attempt)
        record.prompt_tokens = (answer.get("usage") or {}).get("prompt_tokens")
        record.public_model = answer["model"] = used.public_id
        return orjson.dumps(answer)
