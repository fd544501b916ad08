"""The soak (``benchmarks/soak.py``) with small bounds: 200 streams held for 2 minutes through a
gateway process to two simulator processes, a fifth of them left by their client at random points,
then 5,000 non-streaming requests. Afterwards: no error the run did not inject, the gateway's RSS
flat after the warm-up, its descriptors back, nothing in flight in the gateway or running in an
engine. Writes ``benchmarks/results/reliability/soak-short.json`` (``make soak`` writes ``soak.json``).
"""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from benchmarks.soak import RESULTS
from tests.integration.servers import ROOT

OUT = RESULTS / "soak-short.json"
STREAMS, MINUTES, REQUESTS = 200, 2, 5000


@pytest.mark.soak
def test_a_short_soak_leaves_nothing_behind() -> None:
    argv = [sys.executable, "-m", "benchmarks.soak", "--streams", str(STREAMS), "--minutes", str(MINUTES)]
    argv += ["--requests", str(REQUESTS), "--warmup", "30", "--out", str(OUT)]
    OUT.unlink(missing_ok=True)
    with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as soak:
        try:
            _, stderr = soak.communicate(timeout=MINUTES * 60 + 480)
        except subprocess.TimeoutExpired:
            soak.terminate()  # SIGTERM: the soak stops the servers it started, then exits
            _, stderr = soak.communicate(timeout=60)
            pytest.fail(f"the soak did not end in time:\n{stderr[-3000:]}")
    assert OUT.is_file(), f"no results (exit {soak.returncode}):\n{stderr[-3000:]}"
    result = orjson.loads(OUT.read_bytes())

    assert result["streams"] == STREAMS and result["requests"] == REQUESTS
    assert result["errors"] == {}, f"errors the run did not inject: {result['errors']}"
    assert result["injected_disconnects"] > 0
    assert result["streams_open"]["peak"] >= 0.95 * STREAMS, result["streams_open"]
    assert result["rss_slope_mb_per_min"] < 1.0, (result["rss_mb"], result["rss_slope_mb_per_min"])
    fds = result["fds"]["after_by_kind"]
    assert fds["client"] == 0 and fds["close_wait"] == 0, fds
    assert fds["other"] <= result["fds"]["baseline_by_kind"]["other"], result["fds"]
    assert result["in_flight_after"] == 0
    assert result["engine_running_after"] == 0 and result["engine_waiting_after"] == 0
    assert result["passed"], result["checks"]
    assert soak.returncode == 0, stderr[-3000:]
