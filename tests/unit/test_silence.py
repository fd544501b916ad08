"""SilenceWatch: one timer per stream interrupts a read after a quiet interval, and only a read."""

from __future__ import annotations

import asyncio

import pytest

from gateway.silence import SilenceWatch, Silent


async def test_a_read_that_gets_data_in_time_returns_it() -> None:
    watch = SilenceWatch(0.2)
    try:
        assert await watch.read(asyncio.sleep(0.01, result=b"x")) == b"x"
    finally:
        watch.stop()


async def test_a_quiet_read_is_interrupted_and_the_next_one_still_works() -> None:
    watch = SilenceWatch(0.05)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        with pytest.raises(Silent):
            await watch.read(asyncio.sleep(5))
        waited = loop.time() - started
        assert await watch.read(asyncio.sleep(0.01, result=1)) == 1
    finally:
        watch.stop()

    assert 0.04 <= waited < 1.0
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_reads_with_data_keep_the_interval_from_firing() -> None:
    watch = SilenceWatch(0.08)
    try:
        for _ in range(8):  # 8 x 30 ms: longer than the interval in total, never quiet that long
            await watch.read(asyncio.sleep(0.03))
    finally:
        watch.stop()


async def test_work_outside_a_read_is_never_interrupted() -> None:
    watch = SilenceWatch(0.02)
    try:
        await asyncio.sleep(0.1)  # e.g. a slow client taking data: no read in progress
        assert await watch.read(asyncio.sleep(0, result="ok")) == "ok"
    finally:
        watch.stop()


async def test_a_cancellation_from_elsewhere_propagates() -> None:
    watch = SilenceWatch(5)
    reader = asyncio.ensure_future(watch.read(asyncio.sleep(30)))
    await asyncio.sleep(0.01)
    reader.cancel()
    try:
        with pytest.raises(asyncio.CancelledError):
            await reader
    finally:
        watch.stop()
