"""The gateway's one error hierarchy; :mod:`gateway.api.errors` maps it to HTTP in one place.

Messages are written for API clients: never a traceback, an engine address or a prompt. The tree,
with each error's status and OpenAI ``code``::

    GatewayError                  500 internal_error    a bug (logged; the client gets a bare 500)
    ├── InvalidRequestError       400 invalid_request   malformed JSON, schema violation (names the field)
    ├── AuthenticationError       401 invalid_api_key   no key, an unknown, revoked or expired key
    ├── PermissionDeniedError     403 permission_denied a key that is not an admin key on /admin
    ├── NotFoundError             404 not_found         no such URL, no such engine (admin)
    ├── ModelNotFoundError        404 model_not_found   unknown model or version
    ├── MethodNotAllowedError     405 method_not_allowed
    ├── RequestTooLargeError      413 request_too_large
    ├── HeadersTooLargeError      431 request_header_fields_too_large
    ├── RateLimitError            429 rate_limit_exceeded  a key over its rpm, tpm or concurrency (Retry-After)
    ├── ClientDisconnected        499 client_disconnected  the client left (logged, never sent)
    ├── EngineError               502 engine_error      the engine failed: broken stream, bad answer
    ├── EngineUnavailableError    503 engine_unavailable  no healthy replica (Retry-After)
    │   └── EngineConnectError    503                   the engine is unreachable: retry elsewhere
    ├── EngineTimeoutError        504 engine_timeout
    └── EngineStatusError         the engine's own status (4xx about the request, 5xx as 502/503)

Which failures are retried on another replica is decided by :func:`gateway.services.failover.retryable`.
"""

from __future__ import annotations

from gateway.protocol.errors import ErrorDetail, ErrorResponse


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def to_response(self) -> ErrorResponse:
        """The OpenAI error envelope for this error."""
        return ErrorResponse(
            error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        )


class InvalidRequestError(GatewayError):
    """The client's request is malformed or breaks the schema (400)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationError(GatewayError):
    """No API key, or one the gateway does not know (401, ``invalid_api_key``: the OpenAI SDK raises
    ``AuthenticationError``)."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    """A valid key asking for what it may not do (403, ``permission_denied``)."""

    status = 403
    type = "permission_denied"
    code = "permission_denied"


class NotFoundError(GatewayError):
    """No such route (404)."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(GatewayError):
    """The requested model is not served here (404, ``model_not_found``)."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class MethodNotAllowedError(GatewayError):
    """Wrong HTTP method for the route (405)."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTooLargeError(GatewayError):
    """The request body exceeds the configured limit (413)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class HeadersTooLargeError(GatewayError):
    """The request's headers exceed the configured limit (431)."""

    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"


class RateLimitError(GatewayError):
    """A key over one of its limits (429, with ``Retry-After``: the OpenAI SDK waits and retries)."""

    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"
    rate_headers: tuple[tuple[bytes, bytes], ...] = ()
    """OpenAI's x-ratelimit headers, sent with the 429 too."""


class EngineError(GatewayError):
    """The engine failed in a way that is not the client's fault (502)."""

    status = 502
    type = "server_error"
    code = "engine_error"


class EngineUnavailableError(GatewayError):
    """No healthy engine can take the request (503, with ``Retry-After``)."""

    status = 503
    type = "server_error"
    code = "engine_unavailable"


class EngineConnectError(EngineUnavailableError):
    """The engine could not be reached at all: safe to retry elsewhere, worth marking the replica down."""


class ClientDisconnected(GatewayError):
    """The client left before the answer was ready (logged as 499; nobody receives the body)."""

    status = 499
    type = "client_disconnected"
    code = "client_disconnected"


class EngineTimeoutError(GatewayError):
    """The engine did not answer in time (504)."""

    status = 504
    type = "server_error"
    code = "engine_timeout"


class EngineStatusError(GatewayError):
    """An error the engine returned for the request, relayed with the engine's status."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message, param=param, code=_CODES.get(status, "engine_error"))
        self.status = status
        self.type = _TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "server_error")


_TYPES = {401: "authentication_error", 403: "permission_denied", 429: "rate_limit_exceeded"}
_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found",
    413: "request_too_large",
    422: "invalid_request",
    429: "rate_limit_exceeded",
}
