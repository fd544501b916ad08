"""Turning a request body into a plain dict (relayed) plus a validated model (checked)."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from gateway.errors import InvalidRequestError

M = TypeVar("M", bound=BaseModel)

_MAX_DEPTH = 254
"""The deepest nesting of arrays and objects orjson writes back (it reads up to 1024): a body parsed
here is relayed, so one nested deeper would fail only when it is serialised for the engine."""
_TOO_DEEP = f"The JSON body of your request nests arrays and objects more than {_MAX_DEPTH} levels deep."


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
    # Nesting deeper than _MAX_DEPTH needs more brackets than that (a count at memory speed); only
    # then is the body serialised once more to find out.
    if body.count(b"[") + body.count(b"{") > _MAX_DEPTH:
        try:
            orjson.dumps(data)
        except orjson.JSONEncodeError:
            raise InvalidRequestError(_TOO_DEEP, code="invalid_json") from None
    try:
        return data, model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        detail = err["msg"]
        message = f"Invalid value for '{param}': {detail}" if param else detail
        raise InvalidRequestError(message, param=param) from None
