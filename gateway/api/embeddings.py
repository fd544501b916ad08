"""``POST /v1/embeddings``."""

from __future__ import annotations

from litestar import Controller, Request, Response, post

from gateway.api.disconnect import unless_disconnected
from gateway.api.middleware import record_of
from gateway.services.embeddings import EmbeddingsService


class EmbeddingsController(Controller):
    """OpenAI embeddings (float or base64)."""

    path = "/v1/embeddings"

    @post(status_code=200)
    async def create(self, request: Request, embeddings: EmbeddingsService) -> Response[bytes]:
        """Relay an embeddings request to the model's engine."""
        record = record_of(request)
        assert record is not None
        body = await request.body()
        answer = await unless_disconnected(request, embeddings.embed(body, record, request.headers))
        return Response(answer, media_type="application/json")
