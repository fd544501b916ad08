"""`offload run` supervising real engines: crash recovery, on-demand loading, memory limits, shutdown."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from engines.hostinfo import group_members
from engines.supervisor import Supervisor
from gateway.config import EngineConfig, LocalEngine, ModelConfig, OffloadConfig
from gateway.local_engines import engine_specs
from gateway.settings import Settings
from tests.integration.conftest import EMBED, Engines
from tests.integration.servers import GatewayProcess, OffloadRun, free_port, wait_until

pytestmark = pytest.mark.destructive  # heavy: after the fast tests


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def run_two(engines: Engines, tmp: Path) -> Iterator[OffloadRun]:
    # `engines` first: models are prepared and the session's engines are not starting any more.
    run = OffloadRun(
        tmp,
        [
            {
                "name": "embed",
                "task": "embeddings",
                "engine": {"local": {"model": EMBED, "port": free_port()}},
            },
            {
                "name": "lazy",
                "task": "embeddings",
                "engine": {
                    "local": {"model": EMBED, "port": free_port(), "on_demand": True, "idle_timeout": 8}
                },
            },
        ],
    )
    yield run
    run.stop()


def test_crash_restart_on_demand_and_sigterm(run_two: OffloadRun) -> None:
    run = run_two
    run.wait_ready()
    listing = run.cli("list")
    assert re.search(r"^embed\s+ready", listing, re.M) and re.search(r"^lazy\s+stopped", listing, re.M), (
        listing
    )
    client = OpenAI(base_url=run.base_url + "/v1", api_key="x", max_retries=0, timeout=300)

    # kill -9 the engine while requests flow: the gateway stays up, the supervisor restarts it
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                r = httpx.post(
                    run.base_url + "/v1/embeddings", json={"model": "embed", "input": "x"}, timeout=30
                )
                statuses.append(r.status_code)
            except httpx.HTTPError:
                statuses.append(-1)
            time.sleep(0.1)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        time.sleep(1)
        killed_at = time.monotonic()
        os.killpg(run.pid_of("embed"), signal.SIGKILL)
        wait_until(lambda: statuses and statuses[-1] != 200, 10, interval=0.05, what="the outage to show")
        wait_until(lambda: statuses[-1] == 200, 240, interval=0.2, what="traffic to resume")
        recovery = time.monotonic() - killed_at
    finally:
        stop.set()
        sender.join()
    # 503 + Retry-After while it is down; the one request in flight at the kill may get 502
    assert set(statuses) <= {200, 502, 503}, f"unexpected answers during the outage: {set(statuses)}"
    assert statuses.count(502) <= 1 and statuses.count(503) >= 1
    assert httpx.get(run.base_url + "/health").status_code == 200
    # The router's own health check can let traffic through a moment before the supervisor's
    # next tick marks the engine ready: wait for that tick rather than read the state once.
    wait_until(lambda: run.engines()["embed"]["state"] == "ready", 10, interval=0.1, what="embed ready")
    embed = run.engines()["embed"]
    assert embed["restarts"] == 1 and embed["last_exit"] == "killed by SIGKILL" and embed["state"] == "ready"
    print(f"\nrecovery after kill -9: {recovery:.1f} s")

    # on demand: the first request waits for the engine to load, then succeeds
    started = time.monotonic()
    assert len(client.embeddings.create(model="lazy", input="wake up").data[0].embedding) == 384
    print(f"on-demand first request: {time.monotonic() - started:.1f} s")
    lazy_pid = run.pid_of("lazy")
    assert run.engines()["lazy"]["state"] == "ready"
    # ...and after the idle timeout it is gone
    wait_until(lambda: run.engines()["lazy"]["state"] == "stopped", 60, interval=0.5, what="idle stop")
    wait_until(lambda: not group_members(lazy_pid), 30, what="lazy engine processes gone")
    assert httpx.get(run.base_url + "/ready").status_code == 200  # still routable: it can start again

    # SIGTERM: the gateway stops its engines and leaves no process
    embed_pid = run.pid_of("embed")
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=60) == 0
    wait_until(lambda: not group_members(embed_pid), 30, what="engine processes gone after SIGTERM")


def test_streaming_client_gets_keepalives_while_on_demand_engine_loads(engines: Engines, tmp: Path) -> None:
    run = OffloadRun(
        tmp,
        [
            {
                "name": "chat",
                "task": "chat",
                "engine": {
                    "local": {
                        "model": "smollm2",
                        "port": free_port(),
                        "dtype": "float32",
                        "max_model_len": 2048,
                        "on_demand": True,
                        "idle_timeout": 600,
                    }
                },
            },
        ],
    )
    try:
        run.wait_ready(60)
        body = {
            "model": "chat",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "stream": True,
            "max_tokens": 10,
        }
        with httpx.stream(
            "POST", run.base_url + "/v1/chat/completions", json=body, timeout=300, headers={}
        ) as r:
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line]
        # keep-alive interval defaults to 15 s and loading takes longer
        assert ": ping" in lines
        assert lines[-1] == "data: [DONE]"
        assert "Paris" in "".join(lines)
    finally:
        run.stop()


def test_killing_the_gateway_leaves_no_engine_behind(engines: Engines, tmp: Path) -> None:
    run = OffloadRun(
        tmp,
        [{"name": "embed", "task": "embeddings", "engine": {"local": {"model": EMBED, "port": free_port()}}}],
    )
    try:
        run.wait_ready()
        pid = run.pid_of("embed")
        run.proc.kill()  # SIGKILL: no chance to clean up; the engines get their parent-death signal
        run.proc.wait()
        wait_until(lambda: not group_members(pid), 60, what="engine processes to exit after the gateway died")
    finally:
        run.stop()


def test_engine_over_its_memory_limit_is_killed_and_restarted_gateway_unaffected(
    engines: Engines, gateway: GatewayProcess, tmp: Path
) -> None:
    port = free_port()
    config = OffloadConfig(
        models=(
            ModelConfig(
                name="tight",
                task="embeddings",
                engine=EngineConfig(local=LocalEngine(model=EMBED, port=port, memory_limit_gib=0.4)),
            ),
        )
    )
    models_dir = Settings().models_dir
    supervisor = Supervisor(engine_specs(config, models_dir), models_dir, tmp / "logs")
    managed = supervisor.managed["tight"]
    assert managed.process.limits.memory_mechanism in ("cgroup", "rlimit")
    try:
        supervisor.start("tight")
        supervisor.start_watching(interval=0.2)
        wait_until(lambda: managed.restarts >= 2, 120, what="the engine to be killed and restarted twice")
        if managed.process.limits.memory_mechanism == "cgroup":
            assert managed.last_exit == "killed by SIGKILL"  # the OOM killer's signal
        # the gateway (another process) is unaffected and keeps serving
        assert httpx.get(gateway.base_url + "/health").status_code == 200
        client = OpenAI(base_url=gateway.base_url + "/v1", api_key="x", max_retries=0)
        assert client.embeddings.create(model=EMBED, input="fine").data
    finally:
        supervisor.stop_all()
