"""One replica of a version killed under load: requests that had received nothing are not lost."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import CHAT, CHAT_V2, Engines
from tests.integration.servers import GatewayProcess, engine_gauge, wait_until

pytestmark = pytest.mark.destructive


def test_killing_a_replica_under_load_loses_no_request_that_had_no_byte(
    engines: Engines, tmp_path: Path
) -> None:
    models = [
        {
            "name": "pool",
            "task": "chat",
            "policy": "round_robin",
            "engines": [
                {"url": engines.url(CHAT), "served_name": CHAT},
                {"url": engines.url(CHAT_V2), "served_name": CHAT_V2},
            ],
        }
    ]
    gw = GatewayProcess(tmp_path, models).start()

    def replicas_up() -> dict[str, float]:
        return {
            s.labels["replica"]: s.value
            for f in text_string_to_metric_families(httpx.get(gw.base_url + "/metrics").text)
            for s in f.samples
            if s.name == "offload_replica_up" and s.labels["model"] == "pool"
        }

    # a slow first probe leaves a replica unknown (no traffic) for a moment
    wait_until(lambda: replicas_up() == {"pool-0": 1, "pool-1": 1}, 30, what="both replicas up")
    client = OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0, timeout=300)
    victim = engines.by_name[CHAT_V2]
    outcomes: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(i: int) -> None:
        while not stop.is_set():
            try:
                reply = client.chat.completions.create(
                    model="pool",
                    messages=[{"role": "user", "content": f"Count from {i}."}],
                    max_tokens=12,
                    extra_body={"ignore_eos": True},
                )
                ok = reply.usage is not None and reply.usage.completion_tokens == 12
                with lock:
                    outcomes.append("ok" if ok else "short")
            except openai.APIError as exc:
                with lock:
                    outcomes.append(f"error:{type(exc).__name__}:{getattr(exc, 'status_code', '')}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        # Under load: every worker has had an answer, and the victim is generating right now.
        wait_until(
            lambda: (
                len(outcomes) >= len(threads)
                and engine_gauge(engines.url(CHAT_V2), "vllm:num_requests_running") > 0
            ),
            60,
            interval=0.05,
            what="steady load on both replicas",
        )
        assert victim.pid is not None
        os.killpg(victim.pid, signal.SIGKILL)
        killed = len(outcomes)
        # The load goes on until the gateway has taken the victim out and served two more rounds.
        wait_until(lambda: replicas_up().get("pool-1") == 0, 30, what="the victim reported down")
        down = len(outcomes)
        wait_until(lambda: len(outcomes) >= down + 2 * len(threads), 120, what="traffic after the kill")
        stop.set()
        for t in threads:
            t.join(timeout=120)
        assert all(not t.is_alive() for t in threads)
        errors = [o for o in outcomes if o != "ok"]
        assert not errors, f"lost requests: {errors}"
        assert len(outcomes) > killed + 8, "too little traffic after the kill to show failover"
        metrics = httpx.get(gw.base_url + "/metrics").text
        assert 'offload_retries_total{model="pool"' in metrics
    finally:
        stop.set()
        gw.stop()
        victim.stop()
