"""The OpenAI response shapes of chat completions and embeddings, for the API description only.

The gateway relays the engine's answers as JSON and never builds or validates these (see
:mod:`gateway.protocol.chat`): they exist so that ``GET /schema`` (:mod:`gateway.api.schema`) can
describe what a client receives with the same pydantic machinery as the requests. Every model keeps
unknown fields (``extra="allow"``): vLLM adds its own (``stop_reason``, ``prompt_logprobs``...).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Usage(_Open):
    """Token counts of a request."""

    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class AssistantMessage(_Open):
    """The message of one choice of a chat completion."""

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChoice(_Open):
    """One choice of a chat completion (``n`` of them)."""

    index: int
    message: AssistantMessage
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(_Open):
    """A chat completion (``stream: false``); ``model`` is the public name of what served it."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class ChunkDelta(_Open):
    """What one stream chunk adds to a choice."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(_Open):
    """One choice's part of a stream chunk."""

    index: int
    delta: ChunkDelta
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(_Open):
    """One ``data:`` event of a chat completion stream (``stream: true``), which ends with
    ``data: [DONE]``; a failure after the stream started is one in-band event holding an
    ``error`` in the shape of :class:`~gateway.protocol.errors.ErrorResponse`."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class Embedding(_Open):
    """One input's embedding: floats, or base64 of little-endian float32 (``encoding_format``)."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingList(_Open):
    """The answer of ``POST /v1/embeddings``."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage | None = None
