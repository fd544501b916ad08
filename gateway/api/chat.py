"""``POST /v1/chat/completions``."""

from __future__ import annotations

from litestar import Controller, Request, Response, post
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream

from gateway.api import sse
from gateway.api.disconnect import unless_disconnected
from gateway.api.middleware import record_of
from gateway.services.chat import ChatService, ChatStream
from gateway.settings import UpstreamSettings


class ChatController(Controller):
    """OpenAI chat completions, JSON or server-sent events."""

    path = "/v1/chat/completions"

    @post(status_code=200)
    async def create(
        self, request: Request, chat: ChatService, upstream_settings: UpstreamSettings
    ) -> Response[bytes] | Stream:
        """Relay a chat completion to the model's engine."""
        record = record_of(request)
        assert record is not None
        body = await request.body()
        data, parsed = chat.prepare(body, record)
        if not parsed.stream:
            answer = await unless_disconnected(request, chat.complete(data, parsed, record, request.headers))
            return Response(answer, media_type="application/json")
        opened = await unless_disconnected(request, chat.open_stream(data, parsed, record, request.headers))
        if isinstance(opened, ChatStream):
            body = sse.relay(opened)  # the engine read itself signals silence for keep-alives
        else:  # an on-demand engine is loading (minutes): answer now, ping while it loads
            body = sse.frame(opened, upstream_settings.keepalive_interval)
        return Stream(
            body,
            media_type=sse.MEDIA_TYPE,
            headers=sse.HEADERS,
            # Runs however the response ends (done, failed or client gone): frees the engine.
            background=BackgroundTask(opened.aclose),
        )
