"""The load generator against the simulator: counts, timings and errors it reports are right."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.load import Dist, LoadConfig, run_load
from benchmarks.stats import format_table
from engines.sim import Knobs, SimConfig
from tests.sim.conftest import RunningSim, serve_sim

ROOT = Path(__file__).resolve().parents[2]
TTFT = 0.05


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[RunningSim]:
    """A simulator with a 50 ms time to first token and 2 ms between tokens."""
    with serve_sim(SimConfig(model="m", knobs=Knobs(ttft=TTFT, itl=0.002))) as running:
        yield running


async def test_run_load_makes_the_requested_number_of_requests_with_plausible_timings(
    slow_sim: RunningSim,
) -> None:
    config = LoadConfig(
        base_url=slow_sim.base_url,
        model="m",
        concurrency=4,
        requests=20,
        prompt_tokens=Dist(16, 32),
        output_tokens=Dist(6, 6),
    )
    result = await run_load(config)
    assert len(result.records) == 20
    assert all(r.ok for r in result.records), result.errors
    for record in result.records:
        assert record.ttft is not None and record.ttft >= TTFT
        assert record.latency is not None and record.latency >= record.ttft
        assert record.output_tokens == 6
        assert len(record.itl) == 5
        assert record.prompt_tokens > 0
    summary = result.summary()
    assert summary["ttft_s"]["p50"] >= TTFT
    assert summary["itl_s"]["count"] == 100
    assert summary["output_tokens"] == 120
    # 20 requests, 4 at a time, each at least TTFT + 5 * 2 ms: at least 5 rounds of 60 ms.
    assert 5 * (TTFT + 0.01) <= result.elapsed < 10
    assert 0 < summary["requests_per_s"] <= 4 / (TTFT + 0.01)
    assert "ttft" in format_table(result)


async def test_poisson_arrivals_stop_issuing_at_the_duration(sim: RunningSim) -> None:
    config = LoadConfig(
        base_url=sim.base_url, model="sim", rate=40, duration=0.5, stream=False, output_tokens=Dist(4, 4)
    )
    result = await run_load(config)
    assert 3 <= len(result.records) <= 60
    assert max(r.start for r in result.records) < 0.6  # none issued after the duration
    assert all(r.ok and r.output_tokens == 4 and r.ttft is None for r in result.records)


async def test_errors_are_counted_by_kind(sim: RunningSim) -> None:
    failing = LoadConfig(
        base_url=sim.base_url,
        model="sim",
        requests=6,
        concurrency=2,
        headers={"X-Sim-Error-Rate": "1", "X-Sim-Error-Status": "503"},
    )
    assert (await run_load(failing)).errors == {"http_503": 6}
    broken = LoadConfig(
        base_url=sim.base_url, model="sim", requests=4, concurrency=2, headers={"X-Sim-Reset-After": "2"}
    )
    result = await run_load(broken)
    assert result.errors == {"broken": 4}
    assert all(r.events == 2 for r in result.records)
    assert result.summary()["failed"] == 4


async def test_embeddings_load_counts_prompt_tokens(sim: RunningSim) -> None:
    result = await run_load(
        LoadConfig(
            base_url=sim.base_url, model="sim", kind="embeddings", requests=10, prompt_tokens=Dist(8, 8)
        )
    )
    assert len(result.ok) == 10
    assert all(r.prompt_tokens > 0 and r.latency is not None for r in result.records)


async def test_targets_other_than_loopback_are_refused() -> None:
    for url in ("http://10.1.2.3:8000", "http://example.com", "http://192.168.0.1"):
        with pytest.raises(ValueError, match="loopback"):
            await run_load(LoadConfig(base_url=url, model="m", requests=1))
    with pytest.raises(ValueError, match="requests or --duration"):
        await run_load(LoadConfig(base_url="http://127.0.0.1:1", model="m"))


def test_cli_prints_the_summary_and_writes_json(sim: RunningSim, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.load",
            "--base-url",
            sim.base_url,
            "--model",
            "sim",
            "--requests",
            "8",
            "--concurrency",
            "2",
            "--output-tokens",
            "3-5",
            "--quiet",
            "--out",
            str(out),
            "--extra-body",
            '{"temperature": 0}',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 0, finished.stderr
    assert "req/s" in finished.stdout and "p99" in finished.stdout
    document = json.loads(out.read_text())
    assert document["summary"]["succeeded"] == 8
    assert all(3 <= r["output_tokens"] <= 5 for r in document["records"])
