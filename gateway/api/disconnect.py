"""Cancel a non-streaming handler's work as soon as its client disconnects.

Litestar notices a disconnect on streams by itself; for a plain request the handler would keep
awaiting the engine. Cancelling it closes the upstream connection, which makes vLLM abort.
"""

from __future__ import annotations

import asyncio
import contextlib
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

    If the handler itself is cancelled (server shutdown), the work is cancelled and the
    ``CancelledError`` propagates unchanged.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if not task.done():  # the client left first
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnected("The client disconnected.")
    watcher.cancel()
    return task.result()
