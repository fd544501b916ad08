"""``POST /v1/embeddings``: a plain-ASGI route (see :mod:`gateway.api.asgi` for why)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar import asgi
from litestar.handlers import ASGIRouteHandler

from gateway.api.asgi import ScopeHeaders, read_body, require_post, send_json
from gateway.api.disconnect import unless_disconnected
from gateway.api.middleware import record_in
from gateway.services.embeddings import PATH, EmbeddingsService

if TYPE_CHECKING:
    from litestar.types import Receive, Scope, Send


def embeddings_route(embeddings: EmbeddingsService, max_body: int) -> ASGIRouteHandler:
    """The route handler relaying embeddings requests (float or base64) to the engines."""

    @asgi(PATH, copy_scope=False, name="embeddings")
    async def create_embeddings(scope: Scope, receive: Receive, send: Send) -> None:
        require_post(scope)
        record = record_in(scope)
        body = await read_body(scope, receive, max_body)
        answer = await unless_disconnected(receive, embeddings.embed(body, record, ScopeHeaders(scope)))
        await send_json(send, answer)

    return create_embeddings
