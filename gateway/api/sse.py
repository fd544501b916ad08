"""Server-sent events framing, in one place.

``data: <json>\\n\\n`` per event, ``: ping`` comments while the engine is silent (clients ignore
comments; proxies see traffic), and ``data: [DONE]`` at the end, as OpenAI clients expect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator

RESPONSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tells nginx-style proxies not to buffer the stream
]
"""The ASGI response headers of a stream."""
PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"


def event(payload: bytes) -> bytes:
    """One SSE event carrying a JSON payload (which never contains a raw newline)."""
    return b"data: " + payload + b"\n\n"


async def relay(payloads: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Frame ``payloads`` as SSE then ``[DONE]``; an empty payload (the engine's silence, see
    :data:`gateway.upstream.KEEPALIVE`) becomes a ``: ping`` comment. The hot path: no task per event."""
    async for payload in payloads:
        yield b"data: " + payload + b"\n\n" if payload else PING
    yield DONE


async def frame(payloads: AsyncIterable[bytes], keepalive: float) -> AsyncIterator[bytes]:
    """Frame ``payloads`` as SSE, pinging every ``keepalive`` seconds of silence, then ``[DONE]``.

    For sources that can be silent without saying so (a stream still waiting for its engine to
    load): the next payload is awaited in a task that survives a keep-alive timeout, so a ping
    never interrupts the wait. Empty payloads become pings too.
    """
    source = aiter(payloads)
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait((pending,), timeout=keepalive)
            if not done:
                yield PING
                continue
            task, pending = pending, None
            try:
                payload = task.result()
            except StopAsyncIteration:
                break
            yield b"data: " + payload + b"\n\n" if payload else PING
        yield DONE
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
