from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.api.disconnect import unless_disconnected
from gateway.errors import ClientDisconnected


class FakeRequest:
    """Only what unless_disconnected uses: ``receive()``."""

    def __init__(self, disconnect_after: float | None) -> None:
        self._disconnect_after = disconnect_after

    async def receive(self) -> dict[str, Any]:
        if self._disconnect_after is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self._disconnect_after or 0)
        return {"type": "http.disconnect"}


async def test_returns_the_result_when_the_work_finishes_first() -> None:
    async def work() -> str:
        return "answer"

    assert await unless_disconnected(FakeRequest(None).receive, work()) == "answer"  # type: ignore[arg-type]


async def test_work_errors_propagate_unchanged() -> None:
    async def work() -> None:
        raise ValueError("engine said no")

    with pytest.raises(ValueError, match="engine said no"):
        await unless_disconnected(FakeRequest(None).receive, work())  # type: ignore[arg-type]


async def test_a_disconnect_cancels_the_work_and_raises_client_disconnected() -> None:
    cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(ClientDisconnected) as info:
        await unless_disconnected(FakeRequest(0.01).receive, work())  # type: ignore[arg-type]

    assert cancelled.is_set()
    assert info.value.status == 499


async def test_other_request_messages_do_not_count_as_a_disconnect() -> None:
    class ChattyRequest:
        def __init__(self) -> None:
            self.messages = iter([{"type": "http.request", "body": b""}] * 3)

        async def receive(self) -> dict[str, Any]:
            await asyncio.sleep(0)
            message = next(self.messages, None)
            if message is None:
                await asyncio.Event().wait()
            return message  # type: ignore[return-value]

    async def work() -> str:
        await asyncio.sleep(0.02)
        return "done"

    assert await unless_disconnected(ChattyRequest().receive, work()) == "done"  # type: ignore[arg-type]


async def test_cancelling_the_caller_propagates_cancelled_error() -> None:
    work_cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            work_cancelled.set()
            raise

    caller = asyncio.ensure_future(unless_disconnected(FakeRequest(None).receive, work()))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    caller.cancel()

    with pytest.raises(asyncio.CancelledError):
        await caller
    assert work_cancelled.is_set()
