"""uvicorn against granian serving the same Offload app, at low concurrency: added latency and TTFT.

    python -m benchmarks.capacity_servers            # about 2-3 minutes: 5 interleaved rounds of 3 s
    python -m benchmarks.capacity_servers --quick    # about a minute

The capacity benchmark (:mod:`benchmarks.capacity`, targets ``granian-*``) answers the question at
saturation; this one answers it where ``make bench-quick`` does: one client non-streaming, and 1 and
10 streams, each gateway minus the simulator alone (the floor) within the same round, then the median.
Offload runs as ``python -m gateway serve`` (uvicorn with its own request-head guard and drain) and as
``granian --interface asgi --factory gateway.main:app_from_env`` (one worker each, uvloop both).
Writes ``benchmarks/results/servers.{json,md}`` and the README's ``servers`` section
(``servers-quick.*`` with ``--quick``, for ``make bench-quick``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson

from benchmarks import capacity_targets as roles
from benchmarks import peers, readme
from benchmarks.load import Dist, LoadConfig, run_load
from benchmarks.overhead_bench import STREAM_ITL, Scenario
from benchmarks.procstat import cpu_seconds
from benchmarks.runner import new_loop_runner
from benchmarks.stats import percentile

RESULTS = Path(__file__).parent / "results"
TOKENS = 32


SCENARIOS = (
    Scenario("ns1", "non-streaming, 1 client: latency p50", False, 1),
    Scenario("s1", "streaming, 1 stream: TTFT p50", True, 1),
    Scenario("s10", "streaming, 10 streams: TTFT p50", True, 10),
)


def _granian(workdir: Path, config: Path, root: Path) -> peers.Server:
    port = peers.free_port()
    argv = [str(Path(sys.executable).with_name("granian")), "--interface", "asgi", "--factory"]
    argv += ["gateway.main:app_from_env", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    argv += ["--loop", "uvloop", "--no-access-log", "--log-level", "warning"]
    env = {
        "OFFLOAD_CONFIG": str(config),
        "OFFLOAD_LOG__ACCESS": "false",
        "OFFLOAD_LOG__FORMAT": "json",
        "PYTHONPATH": str(root),
    }
    return peers.Server("granian", argv, port, "/ready?all=true", workdir / "granian.log", env=env)


async def _run(url: str, scenario: Scenario, seconds: float) -> dict[str, Any]:
    result = await run_load(
        LoadConfig(
            base_url=url,
            model="stream" if scenario.stream else "fast",
            stream=scenario.stream,
            concurrency=scenario.concurrency,
            duration=seconds,
            output_tokens=Dist(TOKENS, TOKENS),
        )
    )
    ok = result.ok
    key = sorted((r.ttft if scenario.stream else r.latency) or 0.0 for r in ok)
    return {"ok": len(ok), "errors": sum(result.errors.values()), "p50_ms": percentile(key, 50) * 1000}


async def measure(
    servers: dict[str, peers.Server], engines: dict[str, str], rounds: int, seconds: float
) -> list[dict[str, Any]]:
    """Interleaved rounds (round r starts at target r mod n) of every scenario on the floor (the
    simulator serving the scenario's model) and on every gateway."""
    names = ["sim", *servers]

    def url(name: str, scenario: Scenario) -> str:
        if name == "sim":
            return engines["stream" if scenario.stream else "fast"]
        return servers[name].base_url

    for name in names:  # warm-up
        for scenario in SCENARIOS:
            await _run(url(name, scenario), scenario, 0.5)
    runs = []
    for rnd in range(rounds):
        for scenario in SCENARIOS:
            for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
                server = servers.get(name)
                cpu0 = cpu_seconds(server.pid) if server else 0.0
                run = await _run(url(name, scenario), scenario, seconds)
                cpu = cpu_seconds(server.pid) - cpu0 if server else None
                run.update(target=name, scenario=scenario.key, round=rnd)
                run["cpu_ms_per_request"] = cpu / run["ok"] * 1000 if cpu is not None and run["ok"] else None
                runs.append(run)
    return runs


def summarize(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per scenario and gateway: median added p50 (minus the floor in the same round), median CPU."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for scenario in SCENARIOS:
        out[scenario.key] = {}
        floor = {
            r["round"]: r["p50_ms"] for r in runs if r["target"] == "sim" and r["scenario"] == scenario.key
        }
        for name in names:
            mine = [r for r in runs if r["target"] == name and r["scenario"] == scenario.key]
            added = [r["p50_ms"] - floor[r["round"]] for r in mine if r["round"] in floor]
            cpu = [r["cpu_ms_per_request"] for r in mine if r["cpu_ms_per_request"] is not None]
            out[scenario.key][name] = {
                "p50_ms": statistics.median(r["p50_ms"] for r in mine) if mine else None,
                "added_ms": statistics.median(added) if added and name != "sim" else None,
                "cpu_ms_per_request": statistics.median(cpu) if cpu else None,
                "errors": sum(r["errors"] for r in mine),
            }
    return out


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    """The results file's text (also the README's ``servers`` section)."""
    lines = [
        f"uvicorn against granian, the same Offload app, one worker each (uvloop), measured {meta['started_at']}, "
        f"{meta['cpus']} CPUs shared with the load generator and simulators, load average "
        f"{meta['loadavg_start']:.1f}; {meta['rounds']} interleaved rounds of {meta['seconds']:g} s; added = "
        f"gateway minus the simulator alone in the same round, then the median. Versions: {meta['versions']}.",
        "",
        "| scenario | sim (floor) ms | uvicorn added ms | granian added ms | uvicorn CPU ms per request "
        "(stream) | granian CPU ms per request (stream) |",
        "|---|---|---|---|---|---|",
    ]

    def f(value: float | None, spec: str = ".2f") -> str:
        return "-" if value is None else format(value, spec)

    for scenario in SCENARIOS:
        row = summary[scenario.key]
        lines.append(
            f"| {scenario.label} | {f(row['sim']['p50_ms'])} | {f(row['uvicorn']['added_ms'], '+.2f')} | "
            f"{f(row['granian']['added_ms'], '+.2f')} | {f(row['uvicorn']['cpu_ms_per_request'], '.3f')} | "
            f"{f(row['granian']['cpu_ms_per_request'], '.3f')} |"
        )
    errors = sum(v["errors"] for row in summary.values() for v in row.values())
    lines += [
        "",
        f"Errors: {errors}. This machine is shared with other work: compare within this table only.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.capacity_servers", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="3 rounds of 1.5 s")
    p.add_argument("--out", default=None, help="results name (default: servers, servers-quick with --quick)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--offload-root", type=Path, default=peers.ROOT, help="the checkout whose gateway runs")
    args = p.parse_args(argv)
    rounds, seconds = (3, 1.5) if args.quick else (5, 3.0)
    if roles.granian_version() is None:
        print("granian is not installed: pip install granian", file=sys.stderr)
        return 1
    started = time.monotonic()
    meta: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": len(os.sched_getaffinity(0)),
        "loadavg_start": os.getloadavg()[0],
        "rounds": rounds,
        "seconds": seconds,
        "versions": f"offload {roles.offload_version() if args.offload_root == peers.ROOT else args.offload_root}, "
        f"granian {roles.granian_version()}, "
        f"uvicorn {version('uvicorn')}",
    }
    with tempfile.TemporaryDirectory(prefix="offload-servers-") as tmp:
        workdir = Path(tmp)
        sims = [
            peers.sim_server(workdir, "fast", itl=0.0, output_tokens=TOKENS),
            peers.sim_server(workdir, "stream", itl=STREAM_ITL, output_tokens=TOKENS),
        ]
        servers: dict[str, peers.Server] = {}
        try:
            for sim in sims:
                sim.start()
            peers.wait_all(sims)
            engines = {"fast": sims[0].base_url, "stream": sims[1].base_url}
            servers["uvicorn"] = peers.offload_server(
                workdir, engines, name="uvicorn", root=args.offload_root
            )
            servers["granian"] = _granian(workdir, workdir / "offload.yaml", args.offload_root)
            for server in servers.values():
                server.start()
            peers.wait_all(list(servers.values()))
            with new_loop_runner() as runner:
                runs = runner.run(measure(servers, engines, rounds, seconds))
        finally:
            peers.stop_all(list(servers.values()))
            peers.stop_all(sims)
    names = ["sim", "uvicorn", "granian"]
    summary = summarize(runs, names)
    meta["wall_s"] = round(time.monotonic() - started, 1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    name = args.out or ("servers-quick" if args.quick else "servers")
    (args.out_dir / f"{name}.json").write_bytes(
        orjson.dumps({"meta": meta, "summary": summary, "runs": runs}, option=orjson.OPT_INDENT_2)
    )
    text = markdown(summary, meta)
    (args.out_dir / f"{name}.md").write_text(text)
    if args.out_dir == RESULTS and name == "servers" and args.offload_root == peers.ROOT:
        readme.update_section("servers", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
