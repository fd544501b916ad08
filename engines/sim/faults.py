"""Fault injection: stalls, connection resets and clean early closes in streams, resets and cut
bodies of whole answers, and aborting work when the client goes away (as vLLM does)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from engines.sim.config import Knobs
from engines.sim.errors import SimulatedReset

T = TypeVar("T")


def has_stream_faults(knobs: Knobs) -> bool:
    """Whether the stream needs :func:`inject` at all (keeps the fast path fast)."""
    return knobs.stall_after is not None or knobs.reset_after is not None or knobs.close_after is not None


async def inject(events: AsyncIterator[bytes], knobs: Knobs) -> AsyncIterator[bytes]:
    """Pass ``events`` through, stalling, dropping the connection or ending the stream early (cleanly,
    without ``[DONE]``) after the configured counts; at the same count a stall comes first."""
    sent = 0
    try:
        while True:
            if sent == knobs.stall_after:
                await asyncio.sleep(knobs.stall_s)
            if sent == knobs.reset_after:
                raise SimulatedReset(f"simulated connection reset after {sent} events")
            if sent == knobs.close_after:
                return
            try:
                event = await anext(events)
            except StopAsyncIteration:
                return
            yield event
            sent += 1
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


class BrokenAnswer(Response):
    """Starts a 200 answer and breaks it after a few bytes of its JSON body: drops the connection
    (``reset``: the reset knob on a non-streaming request) or ends the body cleanly (the close knob:
    no Content-Length, so the chunked body ends as if it were whole)."""

    def __init__(self, reset: bool) -> None:
        super().__init__(status_code=200)
        self._reset = reset

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"id":', "more_body": True})
        if self._reset:
            raise SimulatedReset("simulated connection reset")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Await ``work`` unless the client disconnects first; then cancel it and return None.

    Call after the body was read: the next ``receive()`` only returns on disconnect.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
    if not task.done():
        await asyncio.wait((task,))  # let its clean-up (slot release) run
        return None
    if task.cancelled():
        return None
    return task.result()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class QuietResets(logging.Filter):
    """Drops the server's "Exception in ASGI application" records caused by simulated resets."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SimulatedReset)


QUIET_RESETS = QuietResets()
