"""gRPC messages to and from the OpenAI JSON the services speak.

Requests become the JSON body the HTTP API would get, so the services validate and relay them
exactly as they do HTTP's; answers and chunks are read back from the engine's JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from gateway.errors import InvalidRequestError
from gateway.protocol.models import ModelCard
from gateway.rpc.generated import offload_pb2 as pb

# The chat request's optional scalar fields, named as in OpenAI's request.
_OPTIONAL_FIELDS: Final = (
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "user",
)


def _extra(extra_json: str) -> dict[str, Any]:
    if not extra_json:
        return {}
    try:
        extra = orjson.loads(extra_json)
    except orjson.JSONDecodeError:
        raise InvalidRequestError("'extra_json' is not valid JSON.", param="extra_json") from None
    if not isinstance(extra, dict):
        raise InvalidRequestError("'extra_json' must be a JSON object.", param="extra_json")
    return extra


def chat_body(request: pb.ChatRequest, stream: bool) -> bytes:
    """The ``/v1/chat/completions`` body of ``request`` (its own fields win over ``extra_json``'s)."""
    data = _extra(request.extra_json)
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        entry: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.HasField("name"):
            entry["name"] = message.name
        messages.append(entry)
    data["model"] = request.model
    data["messages"] = messages
    data["stream"] = stream
    for name in _OPTIONAL_FIELDS:  # sent only when the caller set them, as an OpenAI client does
        if request.HasField(name):
            data[name] = getattr(request, name)
    if request.stop:
        data["stop"] = list(request.stop)
    if stream and request.include_usage:
        data["stream_options"] = {"include_usage": True}
    return orjson.dumps(data)


def embed_body(request: pb.EmbedRequest) -> bytes:
    """The ``/v1/embeddings`` body of ``request`` (floats: the answer is read as numbers)."""
    data: dict[str, Any] = {"model": request.model, "input": list(request.input), "encoding_format": "float"}
    if request.HasField("dimensions"):
        data["dimensions"] = request.dimensions
    if request.HasField("user"):
        data["user"] = request.user
    return orjson.dumps(data)


def _usage(usage: Mapping[str, Any]) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=usage.get("prompt_tokens") or 0,
        completion_tokens=usage.get("completion_tokens") or 0,
        total_tokens=usage.get("total_tokens") or 0,
    )


def chunk(event: Mapping[str, Any]) -> pb.ChatChunk:
    """One streamed chunk (an OpenAI ``chat.completion.chunk``). Built field by field: this runs for
    every token of every stream."""
    out = pb.ChatChunk(
        id=event.get("id") or "", created=event.get("created") or 0, model=event.get("model") or ""
    )
    for choice in event.get("choices") or ():
        delta = choice.get("delta") or {}
        out.choices.append(
            pb.ChunkChoice(
                index=choice.get("index") or 0,
                delta=pb.Delta(role=delta.get("role"), content=delta.get("content")),
                finish_reason=choice.get("finish_reason"),
            )
        )
    usage = event.get("usage")
    if usage:
        out.usage.CopyFrom(_usage(usage))
    return out


def completion(answer: Mapping[str, Any]) -> pb.ChatCompletion:
    """A whole answer (an OpenAI ``chat.completion``)."""
    out = pb.ChatCompletion(
        id=answer.get("id") or "",
        created=answer.get("created") or 0,
        model=answer.get("model") or "",
        usage=_usage(answer.get("usage") or {}),
    )
    for choice in answer.get("choices") or ():
        message = choice.get("message") or {}
        out.choices.append(
            pb.Choice(
                index=choice.get("index") or 0,
                message=pb.ChatMessage(
                    role=message.get("role") or "assistant", content=message.get("content") or ""
                ),
                finish_reason=choice.get("finish_reason"),
            )
        )
    return out


def embeddings(answer: Mapping[str, Any]) -> pb.EmbedResponse:
    """An OpenAI embedding list (float vectors)."""
    return pb.EmbedResponse(
        model=answer.get("model") or "",
        data=[
            pb.Embedding(index=item.get("index") or 0, embedding=item.get("embedding") or ())
            for item in answer.get("data") or ()
        ],
        usage=_usage(answer.get("usage") or {}),
    )


def models(cards: list[ModelCard]) -> pb.ModelList:
    """``/v1/models``' cards."""
    return pb.ModelList(
        data=[
            pb.Model(
                id=card.id,
                created=card.created,
                owned_by=card.owned_by,
                parent=card.parent,
                alias_of=card.alias_of,
                versions=card.versions or (),
                aliases=card.aliases or {},
            )
            for card in cards
        ]
    )
