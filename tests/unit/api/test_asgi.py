"""The plain-ASGI helpers of the hot routes: body reading and streaming with disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.api.asgi import ScopeHeaders, read_body, send_stream
from gateway.api.disconnect import ClientDisconnected
from gateway.services.errors import RequestTooLargeError


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
    receive = receiver({"type": "http.request", "body": b'{"a":', "more_body": True},
                       {"type": "http.request", "body": b" 1}", "more_body": False})

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


async def test_a_stream_stops_when_the_client_leaves() -> None:
    sent: list[dict[str, Any]] = []
    produced = 0
    left = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await left.wait()
        return {"type": "http.disconnect"}

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(1000):  # bounded: far more than the test lets through
            produced += 1
            if produced == 3:
                left.set()
            yield b"data: x\n\n"
            await asyncio.sleep(0.001)

    finished = await asyncio.wait_for(send_stream(send, receive, [], chunks()), 5)

    assert finished is False
    assert produced < 10
    assert sent[0]["type"] == "http.response.start"
    assert all(m.get("more_body") for m in sent[1:])  # never a final message: the client is gone


async def test_a_finished_stream_ends_with_a_final_empty_message() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    assert await send_stream(send, receiver(), [(b"x", b"y")], chunks()) is True
    assert [m.get("body") for m in sent[1:]] == [b"a", b"b", b""]
    assert sent[-1]["more_body"] is False


def test_scope_headers_are_case_insensitive_and_read_on_demand() -> None:
    headers = ScopeHeaders(scope([(b"x-session-id", b"abc"), (b"content-type", b"application/json")]))

    assert headers.get("X-Session-Id") == "abc"
    assert headers["content-type"] == "application/json"
    assert headers.get("x-missing") is None and headers.get("x-missing", "d") == "d"
    assert set(headers) == {"x-session-id", "content-type"} and len(headers) == 2
    with pytest.raises(KeyError):
        headers["x-missing"]
