from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.api import sse


async def source(*payloads: bytes, delay: float = 0.0) -> AsyncIterator[bytes]:
    for payload in payloads:
        if delay:
            await asyncio.sleep(delay)
        yield payload


async def collect(frames: AsyncIterator[bytes]) -> list[bytes]:
    return [frame async for frame in frames]


def test_event_wraps_a_payload_as_one_data_line() -> None:
    assert sse.event(b'{"a":1}') == b'data: {"a":1}\n\n'


async def test_frame_emits_each_payload_then_done() -> None:
    frames = await collect(sse.frame(source(b'{"n":1}', b'{"n":2}'), keepalive=10))

    assert frames == [b'data: {"n":1}\n\n', b'data: {"n":2}\n\n', b"data: [DONE]\n\n"]


async def test_frame_of_an_empty_source_is_just_done() -> None:
    assert await collect(sse.frame(source(), keepalive=10)) == [sse.DONE]


async def test_frame_does_not_ping_when_the_source_is_fast() -> None:
    frames = await collect(sse.frame(source(*(b"%d" % i for i in range(20))), keepalive=5))

    assert sse.PING not in frames
    assert len(frames) == 21


async def test_frame_pings_while_the_source_is_silent_without_losing_or_reordering() -> None:
    payloads = [b'{"n":%d}' % i for i in range(4)]

    frames = await collect(sse.frame(source(*payloads, delay=0.06), keepalive=0.01))

    assert sse.PING in frames
    assert frames.count(sse.PING) >= 4
    assert [f for f in frames if f != sse.PING] == [sse.event(p) for p in payloads] + [sse.DONE]
    assert frames[-1] == sse.DONE
    assert sse.PING == b": ping\n\n"


async def test_frame_pings_before_the_first_payload() -> None:
    frames = await collect(sse.frame(source(b"x", delay=0.05), keepalive=0.01))

    assert frames[0] == sse.PING


async def test_closing_the_frame_early_cancels_the_pending_read() -> None:
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

    frames = sse.frame(silent(), keepalive=0.01)
    assert await anext(frames) == sse.event(b"first")
    assert await anext(frames) == sse.PING  # the read of the next payload is now pending

    await frames.aclose()

    assert state["cancelled"] is True
    assert state["finished"] is False


async def test_a_source_error_propagates_without_done() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"a"
        raise RuntimeError("boom")

    frames: list[bytes] = []
    with pytest.raises(RuntimeError, match="boom"):
        async for frame in sse.frame(failing(), keepalive=10):
            frames.append(frame)

    assert frames == [sse.event(b"a")]


def test_headers_disable_caching_and_proxy_buffering() -> None:
    headers = dict(sse.RESPONSE_HEADERS)
    assert headers[b"content-type"].startswith(b"text/event-stream")
    assert headers[b"cache-control"] == b"no-cache"
    assert headers[b"x-accel-buffering"] == b"no"
