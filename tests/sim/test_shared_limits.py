"""Two gateway processes share one key's rpm through a real Redis server: flooded from both sides,
together they admit the key's allowance, not twice it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from engines.sim import Knobs, SimConfig
from gateway.keys import hash_key
from tests.integration.servers import GatewayProcess
from tests.redis_server import RedisServer
from tests.sim.conftest import RunningSim

KEY = "ofl-shared-flood-key"
RPM = 120


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def flood(url: str, until: float, counts: dict[int, int], lock: threading.Lock) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "sim": {"output_tokens": 1}}
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as client:
        while time.monotonic() < until:
            status = client.post(url + "/v1/chat/completions", json=body).status_code
            with lock:
                counts[status] = counts.get(status, 0) + 1


def test_two_gateways_on_one_redis_admit_one_allowance_of_a_flooded_key(
    start_sim: Callable[[SimConfig], RunningSim], redis: RedisServer, tmp_path: Path
) -> None:
    sim = start_sim(SimConfig(model="sim", knobs=Knobs(output_tokens=1)))
    config = {
        "models": [{"name": "chat", "task": "chat", "engine": {"url": sim.base_url, "served_name": "sim"}}],
        "auth": {"keys": [{"name": "flood", "hash": hash_key(KEY), "rpm": RPM}]},
        # A 6 s window instead of a minute, set the way an operator would: in the configuration.
        "limits": {"window_seconds": 6, "redis_url": redis.url},
    }
    gateways = []
    for name in ("a", "b"):
        workdir = tmp_path / name
        workdir.mkdir()
        gw = GatewayProcess(workdir, config["models"])
        gw.config_path.write_text(yaml.safe_dump(config))
        gateways.append(gw.start())
    try:
        counts: dict[int, int] = {}
        lock = threading.Lock()
        until = time.monotonic() + 3  # within one window
        threads = [
            threading.Thread(target=flood, args=(gw.base_url, until, counts, lock))
            for gw in gateways
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        shared = [httpx.get(gw.base_url + "/metrics").text for gw in gateways]
    finally:
        for gw in gateways:
            gw.stop()

    admitted = counts.get(200, 0)
    print(f"admitted {admitted} of {sum(counts.values())} requests: {counts}")
    assert RPM * 0.9 <= admitted <= RPM * 1.1, counts
    assert counts.get(429, 0) > admitted, counts  # the flood was real: most were refused
    assert set(counts) <= {200, 429}, counts
    assert all("offload_limits_shared 1.0" in text for text in shared)
