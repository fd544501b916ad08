"""Embedding requests (``POST /v1/embeddings``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

EmbeddingInput = str | list[str] | list[int] | list[list[int]]
"""A string, strings, one token array, or token arrays, as the OpenAI API allows."""


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings`` body. Unknown fields are kept and passed to the engine."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: EmbeddingInput
    # The Python SDK asks for base64 (little-endian float32) unless told otherwise.
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    def input_is_empty(self) -> bool:
        """True for ``""``, ``[]`` or a list holding an empty token array: nothing to embed."""
        value = self.input
        if isinstance(value, str):
            return value == ""
        if not value:
            return True
        return any(isinstance(item, list) and not item for item in value)
