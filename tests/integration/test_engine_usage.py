"""Engine usage measured on a real vLLM engine: its process group's CPU seconds rise during a
generation and stay flat while it idles, it holds memory, and a gateway that runs it exports all of
that (with what vLLM reports itself) on /metrics, /admin/engines and ``offload engines list``."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from openai import OpenAI

from engines.control import LocalEngineControl
from engines.usage import EngineUsage, UsageMeter
from gateway.app import create_app
from gateway.config import OffloadConfig
from gateway.settings import HealthSettings, LogSettings, Settings
from tests.integration.conftest import CHAT, Engines
from tests.integration.servers import ROOT, engine_gauge, eventually, serve_in_thread, wait_until
from tests.unit.samples import exposition_total

IDLE_WINDOW = 3.0  # seconds an idle engine is watched for
IDLE_CORES = 0.1  # what an idle engine may use, in cores (vLLM 0.32 on CPU idles at about 0.03)
PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


def usage(meter: UsageMeter, engines: Engines) -> EngineUsage:
    return meter.sample({CHAT: engines.by_name[CHAT].pid})[CHAT]


def settled(meter: UsageMeter, engines: Engines) -> EngineUsage:
    """Wait until the engine has no requests and its CPU use has died down (after work, vLLM's
    threads spin briefly before they sleep); returns a sample taken then."""
    url = engines.url(CHAT)
    wait_until(
        lambda: (
            engine_gauge(url, "vllm:num_requests_running") + engine_gauge(url, "vllm:num_requests_waiting")
            == 0
        ),
        60,
        what="the engine to have no requests",
    )
    samples: list[EngineUsage] = []

    def quiet() -> bool:
        samples.append(usage(meter, engines))
        cores = samples[-1].cpu_cores
        return cores is not None and cores < IDLE_CORES and len(samples) > 2

    wait_until(quiet, 60, interval=0.25, what="the engine's CPU use to die down")
    return samples[-1]


def watched_idle(meter: UsageMeter, engines: Engines) -> float:
    """CPU seconds the idle engine used over IDLE_WINDOW: the window is the measurement itself."""
    start = usage(meter, engines)
    began = time.monotonic()
    while time.monotonic() - began < IDLE_WINDOW:
        time.sleep(0.25)
        usage(meter, engines)  # the sampling goes on as in the gateway (members may come and go)
    return usage(meter, engines).cpu_seconds - start.cpu_seconds


def test_cpu_seconds_rise_during_a_generation_and_stay_flat_while_the_engine_idles(engines: Engines) -> None:
    meter = UsageMeter(min_interval=0.5)
    settled(meter, engines)
    idle_before = watched_idle(meter, engines)

    client = OpenAI(base_url=engines.url(CHAT) + "/v1", api_key="x", max_retries=0, timeout=300)
    before = usage(meter, engines)
    began = time.monotonic()
    during: list[EngineUsage] = []
    stream = client.chat.completions.create(
        model=CHAT, messages=PROMPT, max_tokens=96, stream=True, extra_body={"ignore_eos": True}
    )
    tokens = 0
    for chunk in stream:
        tokens += sum(1 for c in chunk.choices if c.delta.content)
        during.append(usage(meter, engines))
    after = usage(meter, engines)
    elapsed = time.monotonic() - began

    settled(meter, engines)
    idle_after = watched_idle(meter, engines)

    used = after.cpu_seconds - before.cpu_seconds
    peak_cores = max(u.cpu_cores or 0.0 for u in during)
    print(
        f"\nengine usage during a generation of {tokens} tokens in {elapsed:.1f} s: "
        f"{used:.2f} CPU seconds ({used / elapsed:.2f} cores on average, peak {peak_cores:.2f}), "
        f"RSS {after.memory_bytes / 2**20:.0f} MiB over {after.processes} processes; "
        f"idle: {idle_before:.3f} and {idle_after:.3f} CPU seconds over {IDLE_WINDOW:.0f} s"
    )
    assert tokens > 0
    assert used > 0.5, f"only {used:.2f} CPU seconds for a generation of {elapsed:.1f} s"
    assert used / elapsed > 0.3 and peak_cores > 0.3
    assert after.memory_bytes > 200 * 2**20 and after.processes >= 2  # API server + EngineCore
    for idle in (idle_before, idle_after):
        assert idle <= IDLE_CORES * IDLE_WINDOW, f"{idle:.3f} CPU seconds while idle"
    assert after.gpus == ()  # a CPU engine: no GPU figures, no error


@pytest.fixture
def running_gateway(engines: Engines) -> Iterator[str]:
    """A gateway in this process that runs the session's engines (as `offload run` does), its
    `chat` model's version v1 served by the smollm2 engine."""
    config = OffloadConfig.model_validate(
        {
            "models": [
                {
                    "name": "chat",
                    "task": "chat",
                    "versions": {
                        "v1": {"weight": 100, "engines": [{"url": engines.url(CHAT), "served_name": CHAT}]}
                    },
                }
            ]
        }
    )
    settings = Settings(
        health=HealthSettings(probe_interval=0.2, scrape_interval=0.5), log=LogSettings(access=False)
    )
    app = create_app(settings, config, engines=LocalEngineControl(engines.supervisor))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    with serve_in_thread(server) as port:
        yield f"http://127.0.0.1:{port}"


def test_the_gateway_exports_a_local_engines_usage_by_model_version_and_replica(
    engines: Engines, running_gateway: str
) -> None:
    labels = {"model": "chat", "version": "v1", "replica": "chat-v1-0"}
    client = OpenAI(base_url=running_gateway + "/v1", api_key="x", max_retries=0, timeout=300)
    answer = client.chat.completions.create(model="chat", messages=PROMPT, max_tokens=16)
    assert answer.choices[0].message.content

    def exported() -> str:
        text = httpx.get(running_gateway + "/metrics", timeout=10).text
        for name in (
            "offload_engine_cpu_seconds_total",
            "offload_engine_cpu_cores",
            "offload_engine_memory_bytes",
            "offload_engine_kv_cache_usage_ratio",
            "offload_engine_requests_running",
            "offload_engine_requests_waiting",
            "offload_engine_prefix_cache_hit_ratio",  # vLLM counted the prompt's lookups
        ):
            assert exposition_total(text, name, **labels) is not None, name
        return text

    text = eventually(exported, timeout=30, interval=0.2)
    assert (exposition_total(text, "offload_engine_cpu_seconds_total", **labels) or 0) > 0
    assert (exposition_total(text, "offload_engine_memory_bytes", **labels) or 0) > 200 * 2**20
    assert exposition_total(text, "offload_engine_gpu_memory_bytes") is None  # no GPU on this host

    rows = httpx.get(running_gateway + "/admin/engines", timeout=10).json()["data"]
    row = next(r for r in rows if r["url"] == engines.url(CHAT))
    assert row["cpu_seconds"] > 0 and row["memory_bytes"] > 200 * 2**20 and row["cpu_cores"] is not None
    assert row["kv_cache_usage"] is not None and row["prefix_cache_hit_ratio"] is not None

    listed = subprocess.run(
        [sys.executable, "-m", "gateway", "engines", "list", "--url", running_gateway],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    print(f"\n$ offload engines list\n{listed}")
    header, *lines = listed.splitlines()
    assert header.split()[-5:] == ["cores", "cpu_s", "rss", "gpu", "kv"]
    chat = next(line.split() for line in lines if line.startswith(CHAT + " "))
    cores, cpu_s, rss, gpu, kv = chat[-5:]
    assert float(cores) >= 0 and float(cpu_s) > 0 and rss[-1] in "MG" and gpu == "-" and kv.endswith("%")
