"""Chat completions: validate, choose version and replica, relay to the engine, normalise the answer."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import orjson

from gateway.metrics import Metrics
from gateway.protocol.chat import FINISH_REASONS, ChatCompletionRequest
from gateway.protocol.errors import ErrorDetail, ErrorResponse
from gateway.routing.table import Replica, Route, Version
from gateway.routing.versions import choose_shadows
from gateway.services.accounting import RequestRecord
from gateway.services.dispatch import Dispatcher, engine_error, post_answer
from gateway.services.errors import EngineError, GatewayError
from gateway.services.parsing import parse_body
from gateway.services.shadow import ShadowSender
from gateway.upstream import EventStream, Upstream

PATH = "/v1/chat/completions"
_OK_FINISH = FINISH_REASONS | {None}


def prefix_key(request: ChatCompletionRequest, chars: int) -> str:
    """A short digest of the prompt's first ``chars`` characters (for prefix affinity)."""
    parts: list[str] = []
    size = 0
    for message in request.messages:
        content = message.content
        text = content if isinstance(content, str) else orjson.dumps(content).decode() if content else ""
        parts.append(f"{message.role}\x1e{text}\x1d")
        size += len(parts[-1])
        if size >= chars:
            break
    return hashlib.blake2b("".join(parts)[:chars].encode(), digest_size=12).hexdigest()


class ChatService:
    """Serves ``/v1/chat/completions`` for every configured chat model."""

    def __init__(
        self, dispatcher: Dispatcher, upstream: Upstream, metrics: Metrics, shadows: ShadowSender
    ) -> None:
        self._dispatcher = dispatcher
        self._upstream = upstream
        self._metrics = metrics
        self._shadows = shadows

    def prepare(self, body: bytes, record: RequestRecord) -> tuple[dict[str, Any], ChatCompletionRequest]:
        """Parse and validate a request body; fills in what the record needs to know early."""
        data, request = parse_body(body, ChatCompletionRequest)
        record.model = request.model
        record.stream = request.stream
        return data, request

    def _target(
        self,
        data: dict[str, Any],
        request: ChatCompletionRequest,
        record: RequestRecord,
        headers: Mapping[str, str],
    ) -> tuple[Route, Version, str | None]:
        """Route, version (sticky by session), prefix key; and the shadow copies, sent now."""
        route, choice = self._dispatcher.resolve(request.model, "chat", request.user, record, headers)
        key = prefix_key(request, route.prefix_chars) if choice.version.policy == "prefix_affinity" else None
        shadows = choose_shadows(route, choice.version, record.request_id)
        if shadows:
            self._shadows.send(route, shadows, PATH, data)
        return route, choice.version, key

    async def complete(
        self,
        data: dict[str, Any],
        request: ChatCompletionRequest,
        record: RequestRecord,
        headers: Mapping[str, str],
    ) -> bytes:
        """A non-streaming completion: the engine's JSON answer, normalised."""
        route, version, key = self._target(data, request, record, headers)

        async def attempt(replica: Replica) -> dict[str, Any]:
            answer = await post_answer(self._upstream, replica, PATH, data)
            if _aborted(answer.get("choices") or ()):
                raise EngineError("The engine aborted the request.")
            return answer

        answer, used = await self._dispatcher.with_failover(route, version, record, attempt, key)
        usage = answer.get("usage") or {}
        record.prompt_tokens = usage.get("prompt_tokens")
        record.completion_tokens = usage.get("completion_tokens")
        record.public_model = answer["model"] = used.public_id
        return orjson.dumps(answer)

    async def open_stream(
        self,
        data: dict[str, Any],
        request: ChatCompletionRequest,
        record: RequestRecord,
        headers: Mapping[str, str],
    ) -> ChatStream | AsyncGenerator[bytes, None]:
        """Start a stream. What fails before the engine starts answering raises here (a real status,
        after failover); what fails later becomes an in-band error event.

        When the version's engine must first be loaded on demand (minutes), a lazy stream comes back
        at once instead: the transport can start the response and ping while it loads; a failure to
        load then arrives in-band.
        """
        route, version, key = self._target(data, request, record, headers)
        # Ask for usage even when the client did not, for accounting; that chunk is then dropped.
        data["stream_options"] = {**(data.get("stream_options") or {}), "include_usage": True}
        if self._dispatcher.needs_start(route, version):
            return self._lazy(route, version, key, data, request, record)
        return await self._open(route, version, key, data, request, record)

    async def _open(
        self,
        route: Route,
        version: Version,
        key: str | None,
        data: dict[str, Any],
        request: ChatCompletionRequest,
        record: RequestRecord,
    ) -> ChatStream:
        async def attempt(replica: Replica) -> tuple[EventStream, Replica]:
            opened = await self._upstream.open_stream(replica.base_url, PATH, _body(data, replica))
            if not isinstance(opened, EventStream):
                raise engine_error(opened.status, opened.body)
            return opened, replica

        (stream, replica), used = await self._dispatcher.with_failover(route, version, record, attempt, key)
        record.public_model = used.public_id
        labels = (route.model, used.label, replica.id)
        events = self._relay(stream, used.public_id, labels, request.include_usage, record)
        return ChatStream(events, stream, self._dispatcher.hold(replica))

    async def _lazy(
        self,
        route: Route,
        version: Version,
        key: str | None,
        data: dict[str, Any],
        request: ChatCompletionRequest,
        record: RequestRecord,
    ) -> AsyncGenerator[bytes, None]:
        try:
            stream = await self._open(route, version, key, data, request, record)
        except GatewayError as exc:
            record.error_type = exc.code
            yield _in_band(exc)
            return
        try:
            async for payload in stream:
                yield payload
        finally:
            await stream.aclose()

    async def _relay(
        self,
        stream: EventStream,
        public_id: str,
        labels: tuple[str, str, str],
        include_usage: bool,
        record: RequestRecord,
    ) -> AsyncGenerator[bytes, None]:
        """Engine events -> client events (JSON payloads; framing is the transport's job)."""
        itl = self._metrics.itl.labels(*labels)
        health = self._dispatcher.health
        last = 0.0
        try:
            async for payload in stream:
                if not payload:  # engine silent: let the transport send a keep-alive
                    yield payload
                    continue
                try:
                    event = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    raise EngineError("The engine sent an unreadable event.") from None
                if not isinstance(event, dict):
                    continue
                if "error" in event:
                    record.error_type = "engine_error"
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
                elif _aborted(choices):
                    record.error_type = "engine_aborted"
                    yield _in_band(EngineError("The engine aborted the request."))
                    return
                now = time.perf_counter()
                if record.ttft_s is None:
                    record.ttft_s = now - record.started
                    self._metrics.child(self._metrics.ttft, *labels).observe(record.ttft_s)
                else:
                    itl.observe(now - last)
                last = now
                if event.get("model") != public_id:
                    event["model"] = public_id
                    payload = orjson.dumps(event)
                yield payload
            health.success(labels[2])
        except GatewayError as exc:
            record.error_type = exc.code
            health.failure(labels[2], unreachable=False)
            yield _in_band(exc)
        finally:
            stream.close()


def _aborted(choices: Iterable[dict[str, Any]]) -> bool:
    """Whether a choice finished for a reason other than the normal ones (vLLM's ``abort``, ``error``)."""
    return any(choice.get("finish_reason") not in _OK_FINISH for choice in choices)


def _body(data: dict[str, Any], replica: Replica) -> bytes:
    return orjson.dumps({**data, "model": replica.served_name})


class ChatStream:
    """A started stream: iterate for client payloads; :meth:`aclose` always frees the engine.

    ``aclose`` is safe to call more than once and also works when iteration never began (a client
    that left before the first byte), which a bare async generator's ``aclose`` would not cover.
    """

    def __init__(
        self, events: AsyncGenerator[bytes, None], upstream: EventStream, on_close: Callable[[], None]
    ) -> None:
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
            try:
                await self._upstream.aclose()
            finally:
                if self._on_close is not None:
                    self._on_close, on_close = None, self._on_close
                    on_close()


def _in_band(error: GatewayError) -> bytes:
    """The ``data: {"error": ...}`` payload sent when a stream fails after its first byte."""
    body = ErrorResponse(
        error=ErrorDetail(message=error.message, type=error.type, param=error.param, code=error.code)
    )
    return orjson.dumps(body.model_dump())
