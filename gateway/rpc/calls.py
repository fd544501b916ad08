"""Per-call bookkeeping of the gRPC door, as :class:`~gateway.api.front.FrontDoor` does it for HTTP:
a :class:`RequestRecord` and request id, the API key (``authorization: Bearer KEY`` metadata) and
its limits, errors as gRPC statuses, and at the end the same metrics and summary log line."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, TypeAlias

import grpc
import structlog

from gateway.errors import AuthenticationError, GatewayError
from gateway.keys import KeyRing, Principal, presented_key
from gateway.logging import log_request
from gateway.metrics import Metrics
from gateway.record import RequestRecord
from gateway.rpc.status import status_of
from gateway.services.limiter import Admission, Limiter

if TYPE_CHECKING:
    from gateway.tracing import Tracing

Context: TypeAlias = "grpc.aio.ServicerContext[object, object]"
_NO_KEY = "Missing or invalid API key. Send it as metadata 'authorization: Bearer KEY'."
_log = structlog.get_logger("offload.access")


def _metadata(context: Context) -> dict[str, str]:
    """The call's text metadata (names arrive in lower case; binary ``-bin`` entries are left out)."""
    return {name: value for name, value in context.invocation_metadata() or () if isinstance(value, str)}


def _request_id(metadata: dict[str, str]) -> str:
    text = metadata.get("x-request-id", "")[:128]
    return text if text and text.isprintable() else secrets.token_hex(16)


def _served(record: RequestRecord) -> list[tuple[str, str]]:
    """What served the call (configured names only), sent as trailing metadata."""
    served = [("x-request-id", record.request_id)]
    if record.public_model is not None:
        served.append(("x-offload-model", record.public_model))
    if record.version is not None and record.version != "-":
        served.append(("x-offload-version", record.version))
    if record.replica is not None:
        served.append(("x-offload-replica", record.replica))
    return served


class Calls:
    """Opens every call of the gRPC door (see :meth:`call`)."""

    def __init__(
        self,
        keys: KeyRing,
        limiter: Limiter,
        metrics: Metrics,
        log_requests: bool,
        tracing: Tracing | None = None,
    ) -> None:
        self._keys = keys
        self._limiter = limiter
        self._metrics = metrics
        self._log = log_requests
        self._tracing = tracing

    @contextlib.asynccontextmanager
    async def call(
        self, context: Context, route: str, limited: bool = True
    ) -> AsyncIterator[tuple[RequestRecord, dict[str, str]]]:
        """One call: its record and metadata. Checks the key (and its limits when ``limited``);
        turns a :class:`GatewayError` into the matching gRPC status with the OpenAI message; counts,
        logs and names what served it (trailing metadata) however it ends."""
        metadata = _metadata(context)
        record = RequestRecord(request_id=_request_id(metadata), route=route)
        traced = (
            None
            if self._tracing is None
            else self._tracing.request(f"gRPC {route}", metadata, {"rpc.system": "grpc", "http.route": route})
        )
        admitted: tuple[Principal, Admission] | None = None
        bound = structlog.contextvars.bind_contextvars(request_id=record.request_id)
        try:
            try:
                if self._keys.enabled:
                    principal = self._keys.lookup(presented_key(_raw(metadata)))
                    if principal is None:
                        raise AuthenticationError(_NO_KEY)
                    record.key, record.allowed_models = principal.name, principal.models
                    record.weight, record.caps = principal.weight, principal.caps
                    if principal.limited and limited:
                        admitted = (principal, await self._limiter.admit(principal))
                yield record, metadata
                record.status = record.status or 200
            except GatewayError as exc:
                if not record.status:  # (after the first chunk the call counts as 200, as HTTP's)
                    record.status = exc.status
                record.error_type = record.error_type or exc.code
                context.set_trailing_metadata(_served(record) + _retry(exc))
                await context.abort(status_of(exc), exc.message)
            except asyncio.CancelledError:
                record.error_type = record.error_type or "client_disconnected"
                raise
            except grpc.aio.AbortError:
                raise
            except Exception:
                _log.exception("unexpected error in a gRPC call", route=route)
                record.status, record.error_type = 500, "internal_error"
                await context.abort(grpc.StatusCode.INTERNAL, "The gateway failed unexpectedly.")
        finally:
            if admitted is not None:
                tokens = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
                await self._limiter.release(admitted[0], tokens, admitted[1])
            if record.status == 0:  # cancelled by the client (or by the server's shutdown)
                record.status = 499
                record.error_type = record.error_type or "client_disconnected"
            elif record.error_type is None:
                context.set_trailing_metadata(_served(record))
            self._metrics.finish(record)
            if self._log:
                log_request(_log, record)
            if traced is not None:
                traced.end(record)
            structlog.contextvars.reset_contextvars(**bound)


def _raw(metadata: dict[str, str]) -> Sequence[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1", "replace")) for name, value in metadata.items()]


def _retry(error: GatewayError) -> list[tuple[str, str]]:
    return [] if error.retry_after is None else [("retry-after", str(error.retry_after))]
