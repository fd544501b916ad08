"""Cancel a non-streaming handler's work as soon as its client disconnects.

Litestar notices a disconnect on streams by itself; for a plain request the handler would keep
awaiting the engine. Cancelling it closes the upstream connection, which makes vLLM abort.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from litestar import Request

from gateway.services.errors import GatewayError

T = TypeVar("T")


class ClientDisconnected(GatewayError):
    """The client left before the answer was ready (logged as 499; nobody receives the body)."""

    status = 499
    type = "client_disconnected"
    code = "client_disconnected"


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise :class:`ClientDisconnected`.

    One watcher task cancels the handler's own task on disconnect (cheaper than racing two tasks).
    If the handler is cancelled for another reason (server shutdown), ``CancelledError`` propagates.
    """
    handler = asyncio.current_task()
    assert handler is not None
    state = {"done": False, "disconnected": False}

    async def watch() -> None:
        await _wait_for_disconnect(request)
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
