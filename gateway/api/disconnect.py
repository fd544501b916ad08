"""Cancel a handler's work as soon as its client disconnects.

Without it a handler would keep awaiting the engine (or relaying a stream nobody reads: uvicorn
drops writes to a closed connection silently). Cancelling closes the upstream connection, which
makes vLLM abort the request and free its KV cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from gateway.api.asgi import Receive
from gateway.errors import ClientDisconnected

T = TypeVar("T")


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise :class:`ClientDisconnected`.

    ``receive`` is the request's ASGI receive, read only for the disconnect once the body is in.
    One watcher task cancels the caller's own task on disconnect (cheaper than racing two tasks).
    A cancellation that is not ours (server shutdown) propagates as it is.
    """
    handler = asyncio.current_task()
    assert handler is not None
    state = {"done": False, "disconnected": False}

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not state["done"]:
            state["disconnected"] = True
            handler.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if state["disconnected"]:
            handler.uncancel()  # the cancellation was ours: turn it into a 499
            raise ClientDisconnected("The client disconnected.") from None
        raise
    finally:
        state["done"] = True
        watcher.cancel()
