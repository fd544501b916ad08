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


def events(batch: list[bytes]) -> bytes:
    """The SSE bytes of a list of payloads (an empty payload, the engine's silence, see
    :data:`gateway.upstream.KEEPALIVE`, as a ping)."""
    if len(batch) == 1:  # the usual case below saturation: one event per engine read
        payload = batch[0]
        return b"data: " + payload + b"\n\n" if payload else PING
    return b"".join([b"data: " + payload + b"\n\n" if payload else PING for payload in batch])


async def send_events(
    send: Send, receive: Receive, batches: AsyncIterable[list[bytes]], defer_start: bool = False
) -> bool:
    """Send a 200 event stream: each list of payloads as it comes, as one write of its events (see
    :func:`events`), then ``[DONE]``. Returns False when the client left first (the relay is then
    cancelled at once, wherever it waits: the caller frees the engine).

    ``defer_start``: start the response with the first payload, not at once, so that an error the
    payloads raise before it (a stream that waited in a queue and was refused) can still be answered
    with its own status.

    The hot path of a stream: framing is done here, in the loop that sends, with no generator or
    task per event; ``[DONE]`` travels in the response's last message.
    """
    start = {"type": "http.response.start", "status": 200, "headers": RESPONSE_HEADERS}
    if not defer_start:
        await send(start)

    async def relay() -> None:
        each = aiter(batches)
        if defer_start:
            first = await anext(each, None)
            await send(start)
            if first:
                await send({"type": "http.response.body", "body": events(first), "more_body": True})
        async for batch in each:
            await send({"type": "http.response.body", "body": events(batch), "more_body": True})
        await send({"type": "http.response.body", "body": DONE, "more_body": False})

    try:
        await unless_disconnected(receive, relay())
    except ClientDisconnected:
        return False
    return True
