"""Relay capacity at saturation: tokens/s relayed and gateway CPU per relayed token, for Offload with
1, 2 and ``auto`` workers (uvicorn, and granian serving the same app), vllm-router, and the simulators
direct, in one run.

    python -m benchmarks.capacity --quick     # under 2 minutes: 64 streams, 2 rounds of 2 s
    python -m benchmarks.capacity             # about 5 minutes: 64 and 256 streams, 3 rounds of 3 s
    python -m benchmarks.capacity --targets direct,vllm-router,offload-1 --levels 64,512 --pin-split 6,4,6

Simulators emit as fast as they can (inter-token 0 ms by default; several of them, so they are not the
limit), streams of 256 one-token events; load comes from several generator processes
(:mod:`benchmarks.capacity_load`) counting the tokens they receive. On machines with 6 cores or more
the roles are pinned to separate cores (``taskset``); below that they share every core and the report
says it is core-bound. Runs are interleaved (round r starts at target r mod n) and every ratio is taken
within a round, then the median. Writes ``benchmarks/results/capacity.{json,md}`` (``--out`` for
another name, e.g. a bigger machine's) and the README's capacity section on a standard run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from benchmarks import capacity_report as report
from benchmarks import capacity_targets as roles
from benchmarks import peers, readme
from benchmarks.capacity_load import split_streams
from benchmarks.procstat import cpu_model, cpu_seconds

RESULTS = Path(__file__).parent / "results"
READY_TIMEOUT = 60.0  # seconds for a load generator to import and say "ready" (a loaded machine is slow)
ALL_TARGETS = "direct,vllm-router,offload-1,offload-2,offload-auto,granian-1,granian-auto"
BASELINE = "baseline-1"  # --baseline-root: another checkout's gateway, 1 worker (A/B in one run)


@dataclass(frozen=True, slots=True)
class Plan:
    levels: tuple[int, ...]
    rounds: int
    seconds: float


QUICK = Plan(levels=(64,), rounds=2, seconds=2.0)
STANDARD = Plan(levels=(64, 256), rounds=3, seconds=3.0)


def say(message: str) -> None:
    """A progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.capacity", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="64 streams, 2 rounds of 2 s (about a minute)")
    p.add_argument("--targets", default=ALL_TARGETS, help=f"comma-separated, from {ALL_TARGETS}, granian-2")
    p.add_argument("--levels", default=None, help="streams in flight, comma-separated (default 64,256)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--seconds", type=float, default=None, help="issuing window of one run")
    p.add_argument("--output-tokens", type=int, default=256, help="tokens per stream")
    p.add_argument("--itl", type=float, default=0.0, help="simulator inter-token seconds (0-0.001)")
    p.add_argument(
        "--sims", type=int, default=None, help="simulator processes (default: the sims' cores, >= 2)"
    )
    p.add_argument(
        "--load-procs", type=int, default=None, help="load generator processes (default: its cores)"
    )
    p.add_argument("--no-pin", dest="pin", action="store_false", help="never pin roles to cores")
    p.add_argument("--pin-split", default=None, help="cores for gateway,simulators,load (e.g. 6,4,6)")
    p.add_argument(
        "--offload-root",
        type=Path,
        default=peers.ROOT,
        help="the checkout whose gateway runs (default: this one)",
    )
    p.add_argument(
        "--baseline-root",
        type=Path,
        default=None,
        help="another checkout (an A/B baseline): adds target baseline-1, its gateway with 1 worker",
    )
    p.add_argument("--out", default=None, help="results name under benchmarks/results (default: capacity)")
    p.add_argument(
        "--out-dir", type=Path, default=RESULTS, help="where results go (default benchmarks/results)"
    )
    args = p.parse_args(argv)
    plan = QUICK if args.quick else STANDARD
    levels = tuple(int(x) for x in args.levels.split(",")) if args.levels else plan.levels
    args.plan = Plan(levels, args.rounds or plan.rounds, args.seconds or plan.seconds)
    if not all(1 <= lv <= 4096 for lv in levels) or not 1 <= args.plan.rounds <= 20:
        p.error("levels must be 1..4096 and rounds 1..20")
    if not 0.5 <= args.plan.seconds <= 120 or not 0 <= args.itl <= 0.01:
        p.error("seconds must be 0.5..120 and itl 0..0.01")
    args.names = [n.strip() for n in args.targets.split(",") if n.strip()]
    known = set(ALL_TARGETS.split(",")) | {"granian-2"}
    if unknown := set(args.names) - known:
        p.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.baseline_root is not None:
        args.names.append(BASELINE)
    return args


class Bench:
    """The servers of one capacity run and its measured runs."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.layout = roles.plan_layout(args.pin_split, args.pin)
        sim_cores = len(self.layout.sims or self.layout.cpus)
        self.sim_count = args.sims or max(2, sim_cores)
        self.load_procs = args.load_procs or len(self.layout.load or self.layout.cpus)
        self.sims = roles.sims(workdir, self.layout, self.sim_count, args.output_tokens, args.itl)
        self.targets: list[roles.Target] = []
        self.runs: list[dict[str, Any]] = []

    def _make(self, name: str, urls: list[str]) -> roles.Target:
        if name == "direct":
            return roles.direct(urls)
        if name == "vllm-router":
            return roles.router(self.workdir, self.layout, urls)
        if name == BASELINE:
            return roles.offload(
                self.workdir, self.layout, urls, "1", "uvicorn", self.args.baseline_root, BASELINE
            )
        server, _, workers = name.partition("-")
        kind = "uvicorn" if server == "offload" else "granian"
        target = roles.offload(self.workdir, self.layout, urls, workers, kind, self.args.offload_root)
        if kind == "uvicorn" and workers != "1" and not roles.workers_available(self.args.offload_root):
            target.failed = "OFFLOAD_SERVER__WORKERS not implemented in this checkout yet"
        if kind == "granian" and roles.granian_version() is None:
            target.failed = "granian not installed (pip install granian)"
        return target

    def start(self) -> None:
        for sim in self.sims:
            sim.start()
        peers.wait_all(self.sims)
        urls = [s.base_url for s in self.sims]
        for name in self.args.names:
            try:
                self.targets.append(self._make(name, urls))
            except Exception as exc:  # a peer that cannot be installed: the others still run
                self.targets.append(roles.Target(name, [], failed=f"{type(exc).__name__}: {exc}"))
        for target in self.targets:
            if not target.failed:
                for server in target.servers:
                    server.start()
        for target in self.targets:
            if target.failed or not target.servers:
                continue
            try:
                peers.wait_all(target.servers)
            except RuntimeError as exc:
                lines = [line for line in str(exc).splitlines() if line.strip()]
                target.failed = lines[-1][:200] if lines else "did not start"
                say(f"{target.name} failed to start: {exc}")

    def stop(self) -> None:
        peers.stop_all([server for target in self.targets for server in target.servers])
        peers.stop_all(self.sims)

    @property
    def live(self) -> list[roles.Target]:
        return [t for t in self.targets if not t.failed]

    def _generators(self, target: roles.Target, level: int, seconds: float) -> list[subprocess.Popen[str]]:
        procs = []
        shares = [s for s in split_streams(level, min(self.load_procs, level)) if s > 0]
        log = (self.workdir / "load.log").open("a")
        for i, share in enumerate(shares):
            argv = [*self.layout.prefix("load"), sys.executable, "-m", "benchmarks.capacity_load"]
            for url in target.urls:
                argv += ["--url", url]
            argv += ["--concurrency", str(share), "--seconds", str(seconds)]
            argv += ["--output-tokens", str(self.args.output_tokens), "--seed", str(1000 * i)]
            procs.append(
                subprocess.Popen(
                    argv,
                    cwd=peers.ROOT,
                    env={**os.environ, "PYTHONPATH": str(peers.ROOT)},
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
            )
        log.close()
        return procs

    def run_once(self, target: roles.Target, level: int, seconds: float) -> dict[str, Any]:
        """One measured run: every generator ready, counters read, go, results, counters read again."""
        procs = self._generators(target, level, seconds)
        try:
            for proc in procs:
                if _line(proc, READY_TIMEOUT) != "ready":
                    raise RuntimeError(f"a load generator failed to start; see {self.workdir / 'load.log'}")
            gateway0, sims0 = target.cpu(), self._sims_cpu()
            started = time.monotonic()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            outs = [orjson.loads(proc.communicate(timeout=seconds + 120)[0]) for proc in procs]
            wall = time.monotonic() - started
            gateway_cpu, sims_cpu = target.cpu() - gateway0, self._sims_cpu() - sims0
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
        tokens = sum(o["tokens"] for o in outs)
        elapsed = max(o["elapsed_s"] for o in outs)
        load_cpu = sum(o["cpu_s"] for o in outs)
        errors: dict[str, int] = {}
        samples: dict[str, str] = {}
        for o in outs:
            for kind, n in o["errors"].items():
                errors[kind] = errors.get(kind, 0) + n
            samples.update(o.get("error_samples", {}))
        ttfts = [o["ttft_p50_s"] for o in outs if o["ttft_p50_s"] is not None]
        gaps = [o["itl_p50_s"] for o in outs if o["itl_p50_s"] is not None]
        return {
            "tokens": tokens,
            "requests": sum(o["requests"] for o in outs),
            "errors": errors,
            "error_samples": samples,
            "elapsed_s": elapsed,
            "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,
            "gateway_cpu_s": gateway_cpu,
            "cpu_us_per_token": gateway_cpu / tokens * 1e6 if tokens and target.servers else None,
            "gateway_cores_busy": gateway_cpu / wall if target.servers else None,
            "sims_cores_busy": sims_cpu / wall,
            "load_cores_busy": load_cpu / wall,
            "machine_cores_busy": (gateway_cpu + sims_cpu + load_cpu) / wall,
            "ttft_p50_ms": sorted(ttfts)[len(ttfts) // 2] * 1000 if ttfts else None,
            "itl_p50_ms": sorted(gaps)[len(gaps) // 2] * 1000 if gaps else None,
            "processes": target.processes() if target.servers else 0,
            "loadavg": os.getloadavg()[0],
        }

    def _sims_cpu(self) -> float:
        return sum(cpu_seconds(s.pid) for s in self.sims)

    def measure(self) -> None:
        plan = self.args.plan
        live = self.live
        for target in live:  # warm-up: connections, first-request paths, every worker reached
            self.run_once(target, min(16, plan.levels[0]), 1.0)
        for level in plan.levels:
            for rnd in range(plan.rounds):
                order = live[rnd % len(live) :] + live[: rnd % len(live)]
                for target in order:
                    if not target.alive():
                        target.failed = "exited during the run"
                        continue
                    if target.failed:
                        continue
                    run = self.run_once(target, level, plan.seconds)
                    run.update(target=target.name, level=level, round=rnd)
                    self.runs.append(run)
                    say(
                        f"{level} streams, round {rnd + 1}: {target.name} {run['tokens_per_s']:,.0f} tokens/s"
                        + (
                            f", {run['cpu_us_per_token']:.1f} µs CPU/token"
                            if run["cpu_us_per_token"] is not None
                            else ""
                        )
                        + (f", errors {run['errors']}" if run["errors"] else "")
                    )


def _line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The process's next stdout line, or "" when it sent none within ``timeout`` seconds or exited."""
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if readable else ""


def _machine() -> dict[str, Any]:
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _versions(bench: Bench) -> str:
    root = bench.args.offload_root
    parts = [f"offload {roles.offload_version()}" if root == peers.ROOT else f"offload from {root}"]
    if (base := bench.args.baseline_root) is not None:
        commit = subprocess.run(
            ["git", "-C", str(base), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        parts.append(f"{BASELINE}: offload at {commit or base}")
    if granian := roles.granian_version():
        parts.append(f"granian {granian}")
    parts += [t.server_kind for t in bench.targets if t.name == "vllm-router" and not t.failed]
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        parts.append(f"uvicorn {version('uvicorn')}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, started_at = time.monotonic(), time.strftime("%Y-%m-%d %H:%M")
    machine = _machine()
    signal.signal(signal.SIGTERM, _interrupt)  # so that `finally` stops every server we started
    with tempfile.TemporaryDirectory(prefix="offload-capacity-") as tmp:
        bench = Bench(args, Path(tmp))
        say(
            f"layout: {bench.layout.describe()}; {bench.sim_count} simulators, {bench.load_procs} load processes"
        )
        try:
            bench.start()
            if not bench.live:
                say("every target failed to start")
                return 1
            bench.measure()
        finally:
            bench.stop()
    machine["loadavg_end"] = os.getloadavg()
    names = [t.name for t in bench.targets]
    meta = {
        "mode": "quick" if args.quick else "standard",
        "started_at": started_at,
        "wall_s": round(time.monotonic() - started, 1),
        "machine": machine,
        "layout": bench.layout.describe(),
        "sims": bench.sim_count,
        "load_processes": bench.load_procs,
        "levels": list(args.plan.levels),
        "rounds": args.plan.rounds,
        "seconds": args.plan.seconds,
        "output_tokens": args.output_tokens,
        "itl_s": args.itl,
        "versions": _versions(bench),
        "targets": {
            t.name: {"server": t.server_kind, "workers": t.workers, "failed": t.failed} for t in bench.targets
        },
    }
    summary = report.summarize(bench.runs, names, list(args.plan.levels))
    checks = report.verdicts(summary, list(args.plan.levels), meta["layout"])
    name = args.out or ("capacity-quick" if args.quick else "capacity")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta, "summary": summary, "targets_met": checks, "runs": bench.runs}
    (args.out_dir / f"{name}.json").write_bytes(
        orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    text = report.markdown(summary, meta, checks)
    (args.out_dir / f"{name}.md").write_text(text)
    standard = args.out is None and args.levels is None and args.rounds is None and args.seconds is None
    if standard and args.out_dir == RESULTS:
        readme.update_section(name, text)
    say(f"wrote {args.out_dir}/{name}.json and .md in {meta['wall_s']:.0f} s")
    print(text.split("Targets:")[1].strip() if "Targets:" in text else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
