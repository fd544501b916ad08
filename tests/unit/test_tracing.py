"""Traces: a real gateway (uvicorn on loopback) in front of an engine stand-in that records the
headers it is sent, with spans kept by the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.app import create_app
from gateway.config import OffloadConfig, parse_config
from gateway.keys import hash_key
from gateway.settings import HealthSettings, LogSettings, Settings, TracingSettings
from gateway.tracing import Tracing, start_tracing, traces_url
from tests.integration.servers import eventually, serve_in_thread
from tests.unit.fakes import chunk, usage_chunk

KEY = "ofl-test-tracing-key"
MESSAGES = [{"role": "user", "content": "hi"}]
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


class Engine:
    """Answers like vLLM's OpenAI server (a body with ``"fail": true`` gets a 500), and keeps the
    headers of every request it is sent."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    async def health(self, _: Request) -> Response:
        return Response()

    async def chat(self, request: Request) -> Response:
        self.headers.append(dict(request.headers))
        body = await request.json()
        model = body["model"]
        if body.get("fail"):
            return JSONResponse({"error": {"message": "boom", "type": "InternalError", "code": 500}}, 500)
        if not body.get("stream"):
            answer = {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Paris"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            }
            return JSONResponse(answer)

        async def events() -> AsyncIterator[bytes]:
            for event in (
                chunk("Par", model=model),
                chunk("is", model=model),
                chunk(finish="stop", model=model),
            ):
                yield b"data: " + orjson.dumps(event) + b"\n\n"
            yield b"data: " + orjson.dumps(usage_chunk(5, 2, model=model)) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def engine() -> Iterator[tuple[Engine, str]]:
    stand_in = Engine()
    app = Starlette(
        routes=[
            Route("/health", stand_in.health),
            Route("/v1/chat/completions", stand_in.chat, methods=["POST"]),
        ]
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    with serve_in_thread(server) as port:
        yield stand_in, f"http://127.0.0.1:{port}"


def _config(url: str) -> OffloadConfig:
    return parse_config(f"""
auth:
  keys:
    - {{name: team-a, hash: "{hash_key(KEY)}"}}
models:
  - name: chat
    task: chat
    versions:
      v1: {{weight: 1, engines: [{{url: "{url}", served_name: engine-chat}}]}}
""")


def serve_gateway(config: OffloadConfig, tracing: Tracing | None) -> Iterator[str]:
    """A gateway for ``config`` under uvicorn on a loopback port (in a thread); yields its URL."""
    settings = Settings(
        health=HealthSettings(probe_interval=600, scrape_interval=0, dns_interval=0),
        log=LogSettings(access=False),
    )
    app = create_app(settings, config, tracing=tracing)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    with serve_in_thread(server) as port:
        yield f"http://127.0.0.1:{port}"


def in_memory(exporter: InMemorySpanExporter) -> Tracing:
    """Tracing on, every span handed to ``exporter`` as it ends."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider)


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def gateway(engine: tuple[Engine, str], exporter: InMemorySpanExporter) -> Iterator[str]:
    """A gateway with tracing on, its spans in ``exporter``."""
    yield from serve_gateway(_config(engine[1]), in_memory(exporter))


@pytest.fixture(scope="module")
def untraced(engine: tuple[Engine, str]) -> Iterator[str]:
    """A gateway with tracing off (the default settings)."""
    yield from serve_gateway(_config(engine[1]), None)


@pytest.fixture(autouse=True)
def fresh(exporter: InMemorySpanExporter, engine: tuple[Engine, str]) -> None:
    exporter.clear()
    engine[0].headers.clear()


def post(base_url: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        base_url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}", **headers},
        timeout=10,
    )


def spans_of(exporter: InMemorySpanExporter, count: int) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The request's server span and its engine spans, once ``count`` spans in all have ended
    (the server span ends just after the client has its answer)."""

    def ended() -> tuple[ReadableSpan, list[ReadableSpan]]:
        spans = exporter.get_finished_spans()
        assert len(spans) == count, [s.name for s in spans]
        (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
        return server, [s for s in spans if s.kind is SpanKind.CLIENT]

    return eventually(ended, timeout=5)


def test_a_request_gets_one_server_span_holding_what_served_it(
    gateway: str, exporter: InMemorySpanExporter
) -> None:
    response = post(gateway, {"model": "chat", "messages": MESSAGES})
    assert response.status_code == 200

    server, (engine,) = spans_of(exporter, 2)
    assert server.name == "POST /v1/chat/completions"
    attrs = dict(server.attributes or {})
    assert attrs["gen_ai.request.model"] == "chat"
    assert attrs["gen_ai.response.model"] == "chat:v1"
    assert attrs["offload.version"] == "v1"
    assert attrs["offload.replica"] == "chat-v1-0"
    assert attrs["offload.key"] == "team-a"
    assert KEY not in str(attrs)
    assert attrs["http.response.status_code"] == 200
    assert attrs["offload.retries"] == 0 and attrs["offload.resumes"] == 0
    assert attrs["offload.request_id"] == response.headers["x-request-id"]
    assert server.status.status_code is StatusCode.UNSET
    assert engine.parent is not None and engine.parent.span_id == server.context.span_id
    assert engine.context.trace_id == server.context.trace_id
    assert dict(engine.attributes or {})["offload.replica"] == "chat-v1-0"
    assert dict(engine.attributes or {})["http.response.status_code"] == 200


def test_the_engine_is_sent_the_engine_spans_traceparent(
    gateway: str, exporter: InMemorySpanExporter, engine: tuple[Engine, str]
) -> None:
    assert post(gateway, {"model": "chat", "messages": MESSAGES}).status_code == 200

    server, (call,) = spans_of(exporter, 2)
    (sent,) = engine[0].headers
    version, trace_id, parent_id, flags = sent["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    assert int(trace_id, 16) == server.context.trace_id
    assert int(parent_id, 16) == call.context.span_id  # the engine's spans hang under the engine call


def test_a_stream_has_an_engine_span_with_its_first_token(
    gateway: str, exporter: InMemorySpanExporter
) -> None:
    with httpx.stream(
        "POST",
        gateway + "/v1/chat/completions",
        json={"model": "chat", "messages": MESSAGES, "stream": True},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        body = response.read().decode()
    assert body.rstrip().endswith("data: [DONE]")

    server, (call,) = spans_of(exporter, 2)
    assert dict(server.attributes or {})["offload.stream"] is True
    assert dict(server.attributes or {})["gen_ai.usage.output_tokens"] == 2
    assert [event.name for event in call.events] == ["first_token"]
    assert call.start_time is not None and call.end_time is not None
    assert call.start_time <= call.events[0].timestamp <= call.end_time
    assert call.end_time <= (server.end_time or 0)  # the engine span lasts until the stream ends
    assert call.status.status_code is StatusCode.UNSET


def test_an_unknown_model_is_a_404_span_without_an_engine_call(
    gateway: str, exporter: InMemorySpanExporter
) -> None:
    assert post(gateway, {"model": "nope", "messages": MESSAGES}).status_code == 404

    server, calls = spans_of(exporter, 1)
    attrs = dict(server.attributes or {})
    assert attrs["http.response.status_code"] == 404
    assert attrs["error.type"] == "model_not_found"
    assert calls == []
    assert server.status.status_code is StatusCode.UNSET  # a client error (OpenTelemetry's HTTP rules)


def test_an_engine_failure_marks_both_spans_as_errors(gateway: str, exporter: InMemorySpanExporter) -> None:
    assert post(gateway, {"model": "chat", "messages": MESSAGES, "fail": True}).status_code == 502

    server, (call,) = spans_of(exporter, 2)
    assert server.status.status_code is StatusCode.ERROR
    assert dict(server.attributes or {})["http.response.status_code"] == 502
    assert call.status.status_code is StatusCode.ERROR
    assert dict(call.attributes or {})["http.response.status_code"] == 500


def test_a_callers_traceparent_is_continued(
    gateway: str, exporter: InMemorySpanExporter, engine: tuple[Engine, str]
) -> None:
    response = post(gateway, {"model": "chat", "messages": MESSAGES}, traceparent=CALLER, tracestate="k=v")
    assert response.status_code == 200

    server, (call,) = spans_of(exporter, 2)
    assert server.context.trace_id == int(CALLER_TRACE, 16)
    assert server.parent is not None and server.parent.span_id == int("00f067aa0ba902b7", 16)
    assert server.parent.is_remote
    (sent,) = engine[0].headers
    assert sent["traceparent"].split("-")[1] == CALLER_TRACE
    assert sent["tracestate"] == "k=v"
    assert call.context.trace_id == int(CALLER_TRACE, 16)


def test_with_tracing_off_nothing_is_traced_and_no_traceparent_is_sent(
    untraced: str, exporter: InMemorySpanExporter, engine: tuple[Engine, str]
) -> None:
    response = post(untraced, {"model": "chat", "messages": MESSAGES}, traceparent=CALLER)
    assert response.status_code == 200

    (sent,) = engine[0].headers
    assert "traceparent" not in sent and "tracestate" not in sent
    assert exporter.get_finished_spans() == ()


def test_tracing_is_off_without_an_endpoint_and_the_endpoint_gets_the_traces_path() -> None:
    assert start_tracing(TracingSettings()) is None
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://c:4318/v1/traces/") == "http://c:4318/v1/traces"
    with pytest.raises(ValueError, match="not an OTLP/HTTP URL"):
        TracingSettings(endpoint="127.0.0.1:4318")
