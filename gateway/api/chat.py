"""``POST /v1/chat/completions``: a plain-ASGI handler (see :mod:`gateway.api.front` for why)."""

from __future__ import annotations

import asyncio

from gateway.api import sse
from gateway.api.asgi import Receive, Scope, ScopeHeaders, Send, read_body, send_json
from gateway.api.disconnect import unless_disconnected
from gateway.api.front import HotHandler
from gateway.drain import Drain
from gateway.errors import EngineUnavailableError
from gateway.record import RequestRecord
from gateway.services.chat import ChatService, in_band

_SHUTTING_DOWN = EngineUnavailableError("The gateway is shutting down; the answer was cut short. Retry.")


def chat_handler(chat: ChatService, keepalive: float, max_body: int, drain: Drain) -> HotHandler:
    """The handler relaying chat completions, JSON or server-sent events, to the engines.

    ``keepalive``: seconds between SSE pings while a stream waits for an engine to load on demand.
    ``drain``: a stream still open when the shutdown runs out of time ends with an in-band error.
    """

    async def chat_completions(scope: Scope, receive: Receive, send: Send, record: RequestRecord) -> None:
        data, parsed = chat.prepare(await read_body(scope, receive, max_body), record)
        headers = ScopeHeaders(scope)
        if not parsed.stream:
            answer = await unless_disconnected(receive, chat.complete(data, parsed, record, headers))
            await send_json(send, answer)
            return
        stream = await unless_disconnected(
            receive, chat.open_stream(data, parsed, record, headers, keepalive)
        )
        task = asyncio.current_task()
        assert task is not None
        drain.track(task)
        try:
            if not await sse.send_events(send, receive, stream.batches(), stream.waiting):
                record.error_type = record.error_type or "client_disconnected"
        except asyncio.CancelledError:
            if not drain.expired:
                raise
            task.uncancel()  # the drain ran out of time: end the stream properly, not by a cut
            record.error_type = _SHUTTING_DOWN.code
            await sse.end_with_error(send, in_band(_SHUTTING_DOWN))
        finally:
            drain.untrack(task)
            await stream.aclose()  # however the stream ended (done, failed, client gone): free the engine

    return chat_completions
