"""``POST /v1/chat/completions``: a plain-ASGI route (see :mod:`gateway.api.asgi` for why)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar import asgi
from litestar.handlers import ASGIRouteHandler

from gateway.api import sse
from gateway.api.asgi import ScopeHeaders, read_body, require_post, send_json
from gateway.api.disconnect import unless_disconnected
from gateway.api.middleware import record_in
from gateway.services.chat import PATH, ChatService, ChatStream

if TYPE_CHECKING:
    from litestar.types import Receive, Scope, Send


def chat_route(chat: ChatService, keepalive: float, max_body: int) -> ASGIRouteHandler:
    """The route handler relaying chat completions, JSON or server-sent events, to the engines.

    ``keepalive``: seconds between SSE pings while a stream waits for an engine to load on demand.
    """

    @asgi(PATH, copy_scope=False, name="chat-completions")
    async def chat_completions(scope: Scope, receive: Receive, send: Send) -> None:
        require_post(scope)
        record = record_in(scope)
        data, parsed = chat.prepare(await read_body(scope, receive, max_body), record)
        headers = ScopeHeaders(scope)
        if not parsed.stream:
            answer = await unless_disconnected(receive, chat.complete(data, parsed, record, headers))
            await send_json(send, answer)
            return
        opened = await unless_disconnected(receive, chat.open_stream(data, parsed, record, headers))
        try:
            # A started stream's engine read signals silence itself (empty payloads, sent as pings).
            # An on-demand engine that is loading (minutes): answer now, ping while it loads.
            payloads = opened if isinstance(opened, ChatStream) else sse.pinging(opened, keepalive)
            if not await sse.send_events(send, receive, payloads):
                record.error_type = record.error_type or "client_disconnected"
        finally:
            await opened.aclose()  # however the stream ended (done, failed, client gone): free the engine

    return chat_completions
