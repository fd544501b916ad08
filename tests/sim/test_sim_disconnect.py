"""A client that goes away frees its running slot, as vLLM aborts the request."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from openai.types.chat import ChatCompletionMessageParam

from engines.sim import Knobs, SimConfig
from tests.sim.conftest import RunningSim

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
StartSim = Callable[[SimConfig], RunningSim]


def test_closing_a_stream_early_brings_running_back_to_zero(start_sim: StartSim) -> None:
    sim = start_sim(SimConfig(knobs=Knobs(itl=0.05, output_tokens=200)))
    stream = sim.client().chat.completions.create(model="sim", messages=MESSAGES, stream=True)
    for _, _chunk in zip(range(3), stream, strict=False):
        pass
    assert sim.metric("vllm:num_requests_running") == 1
    stream.close()
    assert sim.wait_for_metric("vllm:num_requests_running", 0) == 0
    assert sim.metric("vllm:kv_cache_usage_perc") == 0
    assert sim.engine.finished["abort"] == 1


def test_a_client_leaving_a_non_streaming_request_frees_its_slot(start_sim: StartSim) -> None:
    sim = start_sim(SimConfig(knobs=Knobs(ttft=5.0)))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            sim.base_url + "/v1/chat/completions",
            json={"model": "sim", "messages": MESSAGES},
            timeout=httpx.Timeout(5.0, read=0.3),
        )
    assert sim.wait_for_metric("vllm:num_requests_running", 0) == 0
    assert sim.engine.finished["abort"] == 1
