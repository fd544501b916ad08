"""Real but fast engine processes for the engines package's tests: the repository's engine
simulator (a vLLM-shaped HTTP server with ``/health``), or any Python snippet, in place of vLLM."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.spec import EngineLaunch, EngineSpec, Task


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "the condition") -> None:
    """Poll ``condition`` every 20 ms; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@dataclass(frozen=True)
class SimSpec(EngineSpec):
    """An engine that runs ``python -m engines.sim`` on the spec's host and port (up in well under a second)."""

    def argv(self) -> list[str]:
        host, port = self.launch.host, str(self.launch.port)
        return [
            sys.executable,
            "-m",
            "engines.sim",
            "--host",
            host,
            "--port",
            port,
            "--model",
            self.served_name,
        ]


@dataclass(frozen=True)
class ScriptSpec(EngineSpec):
    """An engine that runs a Python snippet (it gets the port as ``sys.argv[1]``)."""

    code: str = "import time; time.sleep(60)"

    def argv(self) -> list[str]:
        return [sys.executable, "-c", self.code, str(self.launch.port)]


def sim(name: str = "sim", task: Task = "chat", **launch: Any) -> SimSpec:
    """A simulator engine on a free port."""
    settings = EngineLaunch(model="sim", port=launch.pop("port", None) or free_port(), **launch)
    return SimSpec(name, task, Path("."), name, settings)


def script(code: str, name: str = "script", **launch: Any) -> ScriptSpec:
    settings = EngineLaunch(model="script", port=launch.pop("port", None) or free_port(), **launch)
    return ScriptSpec(name, "chat", Path("."), name, settings, code)


# A simulator that first starts a helper in its process group, as vLLM's API server starts its
# EngineCore and Worker: stopping only the leader would leave the helper behind.
FAMILY = (
    "import os, subprocess, sys\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'engines.sim', '--port', sys.argv[1]])\n"
)

# Ignores SIGTERM (and so does the child it starts in its group): only SIGKILL ends them.
STUBBORN = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print('ignoring SIGTERM', flush=True)\n"
    "time.sleep(60)\n"
)

# Answers /health; on SIGTERM lingers half a second before it exits (an engine shutting down).
LINGERING = (
    "import http.server, os, signal, sys, threading\n"
    "class Health(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200)\n"
    "        self.end_headers()\n"
    "    def log_message(self, *args):\n"
    "        pass\n"
    "server = http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), Health)\n"
    "signal.signal(signal.SIGTERM, lambda *_: threading.Timer(0.5, os._exit, (0,)).start())\n"
    "server.serve_forever()\n"
)
