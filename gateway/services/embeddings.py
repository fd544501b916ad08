"""Embeddings: validate, choose version and replica, relay (float/base64 encoding is the engine's job)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.config import AdmissionConfig
from gateway.errors import InvalidRequestError
from gateway.metrics import Metrics
from gateway.protocol import paths
from gateway.protocol.embeddings import EmbeddingRequest
from gateway.record import RequestRecord
from gateway.routing.router import Router
from gateway.routing.table import Replica
from gateway.services.admission import Admission
from gateway.services.caps import Caps
from gateway.services.failover import Failover, resolve
from gateway.services.parsing import parse_body
from gateway.services.replies import post_answer
from gateway.upstream import Upstream

PATH = paths.EMBEDDINGS


class EmbeddingsService:
    """Serves ``/v1/embeddings`` for every configured embeddings model."""

    def __init__(
        self,
        router: Router,
        failover: Failover,
        upstream: Upstream,
        metrics: Metrics,
        caps: Caps,
        admission: Admission | None = None,
    ) -> None:
        self._caps = caps
        self._admission = admission or Admission(AdmissionConfig(), metrics)
        self._router = router
        self._failover = failover
        self._upstream = upstream
        self._metrics = metrics

    async def embed(self, body: bytes, record: RequestRecord, headers: Mapping[str, str]) -> bytes:
        """The engine's embedding list, with ``model`` set to the public name of what served it."""
        data, request = parse_body(body, EmbeddingRequest)
        record.model = request.model
        if request.input_is_empty():
            raise InvalidRequestError("'input' must not be empty.", param="input")
        self._caps.check_embeddings(request, record.caps)
        route, choice = resolve(
            self._router, self._metrics, record, request.model, "embeddings", request.user, headers
        )

        async def attempt(replica: Replica) -> dict[str, Any]:
            return await post_answer(self._upstream, replica, PATH, data)

        gate = await self._admission.enter(choice.version, record)
        try:
            answer, used = await self._failover.run(route, choice.version, record, attempt)
        finally:
            if gate is not None:
                gate.leave(record.key or "")
        record.prompt_tokens = (answer.get("usage") or {}).get("prompt_tokens")
        record.public_model = answer["model"] = used.public_id
        return orjson.dumps(answer)
