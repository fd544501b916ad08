"""``offload_key_limit_remaining_ratio``, the gauge the "key near its limit" alert reads: the share of
a key's rpm and tpm left, as the limiter computed it for the key's last request, whether the counts
live in this process or in a real Redis server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import RateLimitError
from gateway.keys import Principal
from gateway.metrics import Metrics
from gateway.services.limiter import Limiter
from tests.redis_server import RedisServer
from tests.unit.samples import metric_total


@pytest.fixture(params=["local", "redis"])
def redis_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    if request.param == "local":
        yield None
        return
    server = RedisServer(tmp_path).start()
    yield server.url
    server.stop()


def key(
    name: str, rpm: int | None = None, tpm: int | None = None, max_concurrent: int | None = None
) -> Principal:
    return Principal(name, "0" * 64, None, False, None, rpm=rpm, tpm=tpm, max_concurrent=max_concurrent)


def budget(metrics: Metrics, name: str, kind: str) -> float | None:
    return metric_total(metrics, "offload_key_limit_remaining_ratio", key=name, kind=kind)


async def test_the_gauge_follows_the_keys_requests_down_to_zero_when_refused(redis_url: str | None) -> None:
    metrics = Metrics()
    limiter = Limiter(60, metrics, redis_url)
    team = key("team", rpm=4, tpm=1000)
    try:
        first = await limiter.admit(team)
        assert budget(metrics, "team", "requests") == 0.75
        assert budget(metrics, "team", "tokens") == 1.0
        await limiter.release(team, 600, first)

        await limiter.admit(team)
        assert budget(metrics, "team", "requests") == 0.5
        assert budget(metrics, "team", "tokens") == 0.4
        await limiter.admit(team)
        await limiter.admit(team)
        with pytest.raises(RateLimitError):
            await limiter.admit(team)
        assert budget(metrics, "team", "requests") == 0.0
    finally:
        await limiter.close()


async def test_keys_without_a_limit_kind_get_no_gauge_for_it() -> None:
    metrics = Metrics()
    limiter = Limiter(60, metrics)

    await limiter.admit(key("calls", max_concurrent=2))
    await limiter.admit(key("rpm-only", rpm=10))

    assert budget(metrics, "calls", "requests") is None and budget(metrics, "calls", "tokens") is None
    assert budget(metrics, "rpm-only", "requests") == 0.9 and budget(metrics, "rpm-only", "tokens") is None
