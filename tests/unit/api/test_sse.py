from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.api import sse


async def source(*payloads: bytes, delay: float = 0.0) -> AsyncIterator[bytes]:
    for payload in payloads:
        if delay:
            await asyncio.sleep(delay)
        yield payload


async def collect(payloads: AsyncIterator[bytes]) -> list[bytes]:
    return [payload async for payload in payloads]


async def never_leaves() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def test_event_wraps_a_payload_as_one_data_line() -> None:
    assert sse.event(b'{"a":1}') == b'data: {"a":1}\n\n'


# --- send_events ---------------------------------------------------------------------------------


async def test_send_events_frames_each_payload_pings_for_silence_and_ends_with_done() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    assert await sse.send_events(send, never_leaves, source(b'{"n":1}', b"", b'{"n":2}')) is True

    assert sent[0] == {"type": "http.response.start", "status": 200, "headers": sse.RESPONSE_HEADERS}
    assert [m["body"] for m in sent[1:]] == [b'data: {"n":1}\n\n', sse.PING, b'data: {"n":2}\n\n', sse.DONE]
    assert [m["more_body"] for m in sent[1:]] == [True, True, True, False]  # [DONE] ends the response


async def test_send_events_stops_when_the_client_leaves() -> None:
    sent: list[dict[str, Any]] = []
    produced = 0
    left = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await left.wait()
        return {"type": "http.disconnect"}

    async def payloads() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(1000):  # bounded: far more than the test lets through
            produced += 1
            if produced == 3:
                left.set()
            yield b"x"
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

    async def failing() -> AsyncIterator[bytes]:
        yield b"a"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await sse.send_events(send, never_leaves, failing())

    assert [m["body"] for m in sent[1:]] == [sse.event(b"a")]


# --- pinging -------------------------------------------------------------------------------------


async def test_pinging_passes_payloads_through_and_ends_with_its_source() -> None:
    out = await collect(sse.pinging(source(b'{"n":1}', b'{"n":2}'), keepalive=10))

    assert out == [b'{"n":1}', b'{"n":2}']
    assert await collect(sse.pinging(source(), keepalive=10)) == []


async def test_pinging_does_not_ping_when_the_source_is_fast() -> None:
    out = await collect(sse.pinging(source(*(b"%d" % i for i in range(20))), keepalive=5))

    assert b"" not in out
    assert len(out) == 20


async def test_pinging_pings_while_the_source_is_silent_without_losing_or_reordering() -> None:
    payloads = [b'{"n":%d}' % i for i in range(4)]

    out = await collect(sse.pinging(source(*payloads, delay=0.06), keepalive=0.01))

    assert out.count(b"") >= 4
    assert [p for p in out if p] == payloads
    assert out[0] == b""  # before the first payload too
    assert out[-1] == payloads[-1]


async def test_closing_pinging_early_cancels_the_pending_read() -> None:
    state = {"cancelled": False, "finished": False}

    async def silent() -> AsyncIterator[bytes]:
        yield b"first"
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise
        yield b"never"
        state["finished"] = True

    out = sse.pinging(silent(), keepalive=0.01)
    assert await anext(out) == b"first"
    assert await anext(out) == b""  # the read of the next payload is now pending

    await out.aclose()

    assert state["cancelled"] is True
    assert state["finished"] is False


async def test_a_source_error_propagates_through_pinging() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"a"
        raise RuntimeError("boom")

    out: list[bytes] = []
    with pytest.raises(RuntimeError, match="boom"):
        async for payload in sse.pinging(failing(), keepalive=10):
            out.append(payload)

    assert out == [b"a"]


def test_headers_disable_caching_and_proxy_buffering() -> None:
    headers = dict(sse.RESPONSE_HEADERS)
    assert headers[b"content-type"].startswith(b"text/event-stream")
    assert headers[b"cache-control"] == b"no-cache"
    assert headers[b"x-accel-buffering"] == b"no"
