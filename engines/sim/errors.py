"""vLLM-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with an integer ``code``."""

from __future__ import annotations

from http import HTTPStatus

import orjson
from starlette.responses import Response

_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    422: "UnprocessableEntityError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}


class SimError(Exception):
    """A request the simulator refuses, answered as vLLM would."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param


class SimulatedReset(Exception):
    """Raised after the response started so that the server drops the connection (the reset knob)."""


def error_type(status: int) -> str:
    """vLLM's ``type`` for a status: ``BadRequestError``, ``NotFoundError``, ... ."""
    known = _TYPES.get(status)
    if known is not None:
        return known
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "InternalServerError" if status >= 500 else "BadRequestError"
    return phrase.title().replace(" ", "").replace("-", "") + "Error"


def error_body(message: str, status: int, param: str | None = None) -> bytes:
    """The JSON error body (also used in-band in a stream)."""
    detail = {"message": message, "type": error_type(status), "param": param, "code": status}
    return orjson.dumps({"error": detail})


def error_response(error: SimError) -> Response:
    """The HTTP answer for a :class:`SimError`."""
    return Response(
        error_body(error.message, error.status, error.param),
        status_code=error.status,
        media_type="application/json",
    )
