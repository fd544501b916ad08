"""`offload run`: starts its local engines, serves, and on Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI

from tests.integration.conftest import EMBED, Engines
from tests.integration.servers import ROOT, free_port, wait_until


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def test_run_serves_then_ctrl_c_stops_gateway_and_engines(engines: Engines, tmp_path: Path) -> None:
    # `engines` first: the models are prepared and the machine is not starting four engines at once.
    port, engine_port = free_port(), free_port()
    config = tmp_path / "offload.yaml"
    config.write_text(yaml.safe_dump({"models": [
        {"name": EMBED, "task": "embeddings", "engine": {"local": {"model": EMBED, "port": engine_port}}},
    ]}))
    out = tmp_path / "run.log"
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config), "--port", str(port)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "OFFLOAD_DATA_DIR": str(Path.home() / ".cache" / "offload")},
        )
    try:
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert proc.poll() is None, out.read_text()
            try:
                return httpx.get(base + "/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 300, interval=1, what="offload run to be ready")
        text = out.read_text()
        assert "loading" in text or "ready at" in text  # visible progress
        engine_pid = int(re.search(rf"engine {EMBED}: starting[^(]*\(pid (\d+)", text).group(1))  # type: ignore[union-attr]
        assert _group_members(engine_pid), "engine process group not found"

        client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        assert len(client.embeddings.create(model=EMBED, input="hello").data[0].embedding) == 384

        proc.send_signal(signal.SIGINT)  # what Ctrl-C delivers
        assert proc.wait(timeout=60) == 0, out.read_text()
        wait_until(lambda: not _group_members(engine_pid), 10, what="engine processes to be gone")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{engine_port}/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
