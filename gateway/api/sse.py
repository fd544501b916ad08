"""Server-sent events framing, in one place.

``data: <json>\\n\\n`` per event, ``: ping`` comments while the engine is silent (clients ignore
comments; proxies see traffic), and ``data: [DONE]`` at the end, as OpenAI clients expect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MEDIA_TYPE = "text/event-stream"
PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"


def event(payload: bytes) -> bytes:
    """One SSE event carrying a JSON payload (which never contains a raw newline)."""
    return b"data: " + payload + b"\n\n"


async def frame(payloads: AsyncIterable[bytes], keepalive: float) -> AsyncIterator[bytes]:
    """Frame ``payloads`` as SSE, pinging every ``keepalive`` seconds of silence, then ``[DONE]``.

    The next payload is awaited in a task that survives a keep-alive timeout, so a ping never
    interrupts a read from the engine.
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
            yield b"data: " + payload + b"\n\n"
        yield DONE
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
