from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.api import sse


async def source(*payloads: bytes, delay: float = 0.0) -> AsyncIterator[list[bytes]]:
    """Each payload as its own engine read."""
    for payload in payloads:
        if delay:
            await asyncio.sleep(delay)
        yield [payload]


async def collect(payloads: AsyncIterator[bytes]) -> list[bytes]:
    return [payload async for payload in payloads]


async def never_leaves() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def test_event_wraps_a_payload_as_one_data_line() -> None:
    assert sse.event(b'{"a":1}') == b'data: {"a":1}\n\n'


def test_events_frames_a_read_of_several_payloads_as_one_body() -> None:
    assert sse.events([b"1", b"2"]) == b"data: 1\n\ndata: 2\n\n"
    assert sse.events([b""]) == sse.PING and sse.events([b"1"]) == sse.event(b"1")


# --- send_events ---------------------------------------------------------------------------------


async def test_send_events_frames_each_payload_pings_for_silence_and_ends_with_done() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    assert await sse.send_events(send, never_leaves, source(b'{"n":1}', b"", b'{"n":2}')) is True

    assert sent[0] == {"type": "http.response.start", "status": 200, "headers": sse.RESPONSE_HEADERS}
    assert [m["body"] for m in sent[1:]] == [b'data: {"n":1}\n\n', sse.PING, b'data: {"n":2}\n\n', sse.DONE]
    assert [m["more_body"] for m in sent[1:]] == [True, True, True, False]  # [DONE] ends the response


async def test_send_events_sends_the_events_of_one_engine_read_as_one_write() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def reads() -> AsyncIterator[list[bytes]]:
        yield [b'{"n":1}', b'{"n":2}', b'{"n":3}']
        yield [b'{"n":4}']

    assert await sse.send_events(send, never_leaves, reads()) is True

    assert [m["body"] for m in sent[1:]] == [
        b'data: {"n":1}\n\ndata: {"n":2}\n\ndata: {"n":3}\n\n',
        b'data: {"n":4}\n\n',
        sse.DONE,
    ]


async def test_send_events_stops_when_the_client_leaves() -> None:
    sent: list[dict[str, Any]] = []
    produced = 0
    left = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await left.wait()
        return {"type": "http.disconnect"}

    async def payloads() -> AsyncIterator[list[bytes]]:
        nonlocal produced
        for _ in range(1000):  # bounded: far more than the test lets through
            produced += 1
            if produced == 3:
                left.set()
            yield [b"x"]
            await asyncio.sleep(0.001)

    finished = await asyncio.wait_for(sse.send_events(send, receive, payloads()), 5)

    assert finished is False
    assert produced < 10
    assert sent[0]["type"] == "http.response.start"
    assert all(m.get("more_body") for m in sent[1:])  # never a final message: the client is gone


async def test_a_source_error_propagates_from_send_events_without_done() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def failing() -> AsyncIterator[list[bytes]]:
        yield [b"a"]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await sse.send_events(send, never_leaves, failing())

    assert [m["body"] for m in sent[1:]] == [sse.event(b"a")]
