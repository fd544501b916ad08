"""Real servers on loopback for integration tests: vLLM engines and gateway processes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import uvicorn
import yaml

from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def read_until_closed(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """Everything a server sends on ``sock`` until it closes the connection, and the seconds that
    took; fails the test if the connection is still open after ``within`` seconds."""
    start = time.monotonic()
    received = b""
    while True:
        left = within - (time.monotonic() - start)
        assert left > 0, f"the connection is still open after {within} s (received {received[:300]!r})"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue  # the assertion above ends the loop
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return received, time.monotonic() - start
        received += chunk


@contextmanager
def serve_in_thread(server: uvicorn.Server, host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """Run ``server`` in a daemon thread on ``host:port`` (0: a free port) until the block ends;
    yields the port once the server has started."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], object], timeout: float, interval: float = 0.2, what: str = "condition"
) -> float:
    """Poll ``predicate`` until true; return seconds waited, or fail the test after ``timeout``.

    Use it (or :func:`eventually`) for every effect that lands after the client is done: the gateway
    writes its summary line and counts its metrics once the response is sent, which can be just after
    the client has read the end of it; an engine updates its counters on its own schedule.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def eventually(check: Callable[[], T], timeout: float = 10, interval: float = 0.05) -> T:
    """Call ``check`` until it stops failing an assertion; return its result. After ``timeout``
    seconds its last assertion error is raised, so a failure says which expectation was not met."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval)


def engine_gauge(base_url: str, name: str) -> float:
    """A vLLM gauge (e.g. ``vllm:num_requests_running``) read from an engine's /metrics."""
    text = httpx.get(base_url + "/metrics", timeout=5).text
    values = [
        float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    ]
    assert values, f"{name} not in engine metrics"
    return sum(values)


def engine_idle_after(base_url: str, since: float, timeout: float = 5.0, interval: float = 0.05) -> float:
    """Seconds from ``since`` to the start of the first engine scrape that shows nothing running.

    Timed from the scrape's start, not its end: rendering vLLM's /metrics on a busy CPU takes
    hundreds of milliseconds, which is the test's cost, not the time the engine took to abort.
    """
    while True:
        began = time.monotonic()
        if engine_gauge(base_url, "vllm:num_requests_running") == 0:
            return began - since
        assert began - since < timeout, f"the engine still ran its request {timeout:.0f} s later"
        time.sleep(interval)


class GatewayProcess:
    """``python -m gateway serve`` as a child process with its own config and settings."""

    def __init__(self, workdir: Path, models: list[dict], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / f"gateway-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump({"models": models}))
        self.log_path = workdir / f"gateway-{self.port}.log"
        self._env = {
            **os.environ,
            "OFFLOAD_CONFIG": str(self.config_path),
            "OFFLOAD_HEALTH__PROBE_INTERVAL": "0.5",
            "OFFLOAD_LOG__FORMAT": "json",
            "OFFLOAD_SERVER__DRAIN_GRACE": "0",  # no load balancer to wait for (tests/sim/test_drain.py)
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        """The command line of ``offload serve`` for this gateway."""
        return [sys.executable, "-m", "gateway", "serve", "--port", str(self.port)]

    def run_to_exit(self, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the gateway expecting it to refuse to start: its exit status and output."""
        return subprocess.run(
            self.argv, cwd=ROOT, env=self._env, capture_output=True, text=True, timeout=timeout
        )

    def start(self, ready: bool = True, tcp: bool = True) -> GatewayProcess:
        """Start it; wait for /health (and /ready when ``ready``) unless it serves no TCP."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self._env, stdout=log, stderr=subprocess.STDOUT
            )
        if not tcp:
            return self
        wait_until(self._answers, 30, what="gateway /health")
        if ready:
            wait_until(
                lambda: httpx.get(self.base_url + "/ready?all=true").status_code == 200, 30, what="/ready"
            )
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited: {self.log_path.read_text()[-2000:]}")
        try:
            return httpx.get(self.base_url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self, since: int = 0) -> str:
        """The gateway's output so far (from byte ``since``: see :meth:`log_mark`)."""
        with self.log_path.open("rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    def log_mark(self) -> int:
        """Where the log ends now: what happens next is ``log(since=mark)``."""
        return self.log_path.stat().st_size

    def wait_for_log(self, text: str, since: int = 0, timeout: float = 10) -> None:
        """Wait until ``text`` shows up in the log after byte ``since``."""
        wait_until(lambda: text in self.log(since), timeout, interval=0.05, what=f"{text!r} in the log")

    def summaries(self, request_id: str) -> list[dict[str, Any]]:
        """The summary lines (JSON) logged so far for the request with this ``X-Request-Id``."""
        lines = []
        for line in self.log().splitlines():
            if request_id not in line:
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # not one of ours, or a line still being written
            if entry.get("event") == "request" and entry.get("request_id") == request_id:
                lines.append(entry)
        return lines

    def summary(self, request_id: str, timeout: float = 10) -> dict[str, Any]:
        """The request's one summary line, waited for: the gateway writes it once the response is
        sent, which can be just after the client has read the end of it."""

        def written() -> list[dict[str, Any]]:
            lines = self.summaries(request_id)
            assert lines, f"no summary line for request {request_id!r} in the gateway log"
            return lines

        lines = eventually(written, timeout)
        assert len(lines) == 1, f"{len(lines)} summary lines for one request: {lines}"
        return lines[0]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class OffloadRun:
    """`python -m gateway run` as a child process."""

    def __init__(
        self,
        tmp: Path,
        models: list[dict],
        launcher: tuple[str, ...] = ("-m", "gateway"),
        env: dict[str, str] | None = None,
    ) -> None:
        """``launcher``: what follows the interpreter on the command line (``-c CODE`` runs a
        patched ``offload``); ``env``: settings over the defaults below."""
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = tmp / "offload.yaml"
        config.write_text(yaml.safe_dump({"models": models}))
        self.out = tmp / "run.log"
        argv = [sys.executable, *launcher, "run", "--config", str(config), "--port", str(self.port)]
        with self.out.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "OFFLOAD_DATA_DIR": str(Settings().data_dir),
                    "OFFLOAD_HEALTH__PROBE_INTERVAL": "0.5",
                    "OFFLOAD_HEALTH__COOLDOWN": "0.5",
                    "OFFLOAD_LOG__FORMAT": "json",
                    "OFFLOAD_SERVER__DRAIN_GRACE": "0",
                    **(env or {}),
                },
            )

    def wait_ready(self, timeout: float = 300) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, self.out.read_text()[-3000:]
            try:
                return httpx.get(self.base_url + "/ready?all=true", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, interval=1, what="offload run to be ready")

    def engines(self) -> dict[str, dict]:
        return {e["name"]: e for e in httpx.get(self.base_url + "/admin/engines", timeout=10).json()["data"]}

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "engines", *args, "--url", self.base_url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def pid_of(self, name: str) -> int:
        return int(
            re.findall(rf"engine {re.escape(name)}: starting[^(]*\(pid (\d+)", self.out.read_text())[-1]
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
