"""The gateway's outermost ASGI app: request bookkeeping for every request, the two hot routes served
directly, everything else handed to Litestar.

* Every ``/v1/`` request gets a :class:`RequestRecord`, an ``X-Request-Id`` (echoed or generated, and
  bound to structlog's context so every log line of the request carries it), the headers saying what
  served it, one summary log line and its metrics. Probes and scrapes get none of that.
* ``/v1/chat/completions`` and ``/v1/embeddings`` are owned here entirely: POST goes straight to their
  plain-ASGI handlers (no signature model, dependency injection or response object per request: about
  a third of the gateway's CPU per request, measured in ``benchmarks/README.md``), any other method
  is a 405, and an error raised before the response started is answered in the same OpenAI shape as
  Litestar's exception handlers give (:mod:`gateway.api.errors`).
* The rest (``/v1/models``, ``/health``, ``/ready``, ``/metrics``, ``/admin``, unknown paths, lifespan)
  is Litestar's.

A plain ASGI app, not Starlette's ``BaseHTTPMiddleware`` (which would delay client disconnects).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import structlog

from gateway.api.asgi import RECORD_KEY, ASGIApp, Message, Receive, Scope, Send, send_json
from gateway.api.errors import error_body, unexpected
from gateway.errors import (
    AuthenticationError,
    GatewayError,
    HeadersTooLargeError,
    MethodNotAllowedError,
    PermissionDeniedError,
    RateLimitError,
)
from gateway.keys import KeyRing, Principal, presented_key
from gateway.logging import log_request
from gateway.protocol import paths
from gateway.record import RequestRecord
from gateway.services.limiter import Admission, Limiter

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.tracing import Tracing
HotHandler = Callable[["Scope", "Receive", "Send", RequestRecord], Awaitable[None]]
"""A hot route: the ASGI triple plus the request's record."""

_REQUEST_ID = b"x-request-id"
_REPLICA = b"x-offload-replica"
_MODEL = b"x-offload-model"
_VERSION = b"x-offload-version"
_ENDPOINTS = frozenset({paths.CHAT_COMPLETIONS, paths.EMBEDDINGS, paths.MODELS})
_MODEL_PREFIX = paths.MODELS + "/"
_ALLOW_POST = {"Allow": "POST"}
_CLOSE = {"Connection": "close"}
_NO_KEY = (
    "Missing or invalid API key. Send it as 'Authorization: Bearer KEY' (the OpenAI SDK's api_key does)."
)
_log = structlog.get_logger("offload.access")


def endpoint_of(path: str) -> str:
    """The endpoint label of a path: one of a bounded set (metrics must not take client input)."""
    if path in _ENDPOINTS:
        return path
    if path.startswith(_MODEL_PREFIX):
        return paths.MODEL
    return "other"


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == _REQUEST_ID:
            # Echo the caller's id, bounded and printable, so it can be correlated safely.
            text: str = value.decode("latin-1")[:128]
            if text.isprintable():
                return text
    return secrets.token_hex(16)


async def _send_error(send: Send, error: GatewayError, extra: Mapping[str, str] | None = None) -> None:
    """Answer with ``error`` in OpenAI's shape (``extra``: headers beside ``Retry-After``)."""
    body, headers = error_body(error)
    await send_json(send, body, error.status, {**headers, **extra} if extra else headers)


def _header_bytes(scope: Scope) -> int:
    size = 0
    for name, value in scope["headers"]:
        size += len(name) + len(value)
    return size


def _served_headers(record: RequestRecord, message: Message) -> None:
    """Add the request id and what served the request (configured names only, never addresses)."""
    headers = list(message.get("headers") or ())
    headers.append((_REQUEST_ID, record.request_id.encode("latin-1")))
    if record.public_model is not None:
        headers.append((_MODEL, record.public_model.encode()))
    if record.version is not None and record.version != "-":
        headers.append((_VERSION, record.version.encode()))
    if record.replica is not None:
        headers.append((_REPLICA, record.replica.encode()))
    message["headers"] = headers


def _span_of(
    scope: Scope, record: RequestRecord
) -> tuple[str, list[tuple[bytes, bytes]], dict[str, str | int | bool]]:
    """The name, headers and first attributes of a request's span (tracing on only)."""
    method = scope["method"]
    attributes = {"http.request.method": method, "http.route": record.route, "url.path": scope["path"]}
    return f"{method} {record.route}", scope["headers"], attributes


class FrontDoor:
    """The ASGI app served by uvicorn: ``hot`` routes by path, ``app`` (Litestar) for the rest."""

    def __init__(
        self,
        app: ASGIApp,
        hot: Mapping[str, HotHandler],
        metrics: Metrics,
        log_requests: bool,
        keys: KeyRing | None = None,
        max_header_bytes: int = 32 * 1024,
        limiter: Limiter | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.app = app
        self._hot = dict(hot)
        self._metrics = metrics
        self._log = log_requests
        self._keys = keys if keys is not None else KeyRing()
        self._max_header_bytes = max_header_bytes
        self._limiter = limiter if limiter is not None else Limiter(60.0, metrics)
        self._tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _header_bytes(scope) > self._max_header_bytes:
            await _send_error(send, HeadersTooLargeError("The request headers are too large."), _CLOSE)
            return
        if scope["type"] != "http" or not scope["path"].startswith(paths.API_PREFIX):
            if self._keys.enabled and scope["type"] == "http" and self._keys.guards(scope["path"]):
                error = self._admin_error(scope)
                if error is not None:
                    await _send_error(send, error)
                    return
            await self.app(scope, receive, send)  # lifespan, probes and scrapes: no record, no log line
            return
        record = RequestRecord(request_id=_request_id(scope), route=endpoint_of(scope["path"]))
        traced = None if self._tracing is None else self._tracing.request(*_span_of(scope, record))
        rate_headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...] = ()
        admitted: tuple[Principal, Admission] | None = None  # counted in by the limiter: out at the end

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                _served_headers(record, message)
                if rate_headers:
                    message["headers"] += rate_headers
            await send(message)

        # bind/reset rather than the bound_contextvars context manager: a third of the cost.
        bound = structlog.contextvars.bind_contextvars(request_id=record.request_id)
        try:
            hot = self._hot.get(scope["path"])
            if self._keys.enabled:
                principal = self._admit(scope, record)
                if principal is None:
                    await self._refuse(send_wrapper, record, AuthenticationError(_NO_KEY))
                    return
                if principal.limited and hot is not None:
                    try:
                        admission = await self._limiter.admit(principal)
                    except RateLimitError as exc:
                        rate_headers = exc.rate_headers  # not admitted, but the headers say how long to wait
                        await self._refuse(send_wrapper, record, exc)
                        return
                    rate_headers, admitted = admission.headers, (principal, admission)
            if hot is None:
                scope[RECORD_KEY] = record  # for api.errors' handlers
                await self.app(scope, receive, send_wrapper)
            else:
                await self._serve_hot(hot, scope, receive, send_wrapper, record)
        finally:
            if admitted is not None:
                tokens = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
                await self._limiter.release(admitted[0], tokens, admitted[1])
            if record.status == 0:  # the client left before any response started
                record.status = 499
                record.error_type = record.error_type or "client_disconnected"
            self._metrics.finish(record)
            if self._log:
                log_request(_log, record)
            if traced is not None:
                traced.end(record)
            structlog.contextvars.reset_contextvars(**bound)

    def _admit(self, scope: Scope, record: RequestRecord) -> Principal | None:
        """The request's key (its name and models noted on the record); None when missing or wrong."""
        principal = self._keys.lookup(presented_key(scope["headers"]))
        if principal is not None:
            record.key, record.allowed_models = principal.name, principal.models
            record.weight, record.caps = principal.weight, principal.caps
        return principal

    @staticmethod
    async def _refuse(
        send: Send, record: RequestRecord, error: GatewayError, extra: Mapping[str, str] | None = None
    ) -> None:
        record.error_type = error.code
        await _send_error(send, error, extra)

    def _admin_error(self, scope: Scope) -> GatewayError | None:
        """None when the request carries an admin key; else why not (401 or 403)."""
        principal = self._keys.lookup(presented_key(scope["headers"]))
        if principal is None:
            return AuthenticationError(_NO_KEY)
        if not principal.admin:
            return PermissionDeniedError("This API key is not an admin key.")
        return None

    @staticmethod
    async def _serve_hot(
        hot: HotHandler, scope: Scope, receive: Receive, send: Send, record: RequestRecord
    ) -> None:
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowedError(f"Method {scope['method']} is not allowed for {scope['path']}.")
            await hot(scope, receive, send, record)
        except Exception as exc:
            if record.status:  # the response has started: too late for an error response
                raise
            error = exc if isinstance(exc, GatewayError) else unexpected(scope["path"], exc)
            extra = _ALLOW_POST if isinstance(error, MethodNotAllowedError) else None
            await FrontDoor._refuse(send, record, error, extra)
