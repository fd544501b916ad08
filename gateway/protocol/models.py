"""``GET /v1/models``: the OpenAI list shape."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelCard(BaseModel):
    """One servable model name."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "offload"


class ModelList(BaseModel):
    """The list ``/v1/models`` returns."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
