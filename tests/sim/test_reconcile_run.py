"""The rollout of ``tests/integration/test_rollout.py`` in seconds: a real `offload run` process,
real reloads, real engine processes, but each engine is the engine simulator (loading for a second,
streaming slowly) instead of vLLM. Proves the wiring (reloader -> rollout -> supervisor -> routes)
on every run of the fast tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.rollout import roll_out_under_load, versions
from tests.integration.servers import OffloadRun, free_port

# `offload run`, with each engine's command line swapped for the simulator's.
LAUNCH = """
import sys
from engines.spec import EngineSpec

def simulator(self):
    return [sys.executable, "-m", "engines.sim", "--host", self.launch.host, "--port", str(self.launch.port),
            "--model", self.served_name, "--health-delay", "1", "--ttft", "0.05", "--itl", "0.02"]

EngineSpec.argv = simulator
from gateway.main import main
sys.exit(main(sys.argv[1:]))
"""


class SimulatedRun(OffloadRun):
    """`offload run` whose engines are simulators, with its own data directory (no reaping of
    another run's engines)."""

    def __init__(self, tmp: Path, models: list[dict[str, object]]) -> None:
        env = {"OFFLOAD_DATA_DIR": str(tmp / "data"), "OFFLOAD_HEALTH__PROBE_INTERVAL": "0.2"}
        super().__init__(tmp, models, launcher=("-c", LAUNCH), env=env)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[tuple[SimulatedRun, dict[str, int]]]:
    ports = {"v1": free_port(), "v2": free_port()}
    (tmp_path / "model").mkdir()
    offload = SimulatedRun(tmp_path, versions(ports, {"v1": 1}, str(tmp_path / "model")))
    yield offload, ports
    offload.stop()


def test_versions_roll_out_by_editing_the_file_under_load(
    run: tuple[SimulatedRun, dict[str, int]], tmp_path: Path
) -> None:
    offload, ports = run
    report = roll_out_under_load(offload, ports, tmp_path / "offload.yaml", 60, str(tmp_path / "model"))

    print("\nrollout (simulated engines):", json.dumps(report, indent=1))
    assert report["failures"] == 0
