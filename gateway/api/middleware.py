"""Per-request bookkeeping for the API routes: request id, summary log line, metrics.

A plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which would delay client disconnects).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import structlog

from gateway.logging import log_request
from gateway.services.accounting import RequestRecord

if TYPE_CHECKING:
    from litestar import Request
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from gateway.metrics import Metrics

_SCOPE_KEY = "offload_record"
_REQUEST_ID = b"x-request-id"
_REPLICA = b"x-offload-replica"
_MODEL = b"x-offload-model"
_VERSION = b"x-offload-version"
_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/embeddings", "/v1/models"})
_log = structlog.get_logger("offload.access")


def record_of(request: Request) -> RequestRecord | None:
    """The record the middleware attached to this request, if any."""
    return request.scope.get(_SCOPE_KEY)  # type: ignore[return-value]


def record_in(scope: Scope) -> RequestRecord:
    """The record of a ``/v1/`` request (the middleware attaches one to every such request)."""
    return scope[_SCOPE_KEY]  # type: ignore[literal-required,no-any-return]


def endpoint_of(path: str) -> str:
    """The endpoint label of a path: one of a bounded set (metrics must not take client input)."""
    if path in _ENDPOINTS:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return "other"


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == _REQUEST_ID:
            # Echo the caller's id, bounded and printable, so it can be correlated safely.
            text = value.decode("latin-1")[:128]
            if text.isprintable():
                return text
    return secrets.token_hex(16)


class AccessMiddleware:
    """Creates the request's :class:`RequestRecord`, echoes ``X-Request-Id`` and reports the request."""

    def __init__(self, app: ASGIApp, metrics: Metrics, log_requests: bool) -> None:
        self._app = app
        self._metrics = metrics
        self._log = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self._app(scope, receive, send)  # probes and scrapes: no record, no log line
            return
        record = RequestRecord(request_id=_request_id(scope), route=endpoint_of(scope["path"]))
        scope[_SCOPE_KEY] = record  # type: ignore[literal-required]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                headers = list(message.get("headers") or ())
                headers.append((_REQUEST_ID, record.request_id.encode("latin-1")))
                # What served the request (configured names only, never addresses).
                if record.public_model is not None:
                    headers.append((_MODEL, record.public_model.encode()))
                if record.version not in (None, "-"):
                    headers.append((_VERSION, record.version.encode()))  # type: ignore[union-attr]
                if record.replica is not None:
                    headers.append((_REPLICA, record.replica.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self._app(scope, receive, send_wrapper)
        finally:
            if record.status == 0:  # the client left before any response started
                record.status = 499
                record.error_type = record.error_type or "client_disconnected"
            self._metrics.finish(record)
            if self._log:
                log_request(_log, record)
