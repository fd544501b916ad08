"""The hot routes, served before Litestar's router and exception middleware.

``POST /v1/chat/completions`` and ``POST /v1/embeddings`` go straight to their ASGI handlers; any other
request (and any other method on those paths, which Litestar answers with 405) goes on to Litestar.
Errors raised before the response starts are answered here in the same OpenAI shape as Litestar's
exception handlers give (:mod:`gateway.api.errors`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from gateway.api.asgi import send_json
from gateway.api.errors import error_body, unexpected
from gateway.api.middleware import record_in
from gateway.services.errors import GatewayError

if TYPE_CHECKING:
    from litestar.handlers import ASGIRouteHandler
    from litestar.types import ASGIApp, Receive, Scope, Send


class HotRoutes:
    """An ASGI app: the given route handlers for POST on their paths, ``app`` for the rest."""

    def __init__(self, app: ASGIApp, handlers: Iterable[ASGIRouteHandler]) -> None:
        self._app = app
        self._routes = {path: handler.fn for handler in handlers for path in handler.paths}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        is_post = scope["type"] == "http" and scope["method"] == "POST"
        route = self._routes.get(scope["path"]) if is_post else None
        if route is None:
            await self._app(scope, receive, send)
            return
        record = record_in(scope)
        try:
            await route(scope, receive, send)  # type: ignore[call-arg,arg-type]
        except Exception as exc:
            if record.status:  # the response has started: too late for an error response
                raise
            error = exc if isinstance(exc, GatewayError) else unexpected(scope["path"], exc)
            record.error_type = error.code
            body, headers = error_body(error)
            await send_json(send, body, error.status, headers)
