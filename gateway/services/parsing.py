"""Turning a request body into a plain dict (relayed) plus a validated model (checked)."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from gateway.errors import InvalidRequestError

M = TypeVar("M", bound=BaseModel)


def parse_body(body: bytes, model: type[M]) -> tuple[dict[str, Any], M]:
    """Parse JSON ``body`` and validate it against ``model``.

    The dict is what gets relayed (it keeps unknown fields exactly as sent); the model is what the
    gateway reads. Malformed JSON or a schema violation raises :class:`InvalidRequestError` naming
    the offending field in ``param``.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequestError(
            "We could not parse the JSON body of your request. Send valid JSON.", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    try:
        return data, model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        detail = err["msg"]
        message = f"Invalid value for '{param}': {detail}" if param else detail
        raise InvalidRequestError(message, param=param) from None
