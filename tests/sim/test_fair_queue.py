"""Admission and fair queuing end to end: a real gateway process in front of the engine simulator, whose
few slots make the engine the bottleneck."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from engines.sim import Knobs, SimConfig
from gateway.keys import hash_key
from tests.integration.servers import GatewayProcess, wait_until
from tests.sim.conftest import RunningSim

KEYS = {"flood": "ofl-flood-test-key", "steady": "ofl-steady-test-key"}
StartSim = Callable[[SimConfig], RunningSim]


def gateway(
    tmp_path: Path, sim: RunningSim, limit: int, env: dict[str, str] | None = None, **admission: Any
) -> GatewayProcess:
    models = [
        {
            "name": "chat",
            "task": "chat",
            "max_in_flight": limit,
            "engine": {"url": sim.base_url, "served_name": "sim"},
        }
    ]
    gw = GatewayProcess(tmp_path, models, env)
    keys = [{"name": name, "hash": hash_key(key)} for name, key in KEYS.items()]
    gw.config_path.write_text(
        yaml.safe_dump({"models": models, "auth": {"keys": keys}, "admission": admission})
    )
    return gw.start()


def body(stream: bool) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": stream}


def auth(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[who]}"}


async def finish_order(gw: GatewayProcess, jobs: list[tuple[str, bool]]) -> list[str]:
    """Send the jobs (key, stream) one after another without waiting; the keys in the order the
    answers ended."""
    done: list[str] = []
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=60) as client:

        async def one(who: str, stream: bool) -> None:
            async with client.stream(
                "POST", "/v1/chat/completions", json=body(stream), headers=auth(who)
            ) as r:
                assert r.status_code == 200, await r.aread()
                await r.aread()
            done.append(who)

        tasks = []
        for who, stream in jobs:
            tasks.append(asyncio.create_task(one(who, stream)))
            await asyncio.sleep(0.05)  # (send order, not a wait for a condition: each is on the wire)
        await asyncio.gather(*tasks)
    return done


def test_a_steady_key_is_served_ahead_of_a_flooding_keys_backlog(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(SimConfig(model="sim", max_running=2, knobs=Knobs(itl=0.02, output_tokens=25)))
    gw = gateway(tmp_path, sim, limit=2)
    try:
        jobs = [("flood", True)] * 6 + [("steady", False)]
        order = asyncio.run(finish_order(gw, jobs))

        # First come, first served, the steady request would end last, behind the whole backlog. Fair:
        # it takes the first freed slot (it holds none, the flood holds two), so at most the two
        # running streams and the one given the other freed slot end before it.
        assert order.index("steady") <= 3, order
        assert sim.metric("vllm:request_success_total") == 7  # (finished "stop": all of them)
        assert sim.metric("vllm:num_requests_waiting") == 0
        metrics = httpx.get(gw.base_url + "/metrics").text
        assert 'offload_admission_wait_seconds_count{model="chat",version="-"}' in metrics
    finally:
        gw.stop()


def test_a_request_that_waits_too_long_is_refused_fast_with_retry_after(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = start_sim(SimConfig(model="sim", max_running=1, knobs=Knobs(itl=0.05, output_tokens=100)))
    gw = gateway(tmp_path, sim, limit=1, queue_timeout=0.3)
    try:
        with (
            httpx.Client(base_url=gw.base_url, timeout=30) as client,
            client.stream("POST", "/v1/chat/completions", json=body(True), headers=auth("flood")) as held,
        ):
            assert held.status_code == 200
            refused = client.post("/v1/chat/completions", json=body(True), headers=auth("steady"))
            alone = client.post("/v1/chat/completions", json=body(False), headers=auth("flood"))

        # steady holds nothing (a saturated model: 503); flood holds the one slot, but no other key
        # is active any more when its own wait ends: also the model's saturation, not a share.
        for answer in (refused, alone):
            assert answer.status_code == 503, answer.text
            assert int(answer.headers["retry-after"]) >= 1
            assert answer.json()["error"]["code"] == "engine_unavailable"
            assert "saturated" in answer.json()["error"]["message"]
        assert sim.metric("vllm:num_requests_waiting") == 0  # nothing piled onto the engine
    finally:
        gw.stop()


def test_a_waiting_stream_gets_pings_then_its_answer(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(SimConfig(model="sim", max_running=1, knobs=Knobs(itl=0.05, output_tokens=20)))
    gw = gateway(tmp_path, sim, limit=1, env={"OFFLOAD_UPSTREAM__KEEPALIVE_INTERVAL": "0.2"})
    try:
        with (
            httpx.Client(base_url=gw.base_url, timeout=30) as client,
            client.stream("POST", "/v1/chat/completions", json=body(True), headers=auth("flood")) as first,
        ):
            with client.stream(
                "POST", "/v1/chat/completions", json=body(True), headers=auth("steady")
            ) as waiting:
                assert first.status_code == 200
                lines = list(waiting.iter_lines())
            first.read()

        assert waiting.status_code == 200
        assert lines[0] == ": ping"  # waited for the slot with pings, then streamed
        data = [line for line in lines if line.startswith("data: ")]
        assert data[-1] == "data: [DONE]" and len(data) >= 20
        wait_until(lambda: sim.metric("vllm:num_requests_running") == 0, 5, what="the engine idle")
    finally:
        gw.stop()
