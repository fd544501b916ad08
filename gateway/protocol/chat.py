"""Chat completion requests, as far as the gateway needs to check them.

Responses and stream chunks are relayed from the engine as JSON, not re-modelled: the gateway only
touches the few fields it must (``model``, ``finish_reason``, ``usage``), which keeps the relay fast.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
"""``finish_reason`` values OpenAI clients know; vLLM adds ``abort`` and ``error``, which mean failure."""


class ChatMessage(BaseModel):
    """One message of a conversation. Content is text, a list of content parts, or absent."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    """``stream_options``: only ``include_usage`` matters to the gateway."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` body. Unknown fields are kept and passed to the engine."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = Field(default=False, strict=True)
    """Strict, as OpenAI's: ``"true"`` or ``1`` is a 400, never read one way here and another way by
    the engine that gets the body relayed (a stream expected, a JSON answer sent, or the reverse)."""
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=128)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    user: str | None = None

    @property
    def include_usage(self) -> bool:
        """Whether the client asked for the final usage chunk of a stream."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)
