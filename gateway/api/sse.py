"""Server-sent events framing and sending, in one place.

``data: <json>\\n\\n`` per event, ``: ping`` comments while the engine is silent (clients ignore
comments; proxies see traffic), and ``data: [DONE]`` at the end, as OpenAI clients expect.
"""

from __future__ import annotations

from collections.abc import AsyncIterable

from gateway.api.asgi import Receive, Send
from gateway.api.disconnect import unless_disconnected
from gateway.errors import ClientDisconnected

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


async def end_with_error(send: Send, payload: bytes) -> None:
    """End a started stream with one in-band error event and ``[DONE]``."""
    await send({"type": "http.response.body", "body": event(payload) + DONE, "more_body": False})


async def send_events(send: Send, receive: Receive, payloads: AsyncIterable[bytes]) -> bool:
    """Send a 200 event stream: each payload as an event as it comes (an empty one, the engine's
    silence, see :data:`gateway.upstream.KEEPALIVE`, as a ping), then ``[DONE]``. Returns False when
    the client left first (the relay is then cancelled at once, wherever it waits: the caller frees
    the engine).

    The hot path of a stream: framing is done here, in the loop that sends, with no generator or
    task per event; ``[DONE]`` travels in the response's last message.
    """
    await send({"type": "http.response.start", "status": 200, "headers": RESPONSE_HEADERS})

    async def relay() -> None:
        async for payload in payloads:
            body = b"data: " + payload + b"\n\n" if payload else PING
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": DONE, "more_body": False})

    try:
        await unless_disconnected(receive, relay())
    except ClientDisconnected:
        return False
    return True
