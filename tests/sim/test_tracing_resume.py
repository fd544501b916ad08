"""Traces of a stream resumed on another replica: two engine spans under the one request span,
the broken one marked as an error, the continuation with its own first token."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from engines.sim import Knobs, SimConfig
from gateway.config import parse_config
from tests.integration.servers import eventually
from tests.sim.conftest import serve_sim
from tests.unit.test_tracing import in_memory, serve_gateway

TOKENS = 16


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[str, InMemorySpanExporter]]:
    """A gateway with tracing on (in memory) in front of two simulator replicas."""
    exporter = InMemorySpanExporter()
    sim = SimConfig(model="sim", knobs=Knobs(output_tokens=TOKENS, itl=0.002))
    with serve_sim(sim) as a, serve_sim(sim) as b:
        engines = ", ".join(f'{{url: "{r.base_url}", served_name: sim}}' for r in (a, b))
        config = parse_config(f"models:\n  - {{name: chat, task: chat, engines: [{engines}]}}\n")
        for url in serve_gateway(config, in_memory(exporter)):
            yield url, exporter


def test_a_resumed_stream_has_one_engine_span_per_engine_it_used(
    traced: tuple[str, InMemorySpanExporter],
) -> None:
    url, exporter = traced
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)
    fault = {"sim": {"reset_after": 5, "fault_scope": "original"}}  # breaks after 4 tokens
    chunks = list(
        client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], stream=True, extra_body=fault
        )
    )
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["stop"]

    def ended() -> tuple[ReadableSpan, list[ReadableSpan]]:
        spans = exporter.get_finished_spans()
        servers = [s for s in spans if s.kind is SpanKind.SERVER]
        calls = sorted((s for s in spans if s.kind is SpanKind.CLIENT), key=lambda s: s.start_time or 0)
        assert len(servers) == 1 and len(calls) == 2, [s.name for s in spans]
        return servers[0], calls

    server, (broken, continued) = eventually(ended, timeout=5)
    assert dict(server.attributes or {})["offload.resumes"] == 1
    assert server.status.status_code is StatusCode.UNSET
    assert broken.status.status_code is StatusCode.ERROR
    assert continued.status.status_code is StatusCode.UNSET
    for call in (broken, continued):
        assert call.parent is not None and call.parent.span_id == server.context.span_id
        assert [e.name for e in call.events] == ["first_token"]
