from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from gateway.config import parse_config
from gateway.errors import (
    EngineConnectError,
    EngineStatusError,
    EngineUnavailableError,
    GatewayError,
    InvalidRequestError,
)
from gateway.metrics import Metrics
from gateway.record import RequestRecord
from gateway.routing.breaker import Breakers, State
from gateway.routing.load import Loads
from gateway.routing.router import Router
from gateway.routing.table import RouteTable
from gateway.services.caps import Caps
from gateway.services.embeddings import EmbeddingsService
from gateway.services.failover import Failover
from gateway.upstream import UpstreamReply
from tests.unit.conftest import EMBED_URL
from tests.unit.fakes import FakeUpstream, wire


def body(**fields: Any) -> bytes:
    return orjson.dumps({"model": "embed", **fields})


def answer(model: str = "embed") -> UpstreamReply:
    data = {
        "object": "list",
        "model": model,
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    return UpstreamReply(200, orjson.dumps(data))


Service = Callable[[FakeUpstream], EmbeddingsService]


@pytest.fixture
def service(router: Router, failover: Failover, metrics: Metrics) -> Service:
    """An embeddings service over the shared routing pieces, answering from the given upstream."""
    return lambda upstream: EmbeddingsService(router, failover, upstream, metrics, Caps())  # type: ignore[arg-type]


async def test_embed_relays_to_the_engine_and_answers_with_the_public_name(
    service: Service, record: RequestRecord
) -> None:
    upstream = FakeUpstream(reply=answer(model="engine-side-name"))

    result = orjson.loads(
        await service(upstream).embed(body(input="hi", encoding_format="base64"), record, {})
    )

    base_url, path, sent = upstream.calls[0]
    # The configured URL ended in /v1; the gateway adds the path itself.
    assert base_url == EMBED_URL
    assert path == "/v1/embeddings"
    assert sent == {"model": "embed", "input": "hi", "encoding_format": "base64"}
    assert result["model"] == "embed"
    assert record.public_model == "embed"
    assert result["data"][0]["embedding"] == [0.1, 0.2]
    assert record.prompt_tokens == 4
    assert record.model == "embed"


@pytest.mark.parametrize("value", ["", [], [[]], [[1], []]])
async def test_empty_input_is_rejected_before_any_engine_call(
    service: Service, record: RequestRecord, value: object
) -> None:
    upstream = FakeUpstream(reply=answer())

    with pytest.raises(InvalidRequestError) as info:
        await service(upstream).embed(body(input=value), record, {})

    assert info.value.param == "input"
    assert upstream.calls == []


async def test_a_chat_model_cannot_embed(service: Service, record: RequestRecord) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await service(FakeUpstream(reply=answer())).embed(
            orjson.dumps({"model": "chat", "input": "x"}), record, {}
        )

    assert info.value.param == "model"


async def test_engine_4xx_is_relayed_as_the_same_status(service: Service, record: RequestRecord) -> None:
    reply = UpstreamReply(
        400, b'{"error":{"message":"too long","type":"BadRequestError","param":null,"code":400}}'
    )

    with pytest.raises(EngineStatusError) as info:
        await service(FakeUpstream(reply=reply)).embed(body(input="x"), record, {})

    assert (info.value.status, info.value.message) == (400, "too long")


async def test_unreadable_answer_is_not_relayed(service: Service, record: RequestRecord) -> None:
    with pytest.raises(GatewayError) as info:
        await service(FakeUpstream(reply=UpstreamReply(200, b"<html>"))).embed(body(input="x"), record, {})
    assert info.value.status >= 500


async def test_unreachable_engine_is_marked_down(
    service: Service, breakers: Breakers, loads: Loads, record: RequestRecord
) -> None:
    upstream = FakeUpstream(error=EngineConnectError("the engine is unreachable"))

    with pytest.raises(EngineUnavailableError):
        await service(upstream).embed(body(input="x"), record, {})

    assert breakers.state("embed-0") is State.DOWN
    assert loads.in_flight("embed-0") == 0


async def test_embed_fails_over_to_another_replica_and_notes_what_served(metrics: Metrics) -> None:
    first, second = "http://127.0.0.1:11", "http://127.0.0.1:12"
    text = f"""
models:
  - name: embed
    task: embeddings
    versions:
      v1: {{weight: 1, engines: [{{url: "{first}"}}, {{url: "{second}"}}]}}
"""
    table = RouteTable.from_config(parse_config(text))
    breakers = Breakers()
    for replica in table.replicas():
        breakers.mark(replica.id, State.UP)
    w = wire(table, metrics, breakers=breakers)
    upstream = FakeUpstream(per_url={first: EngineConnectError("unreachable"), second: answer(model="x")})
    record = RequestRecord(request_id="r", route="/v1/embeddings")

    result = orjson.loads(
        await EmbeddingsService(w.router, w.failover, upstream, metrics, Caps()).embed(
            body(input="x"), record, {}
        )  # type: ignore[arg-type]
    )

    assert [url for url, _, _ in upstream.calls] == [first, second]
    assert result["model"] == "embed:v1"
    assert (record.routed_model, record.version, record.replica) == ("embed", "v1", "embed-v1-1")
    assert (record.retries, record.public_model) == (1, "embed:v1")
    assert w.breakers.state("embed-v1-0") is State.DOWN
    assert w.loads.in_flight("embed-v1-0") == w.loads.in_flight("embed-v1-1") == 0
