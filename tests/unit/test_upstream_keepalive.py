"""EventStream turns engine silence into keep-alive markers without losing or reordering data."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import EngineError
from gateway.upstream import KEEPALIVE, EventStream


class _Content:
    """Chunks that arrive at fixed times after creation, as from a socket: a reader cancelled by a
    keep-alive timeout finds them later, like aiohttp's buffered stream."""

    def __init__(self, chunks: list[tuple[float, bytes]]) -> None:
        self._start = asyncio.get_running_loop().time()
        at = 0.0
        self._chunks = []
        for delay, data in chunks:
            at += delay
            self._chunks.append((at, data))

    async def readany(self) -> bytes:
        if not self._chunks:
            return b""
        at, data = self._chunks[0]
        await asyncio.sleep(max(0.0, self._start + at - asyncio.get_running_loop().time()))
        self._chunks.pop(0)
        return data


class _Response:
    def __init__(self, chunks: list[tuple[float, bytes]]) -> None:
        self.content = _Content(chunks)

    def close(self) -> None: ...

    def release(self) -> None: ...


async def _collect(stream: EventStream) -> list[bytes]:
    return [p async for p in stream]


async def test_silence_yields_keepalives_then_the_data_in_order() -> None:
    response = _Response([(0.08, b'data: {"n":1}\n\n'), (0.0, b'data: {"n":2}\n\ndata: [DONE]\n\n')])
    out = await _collect(EventStream(response, idle_timeout=5, keepalive=0.02))  # type: ignore[arg-type]
    data = [p for p in out if p != KEEPALIVE]
    assert data == [b'{"n":1}', b'{"n":2}']
    assert out.index(b'{"n":1}') >= 2, "expected keep-alives before the first event"


async def test_longer_silence_than_the_idle_timeout_fails_the_stream() -> None:
    response = _Response([(10.0, b"data: {}\n\n")])
    stream = EventStream(response, idle_timeout=0.1, keepalive=0.02)  # type: ignore[arg-type]
    with pytest.raises(EngineError, match="stopped sending"):
        await _collect(stream)


async def test_without_keepalive_no_markers_are_yielded() -> None:
    response = _Response([(0.05, b"data: {}\n\ndata: [DONE]\n\n")])
    assert await _collect(EventStream(response, idle_timeout=5)) == [b"{}"]  # type: ignore[arg-type]
