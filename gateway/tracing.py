"""OpenTelemetry traces: off unless ``tracing.endpoint`` is set (``OFFLOAD_TRACING__ENDPOINT``).

* One server span per API request (HTTP ``/v1/...`` and gRPC calls), started when it arrives and
  ended with what its :class:`RequestRecord` says at the end: model requested and served, version,
  replica, key name (never the key), status, retries, resumes, tokens.
* One client span per engine call (each failover attempt, each resume, each shadow copy), a child of
  the request's, with the replica and the engine's status; a stream's also gets a ``first_token``
  event and lasts until the stream ends.
* The engine call carries that client span's W3C ``traceparent`` (and ``tracestate``), so vLLM's own
  spans join the trace; a request that arrives with a ``traceparent`` continues its caller's trace.

Off, none of it runs: the parts hold ``None`` instead of a :class:`Tracing` (one ``is None`` check
where a request starts, ends and reaches an engine), and the SDK and exporter are never imported.
Spans are exported in batches by the SDK's ``BatchSpanProcessor`` (its ``OTEL_BSP_*`` variables
apply) over OTLP/HTTP; the exporter's own ``OTEL_EXPORTER_OTLP_*`` variables (headers, timeout,
certificates) apply too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextvars import Token
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway import __version__
from gateway.record import RequestRecord
from gateway.settings import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.util.types import AttributeValue

_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
_REPLICA = "offload.replica"  # the OpenTelemetry context key naming the replica of an attempt
_TRACES_PATH = "/v1/traces"
_SHUTDOWN_SECONDS = 10.0


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector endpoint (``/v1/traces`` added unless already there)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(_TRACES_PATH) else endpoint + _TRACES_PATH


def start_tracing(settings: TracingSettings) -> Tracing | None:
    """A :class:`Tracing` exporting to ``settings.endpoint``; None when no endpoint is set."""
    if settings.endpoint is None:
        return None
    # Imported here: a gateway with tracing off never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        resource=Resource.create({"service.name": settings.service_name, "service.version": __version__}),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(settings.endpoint))))
    return Tracing(provider)


class RequestSpan:
    """The server span of one request, current (in OpenTelemetry's context) until :meth:`end`."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span, token: Token[otel_context.Context]) -> None:
        self._span = span
        self._token = token

    def end(self, record: RequestRecord) -> None:
        """Note what the record says about the request and end the span."""
        span = self._span
        if span.is_recording():
            span.set_attributes(_attributes(record))
            if _failed(record):
                span.set_status(trace.StatusCode.ERROR, record.error_type)
        span.end()
        otel_context.detach(self._token)


class EngineCall:
    """The client span of one engine call and the headers that carry its context to the engine."""

    __slots__ = ("_ended", "_first", "headers", "span")

    def __init__(self, span: trace.Span, headers: dict[str, str]) -> None:
        self.span = span
        self.headers = headers
        self._first = True
        self._ended = False

    def first_token(self) -> None:
        """The engine's first event arrived (a stream's time to first token); later calls do nothing."""
        if self._first:
            self._first = False
            self.span.add_event("first_token")

    def failed(self, error: str) -> None:
        """The call failed (``error``: the gateway's error code)."""
        self.span.set_attribute("error.type", error)
        self.span.set_status(trace.StatusCode.ERROR, error)

    def end(self, status: int | None = None) -> None:
        """End the span (once), with the engine's HTTP status when one came."""
        if self._ended:
            return
        self._ended = True
        if status is not None:
            self.span.set_attribute("http.response.status_code", status)
            if status >= 400:
                self.failed(str(status))
        self.span.end()


class Tracing:
    """Starts the gateway's spans on one tracer provider (never the global one: no global state)."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("offload", __version__)
        self._propagator = TraceContextTextMapPropagator()

    def request(
        self,
        name: str,
        headers: Iterable[tuple[bytes, bytes]] | Mapping[str, str],
        attributes: Mapping[str, AttributeValue],
    ) -> RequestSpan:
        """Start a request's server span, a child of the caller's ``traceparent`` when it sent one,
        and make it current (the engine calls made while serving the request become its children).

        ``headers``: the HTTP request's raw headers, or a gRPC call's metadata.
        """
        carrier = _carrier(headers)
        parent = self._propagator.extract(carrier) if carrier else None
        span = self._tracer.start_span(name, parent, trace.SpanKind.SERVER, attributes)
        return RequestSpan(span, otel_context.attach(trace.set_span_in_context(span, parent)))

    @contextlib.contextmanager
    def attempt(self, replica: str) -> Iterator[None]:
        """Engine calls made inside name ``replica`` on their span (a failover attempt)."""
        token = otel_context.attach(otel_context.set_value(_REPLICA, replica))
        try:
            yield
        finally:
            otel_context.detach(token)

    def engine_call(
        self, path: str, host: str | None, port: int | None, headers: Mapping[str, str]
    ) -> EngineCall:
        """Start the client span of an engine call (a child of the current request's span); its
        ``headers`` are ``headers`` plus the span's ``traceparent`` (and ``tracestate``)."""
        attributes: dict[str, AttributeValue] = {"http.request.method": "POST", "url.path": path}
        if host is not None:
            attributes["server.address"] = host
        if port is not None:
            attributes["server.port"] = port
        replica = otel_context.get_value(_REPLICA)
        if isinstance(replica, str):
            attributes[_REPLICA] = replica
        span = self._tracer.start_span(f"POST {path}", kind=trace.SpanKind.CLIENT, attributes=attributes)
        carrier = dict(headers)
        self._propagator.inject(carrier, trace.set_span_in_context(span))
        return EngineCall(span, carrier)

    @contextlib.asynccontextmanager
    async def lifespan(self, _: object) -> AsyncIterator[None]:
        """The app's lifespan: at exit, export what is left and stop the exporter (bounded)."""
        try:
            yield
        finally:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_SHUTDOWN_SECONDS):
                    await asyncio.to_thread(self._provider.shutdown)


def _carrier(headers: Iterable[tuple[bytes, bytes]] | Mapping[str, str]) -> dict[str, str]:
    """The W3C trace context headers among a request's headers (empty when it sent none)."""
    if isinstance(headers, Mapping):
        return {name: headers[name] for name in ("traceparent", "tracestate") if name in headers}
    return {name.decode(): value.decode("latin-1") for name, value in headers if name in _TRACE_HEADERS}


def _failed(record: RequestRecord) -> bool:
    """A server error, or a stream that failed after its 200 (an in-band error). A 4xx is the
    client's error, not the server's (OpenTelemetry's HTTP conventions leave such a span unset)."""
    if record.status >= 500:
        return True
    return record.status < 400 and record.error_type not in (None, "client_disconnected")


def _attributes(record: RequestRecord) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        "http.response.status_code": record.status,
        "offload.request_id": record.request_id,
        "offload.retries": record.retries,
        "offload.resumes": record.resumes,
        "offload.stream": record.stream,
    }
    optional: tuple[tuple[str, str | int | float | None], ...] = (
        ("gen_ai.request.model", record.model),
        ("gen_ai.response.model", record.public_model),
        ("offload.model", record.routed_model),
        ("offload.version", record.version),
        ("offload.replica", record.replica),
        ("offload.key", record.key),
        ("error.type", record.error_type),
        ("offload.ttft_s", record.ttft_s),
        ("gen_ai.usage.input_tokens", record.prompt_tokens),
        ("gen_ai.usage.output_tokens", record.completion_tokens),
    )
    attributes.update({name: value for name, value in optional if value is not None})
    return attributes
