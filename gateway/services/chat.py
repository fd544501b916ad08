"""Chat completions: validate, pick a replica, relay to the engine, normalise the answer."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import orjson

from gateway.metrics import Metrics
from gateway.protocol.chat import FINISH_REASONS, ChatCompletionRequest
from gateway.protocol.errors import ErrorDetail, ErrorResponse
from gateway.services.accounting import RequestRecord
from gateway.services.dispatch import Dispatcher, engine_error
from gateway.services.errors import EngineError, GatewayError
from gateway.services.parsing import parse_body
from gateway.upstream import EventStream, Upstream, UpstreamReply

PATH = "/v1/chat/completions"


class ChatService:
    """Serves ``/v1/chat/completions`` for every configured chat model."""

    def __init__(self, dispatcher: Dispatcher, upstream: Upstream, metrics: Metrics) -> None:
        self._dispatcher = dispatcher
        self._upstream = upstream
        self._metrics = metrics

    def prepare(self, body: bytes, record: RequestRecord) -> tuple[dict[str, Any], ChatCompletionRequest]:
        """Parse and validate a request body; fills in what the record needs to know early."""
        data, request = parse_body(body, ChatCompletionRequest)
        record.model = request.model
        record.stream = request.stream
        return data, request

    async def complete(self, data: dict[str, Any], request: ChatCompletionRequest, record: RequestRecord) -> bytes:
        """A non-streaming completion: the engine's JSON answer, normalised."""
        route, replica = self._dispatcher.pick(request.model, "chat", record)
        data["model"] = replica.served_name
        with self._dispatcher.calling(replica):
            reply = await self._upstream.post_json(replica.base_url, PATH, orjson.dumps(data))
        if reply.status != 200:
            raise engine_error(reply.status, reply.body)
        try:
            answer = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            raise EngineError("The engine sent an unreadable answer.") from None
        for choice in answer.get("choices") or ():
            if choice.get("finish_reason") not in FINISH_REASONS | {None}:
                raise EngineError("The engine aborted the request.")
        usage = answer.get("usage") or {}
        record.prompt_tokens = usage.get("prompt_tokens")
        record.completion_tokens = usage.get("completion_tokens")
        answer["model"] = route.model
        return orjson.dumps(answer)

    async def open_stream(
        self, data: dict[str, Any], request: ChatCompletionRequest, record: RequestRecord
    ) -> ChatStream:
        """Start a stream. Everything that can fail before the first byte raises here (so the
        client gets a real status); what fails later becomes an in-band error event."""
        route, replica = self._dispatcher.pick(request.model, "chat", record)
        data["model"] = replica.served_name
        # Ask for usage even when the client did not, for accounting; that chunk is then dropped.
        data["stream_options"] = {**(data.get("stream_options") or {}), "include_usage": True}
        with self._dispatcher.calling(replica):
            opened = await self._upstream.open_stream(replica.base_url, PATH, orjson.dumps(data))
        if isinstance(opened, UpstreamReply):
            raise engine_error(opened.status, opened.body)
        self._dispatcher.health.begin(replica.id)
        events = self._relay(opened, route.model, request.include_usage, record)
        return ChatStream(events, opened, lambda: self._dispatcher.health.end(replica.id))

    async def _relay(
        self,
        stream: EventStream,
        model: str,
        include_usage: bool,
        record: RequestRecord,
    ) -> AsyncGenerator[bytes, None]:
        """Engine events -> client events (JSON payloads; framing is the transport's job)."""
        itl = self._metrics.itl.labels(model)
        last = 0.0
        try:
            async for payload in stream:
                event = orjson.loads(payload)
                if not isinstance(event, dict):
                    continue
                if "error" in event:
                    yield _in_band(engine_error(502, payload))
                    return
                choices = event.get("choices")
                if not choices:
                    usage = event.get("usage")
                    if usage:
                        record.prompt_tokens = usage.get("prompt_tokens")
                        record.completion_tokens = usage.get("completion_tokens")
                        if not include_usage:
                            continue
                elif any(c.get("finish_reason") not in FINISH_REASONS | {None} for c in choices):
                    yield _in_band(EngineError("The engine aborted the request."))
                    return
                now = time.perf_counter()
                if record.ttft_s is None:
                    record.ttft_s = now - record.started
                    self._metrics.ttft.labels(model).observe(record.ttft_s)
                else:
                    itl.observe(now - last)
                last = now
                if event.get("model") != model:
                    event["model"] = model
                    payload = orjson.dumps(event)
                yield payload
        except GatewayError as exc:
            record.error_type = exc.code
            yield _in_band(exc)
        finally:
            stream.close()


class ChatStream:
    """A started stream: iterate for client payloads; :meth:`aclose` always frees the engine.

    ``aclose`` is safe to call more than once and also works when iteration never began (a client
    that left before the first byte), which a bare async generator's ``aclose`` would not cover.
    """

    def __init__(self, events: AsyncGenerator[bytes, None], upstream: EventStream, on_close: Callable[[], None]) -> None:
        self._events = events
        self._upstream = upstream
        self._on_close: Callable[[], None] | None = on_close

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events

    async def aclose(self) -> None:
        """Stop relaying and close the engine connection (aborting unfinished work)."""
        try:
            await self._events.aclose()
        finally:
            self._upstream.close()
            if self._on_close is not None:
                self._on_close, on_close = None, self._on_close
                on_close()


def _in_band(error: GatewayError) -> bytes:
    """The ``data: {"error": ...}`` payload sent when a stream fails after its first byte."""
    body = ErrorResponse(
        error=ErrorDetail(message=error.message, type=error.type, param=error.param, code=error.code)
    )
    return orjson.dumps(body.model_dump())
