"""Simulator knobs, per instance and per request: errors, resets, stalls, delays, queueing."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from engines.sim import Knobs, SimConfig
from engines.sim.__main__ import parse_args
from tests.sim.conftest import RunningSim

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
StartSim = Callable[[SimConfig], RunningSim]


def test_error_rate_one_with_status_503_fails_every_request_with_503(start_sim: StartSim) -> None:
    sim = start_sim(SimConfig(knobs=Knobs(error_rate=1.0, error_status=503)))
    client = sim.client()
    for _ in range(3):
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="sim", messages=MESSAGES)
        assert caught.value.status_code == 503
    reply = httpx.post(sim.base_url + "/v1/embeddings", json={"model": "sim", "input": "x"})
    assert reply.status_code == 503
    assert reply.json()["error"] == {
        "message": "Simulated engine error.",
        "type": "ServiceUnavailableError",
        "param": None,
        "code": 503,
    }


def test_error_knobs_work_per_request_through_headers(sim: RunningSim) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        sim.client().chat.completions.create(
            model="sim",
            messages=MESSAGES,
            extra_headers={"X-Sim-Error-Rate": "1", "X-Sim-Error-Status": "503"},
        )
    assert caught.value.status_code == 503
    assert sim.client().chat.completions.create(model="sim", messages=MESSAGES).choices


def test_reset_after_n_breaks_the_stream_after_exactly_n_chunks(sim: RunningSim) -> None:
    stream = sim.client().chat.completions.create(
        model="sim", messages=MESSAGES, stream=True, extra_headers={"X-Sim-Reset-After": "3"}
    )
    received = []
    with pytest.raises(openai.APIConnectionError) as caught:
        for chunk in stream:
            received.append(chunk)
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert len(received) == 3
    assert all(c.choices[0].finish_reason is None for c in received)
    assert sim.wait_for_metric("vllm:num_requests_running", 0) == 0
    assert sim.client().chat.completions.create(model="sim", messages=MESSAGES).choices  # still serving


def test_reset_on_a_non_streaming_request_drops_the_connection(sim: RunningSim) -> None:
    with pytest.raises(openai.APIConnectionError):
        sim.client().chat.completions.create(
            model="sim", messages=MESSAGES, extra_body={"sim": {"reset_after": 0}}
        )


def test_ttft_knob_delays_the_first_token_at_least_that_long(sim: RunningSim) -> None:
    began = time.perf_counter()
    stream = sim.client().chat.completions.create(
        model="sim", messages=MESSAGES, stream=True, extra_headers={"X-Sim-TTFT": "0.3"}
    )
    first_token = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first_token = time.perf_counter() - began
            break
    stream.close()
    assert first_token is not None and first_token >= 0.3


def test_body_sim_field_sets_ttft_and_itl_of_a_whole_answer(sim: RunningSim) -> None:
    began = time.perf_counter()
    sim.client().chat.completions.create(
        model="sim", messages=MESSAGES, max_tokens=5, extra_body={"sim": {"ttft": 0.1, "itl": 0.05}}
    )
    assert time.perf_counter() - began >= 0.1 + 4 * 0.05


def test_stall_after_n_goes_silent_with_the_connection_open(sim: RunningSim) -> None:
    client = sim.client(timeout=openai.Timeout(5.0, read=0.5))
    stream = client.chat.completions.create(
        model="sim",
        messages=MESSAGES,
        stream=True,
        extra_headers={"X-Sim-Stall-After": "2", "X-Sim-Stall-S": "5"},
    )
    received = []
    with pytest.raises(openai.APITimeoutError):
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 2
    stream.close()
    assert sim.wait_for_metric("vllm:num_requests_running", 0) == 0


def test_slow_health_knob_delays_health(sim: RunningSim) -> None:
    began = time.perf_counter()
    assert httpx.get(sim.base_url + "/health", headers={"X-Sim-Health-Delay": "0.3"}).status_code == 200
    assert time.perf_counter() - began >= 0.3


def test_invalid_knob_value_is_a_400_naming_the_knob(sim: RunningSim) -> None:
    reply = httpx.post(
        sim.base_url + "/v1/chat/completions",
        headers={"X-Sim-TTFT": "soon"},
        json={"model": "sim", "messages": MESSAGES},
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "ttft"


def test_requests_beyond_max_running_count_as_waiting(start_sim: StartSim) -> None:
    sim = start_sim(SimConfig(max_running=1, knobs=Knobs(itl=0.05, output_tokens=100)))
    client = sim.client()
    first = client.chat.completions.create(model="sim", messages=MESSAGES, stream=True)
    second = client.chat.completions.create(model="sim", messages=MESSAGES, stream=True)
    try:
        assert sim.wait_for_metric("vllm:num_requests_waiting", 1) == 1
        assert sim.metric("vllm:num_requests_running") == 1
        assert sim.metric("vllm:kv_cache_usage_perc") > 0
    finally:
        first.close()
        second.close()
    assert sim.wait_for_metric("vllm:num_requests_running", 0) == 0
    assert sim.metric("vllm:num_requests_waiting") == 0


def test_cli_flags_become_the_instance_config() -> None:
    config, args = parse_args(
        [
            "--port",
            "9",
            "--served-model-name",
            "a",
            "b",
            "--ttft",
            "0.5",
            "--reset-after",
            "3",
            "--max-running",
            "4",
        ]
    )
    assert (config.model, config.aliases, config.max_running, args.port) == ("a", ("b",), 4, 9)
    assert config.knobs.ttft == 0.5 and config.knobs.reset_after == 3 and config.knobs.stall_after is None
