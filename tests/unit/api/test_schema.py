"""``GET /schema``: a valid OpenAPI 3.1 document of the four OpenAI operations, built from the models
the gateway validates with, and open (no key) like ``/health`` on a gateway with keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import schemathesis
from litestar.testing import AsyncTestClient
from pydantic import BaseModel

from gateway.api.front import FrontDoor
from gateway.api.schema import document_bytes, openapi_document
from gateway.app import create_app
from gateway.config import AuthConfig, EngineConfig, KeyConfig, ModelConfig, OffloadConfig
from gateway.keys import hash_key
from gateway.protocol.chat import ChatCompletionRequest
from gateway.protocol.embeddings import EmbeddingRequest
from gateway.protocol.errors import ErrorResponse
from gateway.settings import HealthSettings, LogSettings, Settings
from tests.unit.fakes import closed_port

OPERATIONS = [
    "POST /v1/chat/completions",
    "POST /v1/embeddings",
    "GET /v1/models",
    "GET /v1/models/{model}",
]
KEY = "ofl-schema-test-key"


def test_the_document_is_valid_openapi_3_1_naming_the_four_operations() -> None:
    document = openapi_document()
    schema = schemathesis.openapi.from_dict(document)

    schema.validate()  # against the OpenAPI 3.1 meta-schema
    assert document["openapi"] == "3.1.0"
    assert [result.ok().label for result in schema.get_all_operations()] == OPERATIONS


def _component(model: type[BaseModel]) -> dict[str, Any]:
    own = model.model_json_schema(ref_template="#/components/schemas/{model}")
    own.pop("$defs", None)
    return own


@pytest.mark.parametrize("model", [ChatCompletionRequest, EmbeddingRequest, ErrorResponse])
def test_request_and_error_schemas_are_pydantics_own(model: type[BaseModel]) -> None:
    """What the gateway validates with is what the document says: generated, not hand-written."""
    assert openapi_document()["components"]["schemas"][model.__name__] == _component(model)


def test_every_operation_documents_openai_errors() -> None:
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    operations = {
        (path, method): op
        for path, item in openapi_document()["paths"].items()
        for method, op in item.items()
    }
    for key in [("/v1/chat/completions", "post"), ("/v1/embeddings", "post")]:
        responses = operations[key]["responses"]
        for status in ["400", "401", "404", "413", "429", "503"]:
            assert responses[status]["content"]["application/json"]["schema"] == error, (key, status)
        assert "Retry-After" in responses["429"]["headers"] and "Retry-After" in responses["503"]["headers"]
    assert set(operations["/v1/models/{model}", "get"]["responses"]) == {"200", "401", "404"}


@pytest.fixture(scope="module")
async def keyed() -> AsyncIterator[AsyncTestClient[FrontDoor]]:
    """A gateway with an API key configured (its engine is a closed port: no route is served)."""
    config = OffloadConfig(
        models=(
            ModelConfig(
                name="chat", task="chat", engine=EngineConfig(url=f"http://127.0.0.1:{closed_port()}")
            ),
        ),
        auth=AuthConfig(keys=(KeyConfig(name="team", hash=hash_key(KEY)),)),
    )
    settings = Settings(
        health=HealthSettings(probe_interval=600, probe_timeout=1), log=LogSettings(access=False)
    )
    async with AsyncTestClient(app=create_app(settings, config)) as client:
        yield client


async def test_schema_is_served_without_a_key_while_v1_needs_one(keyed: AsyncTestClient[FrontDoor]) -> None:
    response = await keyed.get("/schema")
    models = await keyed.get("/v1/models")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.content == document_bytes()
    assert orjson.loads(response.content) == openapi_document()
    assert models.status_code == 401
