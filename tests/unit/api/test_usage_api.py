"""Engine usage through the app, with a real local engine (the simulator run as an engine process by
the supervisor, as ``offload run`` runs vLLM): ``/metrics`` and ``/admin/engines`` carry it."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from engines.control import LocalEngineControl
from engines.supervisor import Supervisor
from gateway.api.front import FrontDoor
from gateway.app import create_app
from gateway.config import EngineConfig, ModelConfig, OffloadConfig
from gateway.settings import HealthSettings, LogSettings, Settings
from tests.unit.engines.local import sim
from tests.unit.samples import exposition_total


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    """Two local engines, started and healthy: ``chat``, and ``spare`` that no route uses (as an
    engine still starting in a rollout)."""
    engines = [sim("chat"), sim("spare")]
    sup = Supervisor(engines, tmp_path / "models", tmp_path / "logs", out=io.StringIO())
    try:
        sup.start_all()
        sup.wait_all(poll=0.05)
        yield sup
    finally:
        sup.stop_all(grace=2)


async def eventually(
    client: AsyncTestClient[FrontDoor], name: str, timeout: float = 15, **labels: str
) -> float:
    """The first value of ``name`` on /metrics once it shows up (the monitor samples every 0.1 s;
    cores in use need two samples a second apart)."""
    async with asyncio.timeout(timeout):
        while True:
            text = (await client.get("/metrics")).text
            value = exposition_total(text, name, **labels)
            if value is not None:
                return value
            await asyncio.sleep(0.05)


async def test_a_local_engine_reports_cpu_memory_and_what_it_serves(supervisor: Supervisor) -> None:
    url = supervisor.managed["chat"].process.spec.base_url
    settings = Settings(
        health=HealthSettings(probe_interval=0.05, scrape_interval=0.1), log=LogSettings(access=False)
    )
    config = OffloadConfig(models=(ModelConfig(name="chat", task="chat", engine=EngineConfig(url=url)),))
    app = create_app(settings, config, engines=LocalEngineControl(supervisor))
    labels = {"model": "chat", "version": "-", "replica": "chat-0"}

    async with AsyncTestClient(app=app) as client:
        cores = await eventually(client, "offload_engine_cpu_cores", **labels)
        cpu = await eventually(client, "offload_engine_cpu_seconds_total", **labels)
        memory = await eventually(client, "offload_engine_memory_bytes", **labels)
        kv = await eventually(client, "offload_engine_kv_cache_usage_ratio", **labels)
        running = await eventually(client, "offload_engine_requests_running", **labels)
        text = (await client.get("/metrics")).text
        rows = (await client.get("/admin/engines")).json()["data"]

    assert cpu > 0 and cores >= 0 and memory > 10 * 2**20
    assert kv == 0 and running == 0  # the simulator's own figures, idle
    assert "offload_engine_gpu_memory_bytes{" not in text  # no GPU here (NVML finds no driver)
    row = next(r for r in rows if r["name"] == "chat")
    assert row["url"] == url and row["cpu_seconds"] > 0 and row["memory_bytes"] > 10 * 2**20
    assert row["gpus"] == [] and row["kv_cache_usage"] == 0 and row["requests_waiting"] == 0
    spare = next(r for r in rows if r["name"] == "spare")  # not routed to: its own usage, nothing reported
    assert spare["memory_bytes"] > 10 * 2**20 and spare["kv_cache_usage"] is None
    assert 'replica="spare' not in text  # series are by replica: only for engines routed to
