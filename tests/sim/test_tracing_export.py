"""Traces leave the gateway process: ``OFFLOAD_TRACING__ENDPOINT`` pointed at a loopback OTLP/HTTP
receiver, which decodes what it is sent with OpenTelemetry's own protobuf types."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.integration.servers import GatewayProcess, eventually, serve_in_thread
from tests.sim.conftest import RunningSim
from tests.sim.test_grpc import Door, hi

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class Receiver:
    """An OTLP/HTTP trace receiver (``POST /v1/traces``, protobuf) keeping the spans and the
    ``service.name`` of whoever sent them."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.services: set[str] = set()
        self._lock = threading.Lock()

    async def traces(self, request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        with self._lock:
            for resource_spans in export.resource_spans:
                for attribute in resource_spans.resource.attributes:
                    if attribute.key == "service.name":
                        self.services.add(attribute.value.string_value)
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
        return Response(b"", media_type="application/x-protobuf")

    def one_request(self) -> tuple[Span, Span]:
        """The one server span and the one engine span received (fails until both are there)."""
        with self._lock:
            spans = list(self.spans)
        servers = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
        clients = [s for s in spans if s.kind == Span.SPAN_KIND_CLIENT]
        assert len(servers) == 1 and len(clients) == 1, [s.name for s in spans]
        return servers[0], clients[0]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    received = Receiver()
    app = Starlette(routes=[Route("/v1/traces", received.traces, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    with serve_in_thread(server) as port:
        yield received, f"http://127.0.0.1:{port}"


def test_a_gateway_with_an_endpoint_exports_its_spans_over_otlp(
    tmp_path: Path, sim: RunningSim, receiver: tuple[Receiver, str]
) -> None:
    received, endpoint = receiver
    models = [{"name": "chat", "task": "chat", "engine": {"url": sim.base_url, "served_name": "sim"}}]
    env = {
        "OFFLOAD_TRACING__ENDPOINT": endpoint,
        "OFFLOAD_TRACING__SERVICE_NAME": "offload-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # the SDK's batch interval: a tenth of a second, not five
    }
    gateway = GatewayProcess(tmp_path, models, env).start()
    try:
        client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="x", max_retries=0, timeout=10)
        chunks = list(
            client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
        assert chunks
        server, call = eventually(received.one_request, timeout=10)
    finally:
        gateway.stop()
    assert received.services == {"offload-under-test"}
    assert server.name == "POST /v1/chat/completions"
    attributes = {a.key: a.value for a in server.attributes}
    assert attributes["gen_ai.response.model"].string_value == "chat"
    assert attributes["offload.replica"].string_value == "chat-0"
    assert attributes["http.response.status_code"].int_value == 200
    assert call.trace_id == server.trace_id and call.parent_span_id == server.span_id
    assert [event.name for event in call.events] == ["first_token"]


def test_a_grpc_call_gets_the_same_spans_and_continues_its_callers_trace(
    tmp_path: Path, sim: RunningSim, receiver: tuple[Receiver, str]
) -> None:
    received, endpoint = receiver
    models = [{"name": "chat", "task": "chat", "engine": {"url": sim.base_url, "served_name": "sim"}}]
    env = {"OFFLOAD_TRACING__ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    door = Door(tmp_path, models, env=env)
    try:
        caller = (("traceparent", f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"),)
        assert list(door.stub.Chat(hi(), metadata=caller, timeout=10))
        server, call = eventually(received.one_request, timeout=10)
    finally:
        door.close()
    assert server.name == "gRPC /v1/chat/completions"
    assert server.trace_id.hex() == CALLER_TRACE
    assert server.parent_span_id.hex() == "00f067aa0ba902b7"
    attributes = {a.key: a.value for a in server.attributes}
    assert attributes["rpc.system"].string_value == "grpc"
    assert attributes["offload.replica"].string_value == "chat-0"
    assert call.parent_span_id == server.span_id
    assert [event.name for event in call.events] == ["first_token"]
