"""Where Offload's CPU goes: py-spy samples of the gateway under the overhead benchmark's load.

    pip install py-spy            # into the project's venv (a benchmark tool, not a dependency)
    python -m benchmarks.gateway_profile [--seconds 20] [--rate 250] [--native]

Starts the engine simulators and Offload as :mod:`benchmarks.overhead` does, then samples the gateway
with ``py-spy record --format raw`` (collapsed stacks; flame-graph tools and speedscope read them)
during a 1-client non-streaming run and a 64-stream run. Writes ``benchmarks/results/profile-<scenario>.txt``
and a summary, ``benchmarks/results/profile-offload.md``: busy samples by component (the package of the
innermost frame) and the top functions by self and by inclusive time. Idle time (the event loop
waiting in epoll) is not sampled, so percentages are of the time the gateway was busy.

Caution: py-spy stops the process to sample it, and a thread inside a socket call is caught there
more often than its CPU share. Here py-spy put 35-50% of the samples on ``transport.write`` lines and
the uvloop loop, while ``perf`` (which sees the kernel) put only 9-11% of the gateway's CPU in the
kernel and 4-6% in uvloop: 73-75% is the CPython interpreter running framework and gateway code.
So the report also gives each owner's share of the Python work, socket calls left out.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks import peers
from benchmarks.load import Dist, LoadConfig, run_load
from benchmarks.procstat import cpu_seconds

RESULTS = Path(__file__).parent / "results"
SCENARIOS = (
    ("ns1", "non-streaming, 1 client", False, 1),
    ("s10", "streaming, 10 streams", True, 10),
    ("s64", "streaming, 64 streams", True, 64),
)
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_COMPONENTS = {  # first path segment of the innermost frame's file -> component
    "gateway": "gateway (Offload's own code)",
    "litestar": "litestar (routing, DI, request/response)",
    "uvicorn": "uvicorn (HTTP server protocol)",
    "httptools": "httptools (HTTP parser)",
    "aiohttp": "aiohttp (upstream client)",
    "yarl": "yarl/multidict (URLs, headers)",
    "multidict": "yarl/multidict (URLs, headers)",
    "pydantic": "pydantic (validation)",
    "pydantic_core": "pydantic (validation)",
    "structlog": "structlog (logging)",
    "prometheus_client": "prometheus_client (metrics)",
    "anyio": "anyio (litestar's task groups)",
    "uvloop": "uvloop (event loop, sockets)",
    "orjson": "orjson",
}


# Innermost frames of a thread that waits (blocking-mode py-spy counts them as active):
# Litestar's logging QueueListener thread, epoll/futex waits.
_IDLE = (
    "Condition.wait",
    "Event.wait",
    "Queue.get",
    "epoll_wait",
    "epoll_pwait",
    "select (",
    "lock_PyThread_acquire_lock",
    "PyThread_acquire_lock_timed",
    "pthread_cond_wait",
)


def find_py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _parse(line: str) -> tuple[list[tuple[str, str]], int, int] | None:
    """Frames (function, file) of one collapsed stack, its count, and the innermost frame's line."""
    stack, _, count = line.rstrip("\n").rpartition(" ")
    if not stack or not count.isdigit():
        return None
    frames = []
    last_line = 0
    for raw in stack.split(";"):
        m = _FRAME.match(raw)
        frames.append((m["func"], m["file"]) if m else (raw, ""))
        last_line = int(m["line"]) if m and m["line"] else 0
    return frames, int(count), last_line


@functools.cache
def _source_line(file: str, number: int) -> str:
    for root in [Path(p) for p in sys.path if p] + [Path.cwd()]:
        path = root / file
        if path.is_file():
            lines = path.read_text(errors="replace").splitlines()
            return lines[number - 1] if 0 < number <= len(lines) else ""
    return ""


def _socket_io(func: str, file: str, line: int) -> str | None:
    """Samples that sit in a socket call (py-spy over-weights these: see the module doc)."""
    if func == "Runner.run":  # uvloop's C loop: epoll, recv, callback dispatch without a Python frame
        return "socket reads and loop dispatch (uvloop, C)"
    text = _source_line(file, line)
    if "transport.write" in text or ".writelines(" in text:
        return "socket writes (transport.write)"
    return None


def _short(file: str) -> str:
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def component(file: str, func: str) -> str | None:
    """The package a frame belongs to; None for the standard library (asyncio included)."""
    short = _short(file)
    head = short.split("/")[0]
    for package, label in _COMPONENTS.items():
        if head == package or head.startswith(package + ".") or f"/{package}/" in file:
            return label
    if ".so" in short:
        return "native: " + short.split("/")[-1].split(".")[0]
    return None


_ENTRY = (
    "<frozen runpy>",
    "gateway/__main__.py",
    "gateway/main.py",
    "uvicorn/main.py",
    "uvicorn/server.py",
    "uvicorn/_compat.py",
    "asyncio/runners.py",
)


def summarize(collapsed: Path, top: int = 25) -> dict[str, object]:
    """Busy samples by owner (the package of the innermost non-stdlib frame: asyncio or uuid work is
    charged to the code that called it), the gateway's own functions, and the top functions by self
    and inclusive time. Percentages of busy samples."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    owners: Counter[str] = Counter()
    gateway: Counter[str] = Counter()
    total = io_samples = 0
    for line in collapsed.read_text().splitlines():
        parsed = _parse(line)
        if parsed is None:
            continue
        frames, count, line_no = parsed
        if any(
            f"{func} (".startswith(idle) or func.startswith(idle) for func, _ in frames[-3:] for idle in _IDLE
        ):
            continue
        total += count
        names = [f"{func} ({_short(file)})" for func, file in frames]
        self_time[names[-1]] += count
        for name in set(names):
            if not name.endswith(tuple(f"({e})" for e in _ENTRY)) and not any(
                f"({e}" in name for e in _ENTRY
            ):
                inclusive[name] += count
        owner = "standard library (no package frame above it)"
        io = _socket_io(frames[-1][0], frames[-1][1], line_no)
        if io is not None:
            owner = io
            io_samples += count
        else:
            for func, file in reversed(frames):
                label = component(file, func)
                if label is not None:
                    owner = label
                    if file.startswith("gateway/"):
                        gateway[f"{func} ({_short(file)})"] += count
                    break
        owners[owner] += count
    pct = 100.0 / total if total else 0.0
    return {
        "samples": total,
        "io_percent": io_samples * pct,
        "components": [(k, v * pct) for k, v in owners.most_common()],
        "gateway": [(k, v * pct) for k, v in gateway.most_common(top)],
        "self": [(k, v * pct) for k, v in self_time.most_common(top)],
        "inclusive": [(k, v * pct) for k, v in inclusive.most_common(top * 2)],
    }


async def _load(url: str, stream: bool, concurrency: int, seconds: float) -> dict[str, object]:
    model = "stream" if stream else "fast"
    result = await run_load(
        LoadConfig(
            base_url=url,
            model=model,
            stream=stream,
            concurrency=concurrency,
            requests=500_000,
            duration=seconds,
            output_tokens=Dist(32, 32),
            ignore_eos=False,
            timeout=60,
        )
    )
    return result.summary()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gateway_profile", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--seconds", type=float, default=20.0, help="sampling window per scenario (max 300)")
    p.add_argument("--rate", type=int, default=250, help="samples per second")
    p.add_argument("--native", action="store_true", help="include C frames (uvloop, orjson, pydantic-core)")
    p.add_argument("--access-log", action="store_true", help="profile with the per-request log line on")
    p.add_argument(
        "--scenarios", default="ns1,s64", help=f"comma-separated, from {', '.join(s[0] for s in SCENARIOS)}"
    )
    args = p.parse_args(argv)
    chosen = [s for s in SCENARIOS if s[0] in args.scenarios.split(",")]
    if not chosen:
        p.error("--scenarios: none of " + ", ".join(s[0] for s in SCENARIOS))
    if not 1 <= args.seconds <= 300:
        p.error("--seconds must be 1..300")
    spy = find_py_spy()
    if spy is None:
        p.error("py-spy is not installed: pip install py-spy")
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = [
        "# Where Offload's CPU goes (py-spy)",
        "",
        (
            f"{time.strftime('%Y-%m-%d %H:%M')}; {args.rate} samples/s for {args.seconds:.0f} s per scenario"
            f"{', native frames' if args.native else ''}{', access log on' if args.access_log else ''}. "
            "Percentages are of busy samples (idle epoll waits are not sampled)."
        ),
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="offload-profile-") as tmp:
        work = Path(tmp)
        fast = peers.sim_server(work, "fast", itl=0.0, output_tokens=32).start()
        stream = peers.sim_server(work, "stream", itl=0.01, output_tokens=32).start()
        gateway = peers.offload_server(
            work, {"fast": fast.base_url, "stream": stream.base_url}, access_log=args.access_log
        )
        servers = [fast, stream, gateway]
        try:
            for s in (fast, stream):
                s.wait_ready()
            gateway.start().wait_ready()
            for _, _, is_stream, concurrency in chosen:  # warm up
                asyncio.run(_load(gateway.base_url, is_stream, concurrency, 1.0))
            for key, label, is_stream, concurrency in chosen:
                out = RESULTS / f"profile-{key}.txt"
                cmd = [
                    spy,
                    "record",
                    "--pid",
                    str(gateway.pid),
                    "--rate",
                    str(args.rate),
                    "--format",
                    "raw",
                    "--duration",
                    str(int(args.seconds)),
                    "--output",
                    str(out),
                ]
                # Blocking (the default) pauses the gateway per sample: slower, but --nonblocking reads torn stacks
                # while Python runs and so over-weights frames sitting in syscalls (seen: 3x on socket writes).
                if args.native:
                    cmd.append("--native")
                cpu0 = cpu_seconds(gateway.pid)
                sampler = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                load = asyncio.run(_load(gateway.base_url, is_stream, concurrency, args.seconds))
                _, err = sampler.communicate(timeout=args.seconds + 60)
                if sampler.returncode != 0:
                    raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
                cpu_ms = (cpu_seconds(gateway.pid) - cpu0) * 1000 / max(1, int(load["succeeded"]))  # type: ignore[call-overload]
                found = summarize(out)
                report += [
                    f"## {label}",
                    "",
                    (
                        f"{load['succeeded']} requests at {load['requests_per_s']:.0f}/s; gateway CPU "
                        f"{cpu_ms:.2f} ms per request (sampler attached); {found['samples']} busy samples, "
                        f"{found['io_percent']:.0f}% of them in socket calls; stacks in `{out.name}`."
                    ),
                    "",
                    (
                        "| owner (innermost package frame; stdlib calls charged to their caller) | % busy "
                        "| % of Python work (socket calls left out) |"
                    ),
                    "| --- | --- | --- |",
                ]
                python_work = max(1e-9, 100.0 - found["io_percent"])  # type: ignore[operator]
                report += [
                    f"| {k} | {v:.1f} | {'-' if k.startswith('socket') else f'{100 * v / python_work:.1f}'} |"
                    for k, v in found["components"]
                ]  # type: ignore[attr-defined]
                report += ["", "| gateway function (own code + stdlib it calls) | % busy |", "| --- | --- |"]
                report += [f"| `{k}` | {v:.1f} |" for k, v in found["gateway"]]  # type: ignore[attr-defined]
                report += ["", "| function (self time) | % |", "| --- | --- |"]
                report += [f"| `{k}` | {v:.1f} |" for k, v in found["self"]]  # type: ignore[attr-defined]
                report += ["", "| function (inclusive time) | % |", "| --- | --- |"]
                report += [f"| `{k}` | {v:.1f} |" for k, v in found["inclusive"]]  # type: ignore[attr-defined]
                report.append("")
                print(
                    f"{label}: {cpu_ms:.2f} ms CPU/request, {found['samples']} samples -> {out}",
                    file=sys.stderr,
                )
        finally:
            for server in reversed(servers):
                server.stop()
    name = "profile-offload-log.md" if args.access_log else "profile-offload.md"
    (RESULTS / name).write_text("\n".join(report))
    print(f"wrote {RESULTS / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
