"""Noticing that an engine stream has gone quiet, at no cost per event.

``asyncio.timeout`` around every read of a stream arms and cancels a timer per event (a tenth of the
gateway's CPU per stream, measured). A stream only needs to know about silence every few seconds,
so :class:`SilenceWatch` keeps one timer per stream that re-arms itself from the time of the last
read: a read only stores a timestamp.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Silent(Exception):
    """No data for the watch's interval (raised by :meth:`SilenceWatch.read`; data already buffered
    by the reader stays buffered, as after an ``asyncio.timeout``)."""


class SilenceWatch:
    """Interrupts :meth:`read` after ``interval`` seconds without data; :meth:`stop` when done."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._reader: asyncio.Task[object] | None = None  # the task inside read(), if any
        self._fired = False
        self._timer: asyncio.TimerHandle | None = self._loop.call_at(self._last + interval, self._check)

    async def read(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``; :class:`Silent` if ``interval`` passes with no data."""
        task = asyncio.current_task()
        assert task is not None
        self._reader = task
        try:
            result = await awaitable
        except asyncio.CancelledError:
            if not self._fired:
                raise
            self._fired = False
            if task.uncancel():
                raise  # cancelled by someone else too (client gone, shutdown): that one wins
            raise Silent from None
        finally:
            self._reader = None
        self._last = self._loop.time()
        return result

    def _check(self) -> None:
        now = self._loop.time()
        due = self._last + self._interval
        if now >= due and self._reader is not None and not self._fired:
            self._fired = True
            self._reader.cancel()
            self._last = due = now  # the next interval counts from this interruption
            due += self._interval
        elif now >= due:  # nobody is reading (the client is slow to take data): look again later
            due = now + self._interval
        self._timer = self._loop.call_at(due, self._check)

    def stop(self) -> None:
        """Cancel the timer (idempotent)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
