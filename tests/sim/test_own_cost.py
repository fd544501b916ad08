"""The own-cost benchmark drives the real app and refuses to time answers that are wrong."""

from __future__ import annotations

import pytest

from benchmarks import own_cost


async def test_own_cost_times_requests_and_streams_of_the_real_app() -> None:
    # 3 rounds: the median is not pulled by a first round that pays for lazy imports and caches
    result = await own_cost.measure(requests=60, streams=30, rounds=3)

    assert len(result["rounds"]["request_us"]) == len(result["rounds"]["stream_us"]) == 3
    assert 0 < result["request_us"] < result["stream_us"]
    assert result["event_us"] > 0
    assert "stream event" in own_cost.render(result)


async def test_own_cost_fails_when_the_stream_it_times_is_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(own_cost, "STREAM", own_cost.STREAM[:-1])  # the engine never says [DONE]

    with pytest.raises(RuntimeError, match="unexpected stream"):
        await own_cost.measure(requests=5, streams=5, rounds=1)
