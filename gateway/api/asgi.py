"""Plain-ASGI plumbing for the hot routes (``/v1/chat/completions``, ``/v1/embeddings``).

Those two routes are plain ASGI handlers served by :class:`gateway.api.front.FrontDoor` before
Litestar: no signature model, dependency injection, task group or response object per request.
Measured on 2 cores that machinery was about a third of the gateway's CPU per request
(``benchmarks/README.md``); what replaces it is this module: read the body, send a JSON answer
(streams: :func:`gateway.api.sse.send_events`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from typing import Any

from gateway.errors import ClientDisconnected, RequestTooLargeError
from gateway.record import RequestRecord

# The ASGI types of the hot path: plain mappings (the hot path never goes through Litestar).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON = [(b"content-type", b"application/json")]
RECORD_KEY = "offload_record"
"""Where a ``/v1/`` request's :class:`RequestRecord` sits in the ASGI scope (Litestar's routes read it)."""
_TOO_LARGE = "The request body is too large."


def record_of(scope: Mapping[str, object]) -> RequestRecord | None:
    """The record :class:`~gateway.api.front.FrontDoor` attached to a ``/v1/`` request, if any."""
    record = scope.get(RECORD_KEY)
    return record if isinstance(record, RequestRecord) else None


class ScopeHeaders(Mapping[str, str]):
    """The request headers by case-insensitive name, read from the ASGI scope only when asked
    (a request looks at one header at most: the session header). A repeated header: its first value."""

    __slots__ = ("_raw",)

    def __init__(self, scope: Scope) -> None:
        self._raw: list[tuple[bytes, bytes]] = scope["headers"]

    def get(self, name: str, default: Any = None) -> Any:
        key = name.lower().encode("latin-1")
        for raw_name, value in self._raw:
            if raw_name == key:
                return value.decode("latin-1")
        return default

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return str(value)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name.decode("latin-1") for name, _ in self._raw))

    def __len__(self) -> int:
        return len({name for name, _ in self._raw})


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body; :class:`RequestTooLargeError` (413) past ``limit`` bytes, checked on
    the declared length first so that an oversized body is refused before it is read."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise RequestTooLargeError(_TOO_LARGE)
            break
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body  # the usual case: one message
    parts = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("The client disconnected.")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLargeError(_TOO_LARGE)
        parts.append(chunk)
    return b"".join(parts)


async def send_json(
    send: Send, body: bytes, status: int = 200, headers: Mapping[str, str] | None = None
) -> None:
    """An ``application/json`` answer in two ASGI messages; ``headers``: extra ones (``Retry-After``)."""
    raw: list[tuple[bytes, bytes]] = [*JSON, (b"content-length", str(len(body)).encode())]
    if headers:
        raw += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})
