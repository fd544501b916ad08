from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.routing.health import HealthRegistry, State
from gateway.record import RequestRecord
from gateway.services.dispatch import Dispatcher
from gateway.services.embeddings import EmbeddingsService
from gateway.errors import (
    EngineStatusError,
    EngineUnavailableError,
    GatewayError,
    InvalidRequestError,
)
from gateway.upstream import UpstreamReply
from gateway.errors import EngineConnectError
from tests.unit.conftest import EMBED_URL
from tests.unit.fakes import FakeUpstream


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


def service(dispatcher: Dispatcher, upstream: FakeUpstream) -> EmbeddingsService:
    return EmbeddingsService(dispatcher, upstream)  # type: ignore[arg-type]


async def test_embed_relays_to_the_engine_and_answers_with_the_public_name(
    dispatcher: Dispatcher, record: RequestRecord
) -> None:
    upstream = FakeUpstream(reply=answer(model="engine-side-name"))

    result = orjson.loads(
        await service(dispatcher, upstream).embed(body(input="hi", encoding_format="base64"), record, {})
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
    dispatcher: Dispatcher, record: RequestRecord, value: object
) -> None:
    upstream = FakeUpstream(reply=answer())

    with pytest.raises(InvalidRequestError) as info:
        await service(dispatcher, upstream).embed(body(input=value), record, {})

    assert info.value.param == "input"
    assert upstream.calls == []


async def test_a_chat_model_cannot_embed(dispatcher: Dispatcher, record: RequestRecord) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await service(dispatcher, FakeUpstream(reply=answer())).embed(
            orjson.dumps({"model": "chat", "input": "x"}), record, {}
        )

    assert info.value.param == "model"


async def test_engine_4xx_is_relayed_as_the_same_status(
    dispatcher: Dispatcher, record: RequestRecord
) -> None:
    reply = UpstreamReply(
        400, b'{"error":{"message":"too long","type":"BadRequestError","param":null,"code":400}}'
    )

    with pytest.raises(EngineStatusError) as info:
        await service(dispatcher, FakeUpstream(reply=reply)).embed(body(input="x"), record, {})

    assert (info.value.status, info.value.message) == (400, "too long")


async def test_unreadable_answer_is_not_relayed(dispatcher: Dispatcher, record: RequestRecord) -> None:
    with pytest.raises(GatewayError) as info:
        await service(dispatcher, FakeUpstream(reply=UpstreamReply(200, b"<html>"))).embed(
            body(input="x"), record, {}
        )
    assert info.value.status >= 500


async def test_unreachable_engine_is_marked_down(
    dispatcher: Dispatcher, health: HealthRegistry, record: RequestRecord
) -> None:
    upstream = FakeUpstream(error=EngineConnectError("the engine is unreachable"))

    with pytest.raises(EngineUnavailableError):
        await service(dispatcher, upstream).embed(body(input="x"), record, {})

    assert health.state("embed-0") is State.DOWN
    assert health.in_flight("embed-0") == 0
