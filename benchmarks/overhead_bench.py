"""The overhead benchmark's machinery: the targets (the simulators as the floor, Offload, the peers),
their servers, and the interleaved runs whose numbers :mod:`benchmarks.overhead_report` summarises.
:mod:`benchmarks.overhead` is the command that drives it."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from benchmarks import peers
from benchmarks.load import Dist, LoadConfig, run_load
from benchmarks.overhead_report import KEYED
from benchmarks.procstat import cpu_seconds, peak_rss_mb

TOKENS = 32  # per answer; streams: 32 one-token chunks 10 ms apart
STREAM_ITL = 0.01
# The keyed target's limits: on (the limiter runs for every request) and far above what a run sends.
KEY_LIMITS = {"rpm": 10_000_000, "tpm": 1_000_000_000, "max_concurrent": 100_000}


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    label: str
    stream: bool
    concurrency: int

    @property
    def model(self) -> str:
        return "stream" if self.stream else "fast"


SCENARIOS = (
    Scenario("ns1", "non-streaming, 1 client", False, 1),
    Scenario("ns10", "non-streaming, 10 clients", False, 10),
    Scenario("ns64", "non-streaming, 64 clients", False, 64),
    Scenario("s10", "streaming, 10 streams", True, 10),
    Scenario("s64", "streaming, 64 streams", True, 64),
)


@dataclass(frozen=True, slots=True)
class Plan:
    rounds: int
    seconds: float
    """Issuing window of one measured run (in-flight requests then finish)."""
    ramp_levels: tuple[int, ...]
    ramp_seconds: float
    ramp_passes: int
    ramp_patience: int
    """A target leaves the ramp after this many levels in a row that add < 5% req/s over its best."""


QUICK = Plan(
    rounds=2, seconds=2.5, ramp_levels=(4, 16, 64, 128, 256), ramp_seconds=2.0, ramp_passes=1, ramp_patience=1
)
FULL = Plan(
    rounds=5,
    seconds=8.0,
    ramp_levels=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    ramp_seconds=4.0,
    ramp_passes=3,
    ramp_patience=2,
)


@dataclass(slots=True)
class Target:
    """Something the load is sent to: the floor (simulators), Offload, or a peer."""

    name: str
    urls: dict[str, str]
    """Model name -> base URL to send it to."""
    measured: list[peers.Server]
    """The processes whose CPU and memory are reported for this target."""
    version: str
    headers: dict[str, str] = field(default_factory=dict)
    ready_s: float = 0.0
    failed: str | None = None

    def cpu(self) -> float:
        return sum(cpu_seconds(s.pid) for s in self.measured)

    def alive(self) -> bool:
        return all(s.alive() for s in self.measured)


def say(message: str) -> None:
    """A progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _offload_version() -> str:
    try:
        from importlib.metadata import version

        base = version("offload")
    except Exception:
        base = "checkout"
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=peers.ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "gateway"],
            cwd=peers.ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        return f"{base} ({rev}{'+dirty' if dirty else ''})"
    except (OSError, subprocess.SubprocessError):
        return base


def _keyed_offload(workdir: Path, engines: dict[str, str]) -> tuple[Target, list[peers.Server]]:
    """The ``offload`` target with one API key in its configuration file and the key's rpm, tpm and
    concurrency limits on (never reached); the load sends ``Authorization: Bearer KEY``."""
    from gateway.keys import hash_key

    home = workdir / KEYED  # its own folder: peers.offload_server names its file offload.yaml
    home.mkdir(exist_ok=True)
    server = peers.offload_server(home, engines, name=KEYED)
    key = "sk-bench-" + secrets.token_hex(24)  # lives for one run
    config = Path(server.env["OFFLOAD_CONFIG"])
    data = yaml.safe_load(config.read_text())
    data["auth"] = {"keys": [{"name": "bench", "hash": hash_key(key), **KEY_LIMITS}]}
    config.write_text(yaml.safe_dump(data))
    urls = dict.fromkeys(engines, server.base_url)
    headers = {"Authorization": f"Bearer {key}"}
    return Target(KEYED, urls, [server], f"{_offload_version()} + key and limits", headers), [server]


def _keyed_problem(target: Target) -> str | None:
    """Why the keyed target would not measure keys and limits (None: it does): a request without the
    key must be refused, one with it answered with the key's x-ratelimit headers."""
    url = target.urls["fast"].rstrip("/") + "/v1/chat/completions"
    body = orjson.dumps({"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    statuses = []
    for headers in ({}, target.headers):
        request = urllib.request.Request(url, body, {"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                statuses.append((response.status, response.headers.get("x-ratelimit-limit-requests")))
        except urllib.error.HTTPError as exc:
            statuses.append((exc.code, None))
        except OSError as exc:
            return f"keys check failed: {exc}"
    (without, _), (status, limit) = statuses
    if without != 401:
        return f"keys are not on: a request without the key got {without}"
    if status != 200 or limit != str(KEY_LIMITS["rpm"]):
        return f"the key's limits are not on: status {status}, x-ratelimit-limit-requests {limit}"
    return None


class Bench:
    """Starts the servers, runs the interleaved scenarios and the ramp, keeps every run's numbers."""

    def __init__(
        self, plan: Plan, workdir: Path, names: list[str], reinstall: bool, baseline: Path | None = None
    ) -> None:
        self.plan = plan
        self.baseline = baseline
        self.workdir = workdir
        self.names = names
        self.reinstall = reinstall
        self.servers: list[peers.Server] = []
        self.sims: list[peers.Server] = []
        self.targets: list[Target] = []
        self.installs: dict[str, dict[str, Any]] = {}
        self.runs: list[dict[str, Any]] = []
        self.ramp_runs: list[dict[str, Any]] = []

    # -- servers ----------------------------------------------------------------------------------
    def _launch(self, server: peers.Server) -> peers.Server:
        self.servers.append(server.start())
        return server

    def start(self) -> None:
        fast = self._launch(peers.sim_server(self.workdir, "fast", itl=0.0, output_tokens=TOKENS))
        stream = self._launch(peers.sim_server(self.workdir, "stream", itl=STREAM_ITL, output_tokens=TOKENS))
        for sim in (fast, stream):
            sim.wait_ready()
        self.sims = [fast, stream]
        engines = {"fast": fast.base_url, "stream": stream.base_url}
        made: list[tuple[Target, list[peers.Server]]] = []
        for name in self.names:  # installs (if any) first, so that start-up times are comparable
            try:
                made.append(self._make_target(name, engines))
            except Exception as exc:
                say(f"{name}: skipped ({exc})")
                self.targets.append(Target(name, {}, [], "-", failed=str(exc)))
        for _, servers in made:
            for server in servers:
                self._launch(server)
        waiting = [(target, server) for target, servers in made for server in servers]
        took: dict[str, float] = {}
        while waiting:  # all at once, so that each start-up time is its own
            for target, server in list(waiting):
                try:
                    if server.poll_ready():
                        took[server.name] = time.monotonic() - server.started_in
                        waiting.remove((target, server))
                except RuntimeError as exc:
                    target.failed = str(exc)
                    waiting.remove((target, server))
                    say(f"{target.name}: failed to start: {exc}")
            time.sleep(0.1)
        for target, servers in made:
            target.ready_s = max((took.get(s.name, 0.0) for s in servers), default=0.0)
            self.targets.append(target)
        for target, _ in made:
            if target.failed is None and target.name == KEYED:
                target.failed = _keyed_problem(target)
                if target.failed:
                    say(f"{target.name}: {target.failed}")
            if target.failed is None:
                say(f"{target.name} ready in {target.ready_s:.1f} s ({target.version})")

    def _make_target(self, name: str, engines: dict[str, str]) -> tuple[Target, list[peers.Server]]:
        if name == "sim":
            return Target("sim", dict(engines), self.sims, "engines.sim (floor)"), []
        if name in ("offload", "offload-log"):
            server = peers.offload_server(self.workdir, engines, access_log=name == "offload-log")
            urls = dict.fromkeys(engines, server.base_url)
            return Target(name, urls, [server], _offload_version()), [server]
        if name == KEYED:
            return _keyed_offload(self.workdir, engines)
        if name == "offload-base" and self.baseline is not None:
            server = peers.offload_server(self.workdir, engines, root=self.baseline, name=name)
            return Target(
                name, dict.fromkeys(engines, server.base_url), [server], f"checkout {self.baseline}"
            ), [server]
        if name == "litellm":
            peer = peers.ensure_peer(peers.LITELLM, reinstall=self.reinstall, say=say)
            self._record_install(peer)
            key = "sk-" + secrets.token_hex(
                24
            )  # LiteLLM refuses weak master keys; this one lives for one run
            server = peers.litellm_server(peer, self.workdir, engines, key)
            return (
                Target(
                    "litellm",
                    dict.fromkeys(engines, server.base_url),
                    [server],
                    f"litellm {peer.versions['litellm']}",
                    {"Authorization": f"Bearer {key}"},
                ),
                [server],
            )
        if name == "vllm-router":
            peer = peers.ensure_peer(peers.VLLM_ROUTER, reinstall=self.reinstall, say=say)
            self._record_install(peer)
            # Regular mode does not route by model name: one router per simulator.
            routers = {
                model: peers.router_server(peer, self.workdir, url, model) for model, url in engines.items()
            }
            urls = {model: r.base_url for model, r in routers.items()}
            return (
                Target(
                    "vllm-router", urls, list(routers.values()), f"vllm-router {peer.versions['vllm-router']}"
                ),
                list(routers.values()),
            )
        raise ValueError(f"unknown target {name!r}")

    def _record_install(self, peer: peers.PeerInstall) -> None:
        self.installs[peer.spec.name] = {
            "venv": str(peer.venv),
            "requirements": list(peer.spec.requirements),
            "versions": peer.versions,
            "install_seconds_this_run": peer.install_seconds,
        }

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()

    @property
    def live(self) -> list[Target]:
        return [t for t in self.targets if t.failed is None]

    # -- runs -------------------------------------------------------------------------------------
    async def measure(self, target: Target, stream: bool, concurrency: int, seconds: float) -> dict[str, Any]:
        """One bounded run against ``target``; its latencies and the CPU its processes used."""
        model = "stream" if stream else "fast"
        config = LoadConfig(
            base_url=target.urls[model],
            model=model,
            stream=stream,
            concurrency=concurrency,
            requests=200_000,
            duration=seconds,
            prompt_tokens=Dist(128, 128),
            output_tokens=Dist(TOKENS, TOKENS),
            ignore_eos=False,
            headers=target.headers,
            timeout=60.0,
        )
        load = os.getloadavg()[0]
        sim0, cpu0 = sum(cpu_seconds(s.pid) for s in self.sims), target.cpu()
        result = await run_load(config)
        await asyncio.sleep(0.25)  # work the servers finish after the last answer counts too
        cpu1, sim1 = target.cpu(), sum(cpu_seconds(s.pid) for s in self.sims)
        summary = result.summary()
        ok = summary["succeeded"]
        run = {
            "target": target.name,
            "stream": stream,
            "concurrency": concurrency,
            "loadavg": load,
            "requests": summary["requests"],
            "ok": ok,
            "errors": summary["errors"],
            "elapsed_s": summary["elapsed_s"],
            "rps": summary["requests_per_s"],
            "cpu_s": cpu1 - cpu0,
            "cpu_ms_per_req": (cpu1 - cpu0) * 1000 / ok if ok else None,
            "sim_cpu_ms_per_req": (sim1 - sim0) * 1000 / ok if ok else None,
        }
        for metric in ("latency", "ttft", "itl"):
            dist = summary[f"{metric}_s"]
            if dist["count"]:
                for q in ("p50", "p90", "p99"):
                    run[f"{metric}_{q}_ms"] = dist[q] * 1000
        if not target.alive():
            target.failed = "process exited during the benchmark"
        return run

    async def warm_up(self) -> None:
        for target in self.live:
            await self.measure(target, False, 8, 1.0)
            await self.measure(target, True, 8, 0.5)

    def _order(self, shift: int) -> list[Target]:
        live = self.live
        return live[shift % len(live) :] + live[: shift % len(live)] if live else []

    async def scenarios(self) -> None:
        for scenario in SCENARIOS:
            for rnd in range(self.plan.rounds):
                for target in self._order(rnd):
                    run = await self.measure(target, scenario.stream, scenario.concurrency, self.plan.seconds)
                    run.update(scenario=scenario.key, round=rnd)
                    self.runs.append(run)
                    say(
                        f"{scenario.key} r{rnd} {target.name:<12} {run['rps']:7.1f} req/s  "
                        f"p50 {run.get('latency_p50_ms', float('nan')):7.2f} ms  "
                        f"cpu {run['cpu_ms_per_req'] or float('nan'):6.2f} ms/req  "
                        f"errors {sum(run['errors'].values())}"
                    )

    async def ramp(self) -> None:
        for rpass in range(self.plan.ramp_passes):
            best: dict[str, float] = {}
            stale: dict[str, int] = {}
            for level, concurrency in enumerate(self.plan.ramp_levels):
                for target in self._order(rpass + level):
                    if stale.get(target.name, 0) >= self.plan.ramp_patience:
                        continue
                    run = await self.measure(target, False, concurrency, self.plan.ramp_seconds)
                    run.update(scenario="ramp", round=rpass)
                    self.ramp_runs.append(run)
                    grew = run["rps"] > best.get(target.name, 0.0) * 1.05
                    stale[target.name] = 0 if grew else stale.get(target.name, 0) + 1
                    best[target.name] = max(best.get(target.name, 0.0), run["rps"])
                    say(f"ramp p{rpass} c={concurrency:<4} {target.name:<12} {run['rps']:7.1f} req/s")

    def peak_rss(self) -> dict[str, float]:
        """Largest single-process peak RSS per target (vllm-router runs one process per simulator)."""
        return {
            t.name: max((peak_rss_mb(s.pid) for s in t.measured if s.alive()), default=0.0)
            for t in self.targets
            if t.measured
        }
