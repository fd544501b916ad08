"""The plain-ASGI helpers of the hot routes: body reading (with disconnects and limits), headers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.api.asgi import ScopeHeaders, read_body
from gateway.errors import ClientDisconnected, RequestTooLargeError


def receiver(*messages: dict[str, Any]) -> Any:
    """An ASGI receive that hands out ``messages`` and then waits forever."""
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


def scope(headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    return {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers or []}


async def test_a_body_in_parts_is_joined() -> None:
    receive = receiver(
        {"type": "http.request", "body": b'{"a":', "more_body": True},
        {"type": "http.request", "body": b" 1}", "more_body": False},
    )

    assert await read_body(scope(), receive, 100) == b'{"a": 1}'


async def test_a_chunked_body_over_the_limit_is_refused_while_reading() -> None:
    parts = [{"type": "http.request", "body": b"x" * 40, "more_body": True} for _ in range(3)]
    receive = receiver(*parts, {"type": "http.request", "body": b"", "more_body": False})

    with pytest.raises(RequestTooLargeError) as info:
        await read_body(scope([(b"transfer-encoding", b"chunked")]), receive, 100)

    assert info.value.status == 413


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    async def receive() -> dict[str, Any]:
        raise AssertionError("the body must not be read")

    with pytest.raises(RequestTooLargeError):
        await read_body(scope([(b"content-length", b"101")]), receive, 100)


async def test_a_client_leaving_during_the_body_is_a_disconnect() -> None:
    receive = receiver({"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"})

    with pytest.raises(ClientDisconnected):
        await read_body(scope(), receive, 100)


def test_scope_headers_are_case_insensitive_and_read_on_demand() -> None:
    headers = ScopeHeaders(scope([(b"x-session-id", b"abc"), (b"content-type", b"application/json")]))

    assert headers.get("X-Session-Id") == "abc"
    assert headers["content-type"] == "application/json"
    assert headers.get("x-missing") is None and headers.get("x-missing", "d") == "d"
    assert set(headers) == {"x-session-id", "content-type"} and len(headers) == 2
    with pytest.raises(KeyError):
        headers["x-missing"]
