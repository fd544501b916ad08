"""``GET /schema``: the OpenAPI 3.1 description of the OpenAI endpoints the gateway serves.

Built by pydantic (``models_json_schema``) from the models of :mod:`gateway.protocol`: the request
bodies are the very models the gateway validates with (so the description cannot drift from the
checks), the answers those it sends (``/v1/models``, errors) or describes (chat completions and
embeddings, relayed from the engine: :mod:`gateway.protocol.responses`). Only the operations around
them (paths, parameters, status codes) are written here.

Litestar's own OpenAPI is off (``openapi_config=None``): the two hot routes bypass its router
(:mod:`gateway.api.front`), so it could not describe them.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway import __version__
from gateway.protocol import paths
from gateway.protocol.chat import ChatCompletionRequest
from gateway.protocol.embeddings import EmbeddingRequest
from gateway.protocol.errors import ErrorResponse
from gateway.protocol.models import ModelCard, ModelList
from gateway.protocol.responses import ChatCompletion, ChatCompletionChunk, EmbeddingList

_REF = "#/components/schemas/{model}"
_Mode = Literal["validation", "serialization"]
_MODELS: tuple[tuple[type[BaseModel], _Mode], ...] = (
    (ChatCompletionRequest, "validation"),
    (EmbeddingRequest, "validation"),
    (ChatCompletion, "serialization"),
    (ChatCompletionChunk, "serialization"),
    (EmbeddingList, "serialization"),
    (ModelList, "serialization"),
    (ModelCard, "serialization"),
    (ErrorResponse, "serialization"),
)
_ERRORS = {
    "400": "The request is malformed: invalid JSON, or a field breaks the schema (named in `param`).",
    "401": "No API key, or an unknown, revoked or expired one (only when keys are configured).",
    "404": "No such model, version or alias (`model_not_found`).",
    "413": "The request body is larger than the gateway accepts.",
    "429": "The key is over one of its limits (requests, tokens, concurrency); see `Retry-After`.",
    "502": "The engine failed while answering (`engine_error`).",
    "503": "No healthy engine can take the request now (`engine_unavailable`); see `Retry-After`.",
    "504": "The engine did not answer in time (`engine_timeout`).",
}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
}
SEE_ALSO = "https://platform.openai.com/docs/api-reference"
_REQUEST_ID = {
    "name": "X-Request-Id",
    "in": "header",
    "required": False,
    "description": "Echoed in the answer's `X-Request-Id` (up to 128 printable characters), else one is made.",
    "schema": {"type": "string"},
}
_SESSION_ID = {
    "name": "X-Session-Id",
    "in": "header",
    "required": False,
    "description": "Session key (a model's `session_header`; else the body's `user`): the same version "
    "of a versioned model for every request of the session while the weights stay the same.",
    "schema": {"type": "string"},
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(error: dict[str, Any], *statuses: str) -> dict[str, Any]:
    """OpenAI-shaped error responses for ``statuses``."""
    responses: dict[str, Any] = {}
    for status in statuses:
        response: dict[str, Any] = {"description": _ERRORS[status], "content": _json(error)}
        if status in ("429", "503"):
            response["headers"] = _RETRY_AFTER
        responses[status] = response
    return responses


def _event(chunk: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    """One server-sent event of a chat stream (the schema of ``text/event-stream`` describes each event,
    as ``itemSchema`` does from OpenAPI 3.2 on): its ``data`` is a chunk, an in-band error after a
    failure (the stream then ends), or ``[DONE]``, the last event."""
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"type": "string"},
            "id": {"type": "string"},
            "data": {
                "type": "string",
                "if": {"const": "[DONE]"},
                "else": {"contentMediaType": "application/json", "contentSchema": {"anyOf": [chunk, error]}},
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh dict)."""
    refs, defs = models_json_schema(_MODELS, ref_template=_REF)

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        mode = next(m for cls, m in _MODELS if cls is model)
        return dict(refs[(model, mode)])

    error = ref(ErrorResponse)
    hot_errors = _errors(error, "400", "401", "404", "413", "429", "502", "503", "504")
    chat = {
        "operationId": "createChatCompletion",
        "summary": "Create a chat completion (a JSON answer, or server-sent events with `stream: true`).",
        "parameters": [_SESSION_ID, _REQUEST_ID],
        "requestBody": {"required": True, "content": _json(ref(ChatCompletionRequest))},
        "responses": {
            "200": {
                "description": "The completion; `model` names what served it (`name:version`).",
                "content": {
                    **_json(ref(ChatCompletion)),
                    "text/event-stream": {"schema": _event(ref(ChatCompletionChunk), error)},
                },
            },
            **hot_errors,
        },
    }
    embeddings = {
        "operationId": "createEmbedding",
        "summary": "Create embeddings of a string, strings or token arrays.",
        "parameters": [_SESSION_ID, _REQUEST_ID],
        "requestBody": {"required": True, "content": _json(ref(EmbeddingRequest))},
        "responses": {
            "200": {"description": "One embedding per input.", "content": _json(ref(EmbeddingList))},
            **hot_errors,
        },
    }
    list_models = {
        "operationId": "listModels",
        "summary": "The models this gateway serves, with each versioned model's versions and aliases.",
        "parameters": [_REQUEST_ID],
        "responses": {
            "200": {"description": "The models the API key may use.", "content": _json(ref(ModelList))},
            **_errors(error, "401"),
        },
    }
    retrieve_model = {
        "operationId": "retrieveModel",
        "summary": "One model, version (`name:version`) or alias.",
        "parameters": [
            {"name": "model", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}},
            _REQUEST_ID,
        ],
        "responses": {
            "200": {"description": "The model.", "content": _json(ref(ModelCard))},
            **_errors(error, "401", "404"),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Offload",
            "version": __version__,
            "description": "The OpenAI API, as served by Offload in front of vLLM engines.",
        },
        "externalDocs": {"description": "OpenAI API reference", "url": SEE_ALSO},
        "paths": {
            paths.CHAT_COMPLETIONS: {"post": chat},
            paths.EMBEDDINGS: {"post": embeddings},
            paths.MODELS: {"get": list_models},
            paths.MODEL: {"get": retrieve_model},
        },
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        # A key is needed only when the gateway is configured with keys: optional here.
        "security": [{"bearer": []}, {}],
    }


@functools.cache
def document_bytes() -> bytes:
    """The document as JSON, built once per process."""
    return orjson.dumps(openapi_document())
