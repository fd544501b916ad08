"""``python -m engines.sim`` serves the simulator on the port it is given."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_module_entry_point_serves_health_and_the_named_model() -> None:
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engines.sim",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model",
            "cli-model",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the simulator did not become healthy"
            time.sleep(0.1)
        models = httpx.get(base + "/v1/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["cli-model"]
    finally:
        process.terminate()
        process.wait(timeout=10)
