"""The OpenAI error envelope: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    """The body of an OpenAI error."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """What every failing Offload endpoint returns (and what a failed stream sends in-band)."""

    error: ErrorDetail
