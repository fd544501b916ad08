"""A real Prometheus on a free loopback port (Debian's ``prometheus`` package, which ``make test``
installs when it is missing), with its HTTP API as the test's client."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.servers import free_port, wait_until


def binary(name: str) -> str:
    """``prometheus`` or ``promtool``; fails the test when the package is missing."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (make test installs Debian's prometheus package)")
    return found


class PrometheusServer:
    """``prometheus`` with its config and storage in ``workdir``, started and stopped by the test."""

    def __init__(self, workdir: Path, config: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self._args = [
            binary("prometheus"),
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--storage.tsdb.path={workdir / 'data'}",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusServer:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self._args, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._ready, 30, interval=0.1, what="Prometheus /-/ready")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
        try:
            return httpx.get(self.base_url + "/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``'s data; fails the test on an error status (e.g. a bad query)."""
        response = httpx.get(f"{self.base_url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (evaluated now)."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def scraped_after(self, job: str, moment: float) -> bool:
        """Whether the job's targets that are up were all last scraped after ``moment`` (Unix time)."""
        result = self.query(f'min(timestamp(up{{job="{job}"}} == 1))')
        return bool(result) and float(result[0]["value"][1]) > moment

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
