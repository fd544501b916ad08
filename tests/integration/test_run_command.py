"""`offload run`: starts its local engines, serves, and on Ctrl-C leaves no process behind."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from engines.hostinfo import group_members
from tests.integration.conftest import EMBED, Engines
from tests.integration.servers import OffloadRun, free_port, wait_until


def test_run_serves_then_ctrl_c_stops_gateway_and_engines(engines: Engines, tmp_path: Path) -> None:
    # `engines` first: the models are prepared and the machine is not starting four engines at once.
    engine_port = free_port()
    run = OffloadRun(
        tmp_path,
        [
            {"name": EMBED, "task": "embeddings", "engine": {"local": {"model": EMBED, "port": engine_port}}},
        ],
    )
    try:
        run.wait_ready()
        text = run.out.read_text()
        assert "loading" in text or "ready at" in text  # visible progress
        engine_pid = run.pid_of(EMBED)
        assert group_members(engine_pid), "engine process group not found"

        client = OpenAI(base_url=run.base_url + "/v1", api_key="unused", max_retries=0)
        assert len(client.embeddings.create(model=EMBED, input="hello").data[0].embedding) == 384

        run.proc.send_signal(signal.SIGINT)  # what Ctrl-C delivers
        assert run.proc.wait(timeout=60) == 0, run.out.read_text()
        wait_until(lambda: not group_members(engine_pid), 10, what="engine processes to be gone")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{engine_port}/health", timeout=2)
    finally:
        run.stop()
