"""Key limits in a real Redis server (Debian's redis-server on a loopback port): the same rules as
the in-process counters, shared by every limiter that points at it, and a fallback to per-process
counting while Redis is away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import RateLimitError
from gateway.keys import Principal
from gateway.metrics import Metrics
from gateway.services.limiter import Limiter
from tests.redis_server import RedisServer
from tests.unit.samples import exposition_total


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def key(name: str = "team", **limits: int) -> Principal:
    return Principal(name, "0" * 64, None, False, None, **limits)


async def test_two_limiters_on_one_redis_share_a_keys_rpm(redis: RedisServer) -> None:
    a, b = Limiter(60, Metrics(), redis.url), Limiter(60, Metrics(), redis.url)
    team = key(rpm=4)
    try:
        for limiter in (a, b, a, b):
            admission = await limiter.admit(team)
            assert admission.shared

        with pytest.raises(RateLimitError) as caught:
            await b.admit(team)
        assert 55 <= caught.value.retry_after <= 60  # type: ignore[operator]
        assert dict(caught.value.rate_headers)[b"x-ratelimit-remaining-requests"] == b"0"
        await a.admit(key("other", rpm=4))  # keys are counted apart
    finally:
        await a.close()
        await b.close()


async def test_tokens_and_requests_in_flight_are_shared_too(redis: RedisServer) -> None:
    a, b = Limiter(60, Metrics(), redis.url), Limiter(60, Metrics(), redis.url)
    team = key(tpm=100, max_concurrent=1)
    try:
        first = await a.admit(team)
        with pytest.raises(RateLimitError, match="1 requests in flight"):
            await b.admit(team)
        await a.release(team, 120, first)  # over its tpm once counted

        with pytest.raises(RateLimitError, match="100 tokens"):
            await b.admit(team)
        headers = dict((await Limiter(60, Metrics(), redis.url).admit(key("fresh", tpm=10))).headers)
        assert headers[b"x-ratelimit-remaining-tokens"] == b"10"
    finally:
        await a.close()
        await b.close()


async def test_the_sliding_window_lets_requests_in_again_as_it_moves(redis: RedisServer) -> None:
    limiter = Limiter(0.5, Metrics(), redis.url)
    team = key(rpm=2)
    try:
        await limiter.admit(team)
        await limiter.admit(team)
        with pytest.raises(RateLimitError):
            await limiter.admit(team)
        deadline = time.monotonic() + 5
        while True:  # polled: the window is Redis's clock
            try:
                await limiter.admit(team)
                break
            except RateLimitError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
    finally:
        await limiter.close()


async def test_without_redis_the_limiter_counts_per_process_then_returns_to_redis(redis: RedisServer) -> None:
    metrics = Metrics()
    limiter = Limiter(60, metrics, redis.url)
    team = key(rpm=1000)
    try:
        assert (await limiter.admit(team)).shared
        redis.stop()

        during = await limiter.admit(team)  # still served, counted here

        assert not during.shared
        assert exposition_total(metrics.render().decode(), "offload_limits_shared") == 0
        assert (exposition_total(metrics.render().decode(), "offload_limits_fallbacks_total") or 0) >= 1
        redis.start()
        limiter._retry_at = 0.0  # (white box: skip the 5 s before Redis is tried again)
        assert (await limiter.admit(team)).shared
        assert exposition_total(metrics.render().decode(), "offload_limits_shared") == 1
    finally:
        await limiter.close()


async def test_a_refusal_from_redis_says_when_the_window_resets(redis: RedisServer) -> None:
    limiter = Limiter(60, Metrics(), redis.url)
    team = key(rpm=1)
    try:
        await limiter.admit(team)
        with pytest.raises(RateLimitError) as caught:
            await limiter.admit(team)
    finally:
        await limiter.close()

    reset = dict(caught.value.rate_headers)[b"x-ratelimit-reset-requests"]
    assert reset.endswith(b"s") and reset not in (b"0ms", b"0s")  # about a minute, not "now"
