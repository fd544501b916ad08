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
    # Offload's additions (clients ignore unknown fields):
    parent: str | None = None  # for chat:v2 and chat:stable, the public model
    alias_of: str | None = None  # for chat:stable, the version it points at
    weight: float | None = None  # for chat:v2, its share of the traffic for `chat` (relative weight)
    versions: list[str] | None = None  # on the public model
    aliases: dict[str, str] | None = None


class ModelList(BaseModel):
    """The list ``/v1/models`` returns."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
