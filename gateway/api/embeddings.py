"""``POST /v1/embeddings``: a plain-ASGI handler (see :mod:`gateway.api.front` for why)."""

from __future__ import annotations

from gateway.api.asgi import Receive, Scope, ScopeHeaders, Send, read_body, send_json
from gateway.api.disconnect import unless_disconnected
from gateway.api.front import HotHandler
from gateway.record import RequestRecord
from gateway.services.embeddings import EmbeddingsService


def embeddings_handler(embeddings: EmbeddingsService, max_body: int) -> HotHandler:
    """The handler relaying embeddings requests (float or base64) to the engines."""

    async def create_embeddings(scope: Scope, receive: Receive, send: Send, record: RequestRecord) -> None:
        body = await read_body(scope, receive, max_body)
        answer = await unless_disconnected(receive, embeddings.embed(body, record, ScopeHeaders(scope)))
        await send_json(send, answer)

    return create_embeddings
