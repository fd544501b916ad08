"""The servers of the overhead benchmark: engine simulators, Offload, and the peers it is compared with.

Peers (LiteLLM proxy, vllm-router) are installed on demand into their own virtualenvs under
``~/.cache/offload/peers/<name>`` (``$OFFLOAD_PEERS_DIR`` overrides), never into Offload's
environment. A marker file records what was installed and the exact versions, so later runs reuse
the install. Every server is a child process in its own session (process group), listening on a
loopback port; :meth:`Server.stop` ends that group and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
_RESERVED = range(8000, 8201)  # other people's servers on this machine: never bind these
_MARKER = ".offload-peer.json"


def peers_dir() -> Path:
    """Where peer virtualenvs live."""
    if os.environ.get("OFFLOAD_PEERS_DIR"):
        return Path(os.environ["OFFLOAD_PEERS_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "offload" / "peers"


def free_port() -> int:
    """A loopback TCP port nobody listens on now (from the ephemeral range, never 8000-8200)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _RESERVED:
            return port
    raise RuntimeError("no free port outside 8000-8200")


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """A peer: what to pip-install into its virtualenv and which distributions' versions to record."""

    name: str
    requirements: tuple[str, ...]
    recorded: tuple[str, ...]


LITELLM = PeerSpec(
    "litellm",
    # opentelemetry-sdk and prisma: without them LiteLLM retries two failing imports on every request.
    ("litellm[proxy]", "opentelemetry-sdk", "prisma"),
    ("litellm", "opentelemetry-sdk", "prisma", "fastapi", "uvicorn", "uvloop", "httpx", "aiohttp"),
)
VLLM_ROUTER = PeerSpec("vllm-router", ("vllm-router",), ("vllm-router",))


@dataclass(slots=True)
class PeerInstall:
    """A ready peer virtualenv."""

    spec: PeerSpec
    venv: Path
    versions: dict[str, str]
    install_seconds: float | None
    """How long the install took when it happened in this run; None when reused."""

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name


def ensure_peer(
    spec: PeerSpec, *, reinstall: bool = False, say: Callable[[str], None] = print
) -> PeerInstall:
    """The peer's virtualenv, installed first if needed (a few minutes the first time)."""
    venv = peers_dir() / spec.name
    marker = venv / _MARKER
    if not reinstall and marker.is_file():
        saved = json.loads(marker.read_text())
        if tuple(saved.get("requirements", ())) == spec.requirements and (venv / "bin" / "python").exists():
            return PeerInstall(spec, venv, saved["versions"], None)
    if venv.exists():
        shutil.rmtree(venv)  # a partial or outdated install under our own cache dir
    venv.parent.mkdir(parents=True, exist_ok=True)
    say(f"installing {spec.name} into {venv} ({' '.join(spec.requirements)}) ...")
    started = time.monotonic()
    log = venv.parent / f"{spec.name}-install.log"
    with log.open("wb") as out:
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], check=True, stdout=out, stderr=out, timeout=300
        )
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        done = subprocess.run([*pip, *spec.requirements], stdout=out, stderr=out, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"installing {spec.name} failed; see {log}")
    seconds = time.monotonic() - started
    probe = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({d: m.version(d) for d in sys.argv[1:]}))"
    )
    versions = json.loads(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", probe, *spec.recorded],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    )
    marker.write_text(
        json.dumps(
            {
                "requirements": spec.requirements,
                "versions": versions,
                "install_seconds": round(seconds, 1),
                "installed_at": time.time(),
            },
            indent=2,
        )
    )
    say(f"installed {spec.name} {versions.get(spec.recorded[0])} in {seconds:.0f} s")
    return PeerInstall(spec, venv, versions, seconds)


@dataclass(slots=True)
class Server:
    """One child process listening on a loopback port, in its own process group."""

    name: str
    argv: list[str]
    port: int
    ready_path: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = 180.0
    proc: subprocess.Popen[bytes] | None = None
    started_in: float = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Server:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.log_path.parent,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_in = time.monotonic()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def poll_ready(self) -> bool:
        """True once ``ready_path`` answers 200; raises if the process died or the wait timed out."""
        assert self.proc is not None
        if not self.alive():
            tail = self.log_path.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(self.base_url + self.ready_path, timeout=2) as answer:
                if answer.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > self.started_in + self.ready_timeout:
            raise RuntimeError(f"{self.name} not ready within {self.ready_timeout} s; log: {self.log_path}")
        return False

    def wait_ready(self) -> float:
        """Seconds from start until ready (see :func:`wait_all`)."""
        return wait_all([self])[self.name]

    def stop(self) -> None:
        """SIGTERM to the server's own process group, SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # start_new_session: group id == our child's pid
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass


def wait_all(servers: list[Server]) -> dict[str, float]:
    """Wait for every server at once; seconds from each one's start until it was ready, by name.
    Raises the first start-up failure."""
    ready: dict[str, float] = {}
    while len(ready) < len(servers):
        for server in servers:
            if server.name not in ready and server.poll_ready():
                ready[server.name] = time.monotonic() - server.started_in
        time.sleep(0.1)
    return ready


def sim_server(
    workdir: Path,
    model: str,
    *,
    itl: float,
    output_tokens: int,
    ttft: float = 0.0,
    name: str | None = None,
    extra: Sequence[str] = (),
) -> Server:
    """The engine simulator serving ``model`` (``ttft`` seconds to the first token, ``itl`` between
    tokens; ``extra``: more of its command-line options); its log is ``<name>.log``."""
    port = free_port()
    name = name or f"sim-{model}"
    argv = [sys.executable, "-m", "engines.sim", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--served-model-name", model, "--ttft", str(ttft), "--itl", str(itl)]
    argv += ["--output-tokens", str(output_tokens), *extra]
    return Server(name, argv, port, "/health", workdir / f"{name}.log", env={"PYTHONPATH": str(ROOT)})


def offload_server(
    workdir: Path,
    engines: dict[str, str],
    *,
    access_log: bool = False,
    root: Path = ROOT,
    name: str | None = None,
) -> Server:
    """``python -m gateway serve`` with one chat model per engine URL; production defaults otherwise.

    ``root`` is the checkout whose gateway runs (another one, e.g. a ``git worktree`` of main, to A/B a change).
    """
    port = free_port()
    config = workdir / "offload.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {"name": name, "task": "chat", "engine": {"url": url}} for name, url in engines.items()
                ]
            }
        )
    )
    env = {
        "OFFLOAD_CONFIG": str(config),
        "OFFLOAD_LOG__ACCESS": "true" if access_log else "false",
        "OFFLOAD_LOG__FORMAT": "json",
        "PYTHONPATH": str(root),
    }
    name = name or ("offload-log" if access_log else "offload")
    return Server(
        name,
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        port,
        "/ready?all=true",
        workdir / f"{name}.log",
        env=env,
    )


def litellm_server(peer: PeerInstall, workdir: Path, engines: dict[str, str], master_key: str) -> Server:
    """LiteLLM proxy as its production guide says: one uvicorn worker, no database, no callbacks,
    spend and error logs off, no debug logs, local price map."""
    port = free_port()
    config = workdir / "litellm.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": name,
                        "litellm_params": {
                            "model": f"openai/{name}",
                            "api_base": url + "/v1",
                            "api_key": "none",
                        },
                    }
                    for name, url in engines.items()
                ],
                "general_settings": {
                    "master_key": master_key,
                    "disable_spend_logs": True,
                    "disable_error_logs": True,
                },
                "litellm_settings": {"request_timeout": 600, "set_verbose": False, "json_logs": True},
            }
        )
    )
    env = {
        "LITELLM_LOG": "ERROR",
        "LITELLM_MODE": "PRODUCTION",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "DISABLE_SCHEMA_UPDATE": "true",
    }
    argv = [
        str(peer.bin("litellm")),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    return Server("litellm", argv, port, "/health/liveliness", workdir / "litellm.log", env=env)


def router_server(peer: PeerInstall, workdir: Path, worker_url: str, tag: str) -> Server:
    """vllm-router (Rust) in regular mode in front of one worker; cheapest policy, no per-request logs."""
    port = free_port()
    argv = [
        str(peer.bin("vllm-router")),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--worker-urls",
        worker_url,
        "--policy",
        "round_robin",
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(free_port()),
        "--log-level",
        "warning",
    ]
    return Server(f"vllm-router-{tag}", argv, port, "/health", workdir / f"vllm-router-{tag}.log")


def stop_all(servers: Sequence[Server], timeout: float = 10.0) -> None:
    """Stop several servers at once: SIGTERM to every group first, then wait for all together (a
    gateway drains for its grace period: one after the other would add those up), SIGKILL after
    ``timeout``."""
    running = [s for s in servers if s.proc is not None and s.proc.poll() is None]
    for server in running:
        assert server.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for server in running:
        assert server.proc is not None
        try:
            server.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(timeout=10)
