"""The one place where errors become HTTP responses in the OpenAI error shape."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE
from litestar.types import ExceptionHandlersMap

from gateway.api.asgi import record_of
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    RequestTooLargeError,
)

_log = structlog.get_logger("offload.errors")


def error_body(error: GatewayError) -> tuple[bytes, dict[str, str]]:
    """The OpenAI-shaped JSON body of ``error`` and its extra headers (``Retry-After``)."""
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else {}
    return error.to_response().model_dump_json().encode(), headers


def unexpected(path: str, exc: BaseException) -> GatewayError:
    """A bug: log it (without request content); the client gets a bare 500."""
    _log.error("unhandled error", path=path, exc_info=exc)
    return GatewayError("The server had an error while processing your request.")


def _respond(request: Request[Any, Any, Any], error: GatewayError) -> Response[bytes]:
    record = record_of(request.scope)
    if record is not None:
        record.error_type = error.code
    body, headers = error_body(error)
    return Response(body, status_code=error.status, media_type="application/json", headers=headers)


def _gateway_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, GatewayError)
    return _respond(request, exc)


def _http_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Litestar's own errors (routing, body size, validation) in OpenAI form."""
    assert isinstance(exc, HTTPException)
    error: GatewayError
    if isinstance(exc, NotFoundException):
        error = NotFoundError(f"Unknown request URL: {request.method} {request.url.path}.")
    elif isinstance(exc, MethodNotAllowedException):
        error = MethodNotAllowedError(f"Method {request.method} is not allowed for {request.url.path}.")
    elif exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        error = RequestTooLargeError("The request body is too large.")
    elif isinstance(exc, ValidationException) or 400 <= exc.status_code < 500:
        error = InvalidRequestError("The request is invalid.")
        error.status = exc.status_code
    else:
        _log.error(
            "server error", path=request.url.path, status=exc.status_code, detail=exc.detail, exc_info=exc
        )
        error = GatewayError("The server had an error while processing your request.")
    return _respond(request, error)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    return _respond(request, unexpected(request.url.path, exc))


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    GatewayError: _gateway_error,
    HTTPException: _http_exception,
    Exception: _unexpected,
}
