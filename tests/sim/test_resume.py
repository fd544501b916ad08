"""Streams that survive their engine: a real gateway process, two simulator replicas, the official SDK.

Each request carries its own fault (the simulator's ``sim`` body field, for the original request only:
the continuation the gateway sends elsewhere is a copy of the body and must not break again), so
whichever replica takes it breaks it after K tokens; the client must get exactly the unbroken answer.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from engines.sim import Knobs, SimConfig
from tests.integration.servers import GatewayProcess, wait_until
from tests.sim.conftest import RunningSim, serve_sim

TOKENS = 32
MESSAGES: Any = [{"role": "user", "content": "Tell me a story."}]


@pytest.fixture(scope="module")
def replicas() -> Iterator[tuple[RunningSim, RunningSim]]:
    config = SimConfig(model="sim", knobs=Knobs(output_tokens=TOKENS, itl=0.002, stall_s=30))
    with serve_sim(config) as a, serve_sim(config) as b:
        yield a, b


@pytest.fixture(scope="module")
def gateways(
    replicas: tuple[RunningSim, RunningSim], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, GatewayProcess]]:
    """``two``: both replicas (resume on by default); ``one``: the first alone."""
    work = tmp_path_factory.mktemp("resume")
    env = {"OFFLOAD_UPSTREAM__STREAM_IDLE_TIMEOUT": "0.5"}  # a stall is a break after half a second
    engines = [{"url": r.base_url, "served_name": "sim"} for r in replicas]
    two = GatewayProcess(work, [{"name": "chat", "task": "chat", "engines": engines}], env).start()
    one = GatewayProcess(work, [{"name": "chat", "task": "chat", "engines": engines[:1]}], env).start()
    try:
        yield {"two": two, "one": one}
    finally:
        two.stop()
        one.stop()


def ask(
    gw: GatewayProcess, fault: dict[str, Any] | None = None
) -> tuple[str, list[str | None], Any, set[str]]:
    """Stream one answer with the SDK: its text, finish reasons, usage and chunk ids."""
    client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0, timeout=30)
    extra = {"sim": {**fault, "fault_scope": "original"}} if fault else None
    stream = client.chat.completions.create(
        model="chat",
        messages=MESSAGES,
        stream=True,
        max_tokens=64,
        stream_options={"include_usage": True},
        extra_body=extra,
    )
    text, finishes, usage, ids = "", [], None, set()
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finishes.append(choice.finish_reason)
    return text, [f for f in finishes if f], usage, ids


BREAKS: dict[str, Callable[[int], dict[str, Any]]] = {
    # The simulator counts events, the role event first: a break after K tokens is after K + 1 events.
    "reset": lambda k: {"reset_after": k + 1},
    "close": lambda k: {"close_after": k + 1},
    "stall": lambda k: {"stall_after": k + 1},
}


@pytest.mark.parametrize("k", [1, 5, 31])
@pytest.mark.parametrize("how", sorted(BREAKS))
def test_a_stream_broken_after_k_tokens_reaches_the_client_whole(
    gateways: dict[str, GatewayProcess], how: str, k: int
) -> None:
    gw = gateways["two"]
    unbroken = ask(gw)
    text, finishes, usage, ids = ask(gw, BREAKS[how](k))

    assert text == unbroken[0]  # byte for byte, nothing repeated or lost at the splice
    assert finishes == ["stop"]
    assert usage is not None and unbroken[2] is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (unbroken[2].prompt_tokens, TOKENS)
    assert len(ids) == 1  # one stream: the first engine's id throughout
    metrics = httpx.get(gw.base_url + "/metrics").text
    assert 'offload_stream_resumes_total{model="chat",outcome="resumed",version="-"}' in metrics


def test_with_one_replica_a_broken_stream_ends_in_band_as_before(gateways: dict[str, GatewayProcess]) -> None:
    with pytest.raises(openai.APIError) as raised:
        ask(gateways["one"], {"reset_after": 6})
    assert "broke" in str(raised.value)


def test_the_summary_line_records_the_resume(gateways: dict[str, GatewayProcess]) -> None:
    gw = gateways["two"]
    ask(gw, {"reset_after": 4})
    assert '"resumes":1' in gw.log()


def test_a_client_leaving_during_a_resumed_stream_stops_the_new_engine_request(
    start_sim: Callable[[SimConfig], RunningSim], tmp_path: Path
) -> None:
    config = SimConfig(model="sim", knobs=Knobs(output_tokens=200, itl=0.02))  # a 4 s answer
    a, b = start_sim(config), start_sim(config)
    engines = [{"url": r.base_url, "served_name": "sim"} for r in (a, b)]
    gw = GatewayProcess(tmp_path, [{"name": "chat", "task": "chat", "engines": engines}]).start()
    body = {
        "model": "chat",
        "messages": MESSAGES,
        "stream": True,
        "sim": {"reset_after": 4, "fault_scope": "original"},
    }
    try:
        with httpx.Client(base_url=gw.base_url, timeout=30) as client:
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                events = 0
                for line in response.iter_lines():
                    events += line.startswith("data: ")
                    if events >= 10:  # past the splice: the continuation is streaming
                        break
            assert sum(s.engine.running for s in (a, b)) <= 1
        started = time.monotonic()
        wait_until(lambda: a.engine.running + b.engine.running == 0, 5, interval=0.02, what="engines idle")
        assert time.monotonic() - started < 1.0
        assert a.engine.finished["abort"] + b.engine.finished["abort"] >= 1
    finally:
        gw.stop()


def test_a_stream_whose_replica_its_probes_take_down_goes_on_from_another(
    start_sim: Callable[[SimConfig], RunningSim], tmp_path: Path
) -> None:
    """The replica is marked down while the stream on it is open (its /health stops answering in
    time): the stream is cut and continues on the other replica, whole, without waiting for the
    first engine to break or go silent."""
    config = SimConfig(model="sim", knobs=Knobs(output_tokens=TOKENS * 2, itl=0.05))  # a 3 s answer
    a, b = start_sim(config), start_sim(config)
    engines = [{"url": r.base_url, "served_name": "sim"} for r in (a, b)]
    env = {"OFFLOAD_HEALTH__PROBE_INTERVAL": "0.1", "OFFLOAD_HEALTH__PROBE_TIMEOUT": "0.2"}
    gw = GatewayProcess(tmp_path, [{"name": "chat", "task": "chat", "engines": engines}], env).start()
    try:
        unbroken = ask(gw)
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0, timeout=30)
        stream = client.chat.completions.create(model="chat", messages=MESSAGES, stream=True, max_tokens=64)
        text, finishes, slowed = "", [], None
        for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                if choice.finish_reason:
                    finishes.append(choice.finish_reason)
            if slowed is None and len(text.split()) >= 5:
                slowed = a if a.engine.running else b
                server = slowed.app.state.sim
                server.config = dataclasses.replace(
                    server.config, knobs=dataclasses.replace(server.config.knobs, health_delay=5.0)
                )
        assert slowed is not None
        assert text == unbroken[0] and finishes == unbroken[1] and len(finishes) == 1
        assert slowed.engine.finished["abort"] == 1  # cut there, finished on the other
        metrics = httpx.get(gw.base_url + "/metrics").text
        assert 'offload_stream_resumes_total{model="chat",outcome="resumed",version="-"} 1.0' in metrics
    finally:
        gw.stop()
