"""Versions rolled out by editing the file: `offload run` with real vLLM engines reconciles them
on reload while a steady streaming load runs, and no request fails.

The file moves from ``v1`` alone to ``v1 90 / v2 10``, then ``v2`` alone, then back to ``v1``. Each
added engine is started and routed only once up; each removed one drains, then its processes are
gone; ``offload engines list`` shows each step (starting, ready, draining/stopping, retired). The
scenario is in ``tests/integration/rollout.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.rollout import roll_out_under_load, versions
from tests.integration.servers import OffloadRun, free_port

pytestmark = pytest.mark.destructive  # heavy: after the fast tests

START_TIMEOUT = 300  # one vLLM engine loading on a busy 2-core machine


@pytest.fixture
def ports() -> dict[str, int]:
    return {"v1": free_port(), "v2": free_port()}


@pytest.fixture
def run(tmp_path: Path, ports: dict[str, int]) -> Iterator[OffloadRun]:
    # Not the session's `engines`: three more vLLM engines would only compete for the cores
    # (`offload run` prepares the model itself when needed).
    offload = OffloadRun(tmp_path, versions(ports, {"v1": 1}))
    yield offload
    offload.stop()


def test_versions_roll_out_by_editing_the_file_under_load(
    run: OffloadRun, ports: dict[str, int], tmp_path: Path
) -> None:
    report = roll_out_under_load(run, ports, tmp_path / "offload.yaml", START_TIMEOUT)
    print("\nrollout:", json.dumps(report, indent=1))
