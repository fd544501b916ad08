"""The own-cost benchmark drives the real app and refuses to time answers that are wrong."""

from __future__ import annotations

import pytest

from benchmarks import own_cost


async def test_own_cost_times_requests_and_streams_of_the_real_app() -> None:
    result = await own_cost.measure(requests=40, streams=20, rounds=2)

    assert len(result["rounds"]["request_us"]) == len(result["rounds"]["stream_us"]) == 2
    assert 0 < result["request_us"] < result["stream_us"]
    assert result["event_us"] > 0
    assert "stream event" in own_cost.render(result)


async def test_own_cost_fails_when_the_stream_it_times_is_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(own_cost, "STREAM", own_cost.STREAM[:-1])  # the engine never says [DONE]

    with pytest.raises(RuntimeError, match="unexpected stream"):
        await own_cost.measure(requests=5, streams=5, rounds=1)
