"""The capacity benchmark's roles and servers: which cores each role gets (``taskset``), the engine
simulators, and the targets the load goes to (direct, vllm-router, Offload under uvicorn or granian
with 1, 2 or ``auto`` workers)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from benchmarks import peers
from benchmarks.procstat import cpu_seconds, descendants

MIN_PINNED_CPUS = 6  # below this, pinning would starve a role: every role shares every core


@dataclass(frozen=True, slots=True)
class Layout:
    """The cores of each role; all None when the roles share every core (too few to pin)."""

    cpus: tuple[int, ...]
    gateway: tuple[int, ...] | None = None
    sims: tuple[int, ...] | None = None
    load: tuple[int, ...] | None = None

    @property
    def pinned(self) -> bool:
        return self.gateway is not None

    @property
    def gateway_cores(self) -> int:
        return len(self.gateway or self.cpus)

    def prefix(self, role: str) -> list[str]:
        """``taskset -c CORES`` for ``role`` (gateway, sims, load), or nothing when not pinned."""
        cores: tuple[int, ...] | None = getattr(self, role)
        if cores is None or shutil.which("taskset") is None:
            return []
        return ["taskset", "-c", ",".join(map(str, cores))]

    def describe(self) -> dict[str, object]:
        return {
            "cpus": list(self.cpus),
            "pinned": self.pinned,
            "gateway": list(self.gateway) if self.gateway else None,
            "sims": list(self.sims) if self.sims else None,
            "load": list(self.load) if self.load else None,
        }


def plan_layout(split: str | None, pin: bool) -> Layout:
    """Cores per role. ``split`` is ``G,S,L`` (gateway, simulators, load generator); by default
    3/8 of the cores to the gateway, 1/4 to the simulators, the rest to the load generator (the Python
    client costs about as much per token as the gateway). Fewer than 6 cores, or ``pin`` false: shared."""
    cpus = tuple(sorted(os.sched_getaffinity(0)))
    if not pin or (split is None and len(cpus) < MIN_PINNED_CPUS):
        return Layout(cpus)
    if split is not None:
        g, s, n = (int(x) for x in split.split(","))
    else:
        g, s = max(2, len(cpus) * 3 // 8), max(1, len(cpus) // 4)
        n = len(cpus) - g - s
    if min(g, s, n) < 1 or g + s + n > len(cpus):
        raise ValueError(f"core split {g},{s},{n} does not fit the {len(cpus)} cores this process may use")
    return Layout(cpus, cpus[:g], cpus[g : g + s], cpus[g + s : g + s + n])


def workers_available(root: Path = peers.ROOT) -> bool:
    """Whether the checkout at ``root`` has ``OFFLOAD_SERVER__WORKERS`` (an older one, e.g. an A/B
    baseline, runs 1 worker only)."""
    probe = "import gateway.settings as s; print('workers' in s.ServerSettings.model_fields)"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.strip() == "True"


@dataclass(slots=True)
class Target:
    """Where the load goes and which processes' CPU counts as the relay's."""

    name: str
    urls: list[str]
    servers: list[peers.Server] = field(default_factory=list)
    workers: str = "-"
    server_kind: str = "-"
    failed: str | None = None

    def cpu(self) -> float:
        return sum(cpu_seconds(s.pid) for s in self.servers)

    def processes(self) -> int:
        return sum(len(descendants(s.pid)) for s in self.servers)

    def alive(self) -> bool:
        return all(s.alive() for s in self.servers)


def sims(workdir: Path, layout: Layout, count: int, output_tokens: int, itl: float) -> list[peers.Server]:
    """``count`` simulators serving ``chat``: no time to the first token, ``itl`` between tokens."""
    servers = []
    for i in range(count):
        server = peers.sim_server(workdir, "chat", itl=itl, output_tokens=output_tokens, name=f"sim-{i}")
        server.argv = [*layout.prefix("sims"), *server.argv, "--log-level", "warning"]
        servers.append(server)
    return servers


def _offload_config(workdir: Path, engine_urls: list[str]) -> Path:
    config = workdir / "capacity-offload.yaml"
    engines = [{"url": url} for url in engine_urls]
    config.write_text(yaml.safe_dump({"models": [{"name": "chat", "task": "chat", "engines": engines}]}))
    return config


def offload(
    workdir: Path,
    layout: Layout,
    engine_urls: list[str],
    workers: str,
    server: str,
    root: Path = peers.ROOT,
    name: str | None = None,
) -> Target:
    """Offload from the checkout ``root`` in front of every simulator (one model, one replica each),
    production defaults but the access log, under ``server`` (``uvicorn`` as ``python -m gateway serve``
    runs it, or ``granian`` serving the same app factory with its own workers) with ``workers``
    processes (N or ``auto``). ``name``: the target's (default ``offload-N`` or ``granian-N``)."""
    port = peers.free_port()
    env = {
        "OFFLOAD_CONFIG": str(_offload_config(workdir, engine_urls)),
        "OFFLOAD_LOG__ACCESS": "false",
        "OFFLOAD_LOG__FORMAT": "json",
        "PYTHONPATH": str(root),
    }
    name = name or (f"offload-{workers}" if server == "uvicorn" else f"granian-{workers}")
    if server == "uvicorn":
        argv = [sys.executable, "-m", "gateway", "serve", "--port", str(port)]
        if workers != "1":
            env["OFFLOAD_SERVER__WORKERS"] = workers
    else:
        count = str(layout.gateway_cores) if workers == "auto" else workers
        granian = Path(sys.executable).with_name("granian")
        argv = [str(granian), "--interface", "asgi", "--factory", "gateway.main:app_from_env"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", count, "--loop", "uvloop"]
        argv += ["--no-access-log", "--log-level", "warning", "--backlog", "2048"]
    process = peers.Server(
        name, [*layout.prefix("gateway"), *argv], port, "/ready?all=true", workdir / f"{name}.log", env=env
    )
    return Target(name, [process.base_url], [process], workers, server)


def router(workdir: Path, layout: Layout, engine_urls: list[str]) -> Target:
    """vllm-router (round robin over every simulator), as :func:`benchmarks.peers.router_server` runs it."""
    install = peers.ensure_peer(peers.VLLM_ROUTER, say=lambda m: print(m, file=sys.stderr))
    server = peers.router_server(install, workdir, engine_urls[0], "capacity")
    at = server.argv.index("--worker-urls")
    server.argv[at + 1 : at + 2] = engine_urls
    server.argv = [*layout.prefix("gateway"), *server.argv]
    version = install.versions.get("vllm-router", "?")
    return Target("vllm-router", [server.base_url], [server], "threads", f"vllm-router {version}")


def direct(engine_urls: list[str]) -> Target:
    """The simulators themselves (the load generator spreads its streams over them): the ceiling."""
    return Target("direct", list(engine_urls), [], "-", "-")


def granian_version() -> str | None:
    """The installed granian's version, or None when it is not installed."""
    try:
        from importlib.metadata import version

        return version("granian")
    except Exception:
        return None


def offload_version() -> str:
    """Offload's version and commit, as the overhead benchmark records it."""
    from benchmarks.overhead_bench import _offload_version

    return _offload_version()
