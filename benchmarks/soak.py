"""Soak: many streams held for minutes, clients that leave at random points, then a long run of plain
requests; afterwards nothing may be left behind.

    python -m benchmarks.soak                      # 1,000 streams for 10 minutes, then 200,000 requests
    python -m benchmarks.soak --streams 200 --minutes 2 --requests 5000 --out .../soak-short.json

One gateway process (``offload serve``, production settings) in front of ``--sims`` engine simulator
processes, all on loopback. Two phases:

1. **streams**: ``--streams`` concurrent chat streams for ``--minutes``, inter-token ``--itl`` seconds
   (200 ms: a thousand streams are 5,000 events/s, which two cores carry with the client on the same
   machine). Each stream asks for a random number of tokens (``--stream-tokens``) and is replaced by a
   new one when it ends, so streams arrive and finish all the time. ``--disconnect`` of them are left
   by their client on purpose, at a random point: before the response head, just after it, or after
   a random number of events. Streams started near the end are shortened to end with the phase.
2. **requests**: ``--requests`` non-streaming requests (four chat completions to one embeddings
   request; the simulator answers them at once), closed loop at ``--concurrency``; beside them a few
   slow non-streaming requests abandoned by their client at a random moment.

Meanwhile the gateway's resident set (``VmRSS``) and open file descriptors are read from ``/proc``
every ``--sample-interval`` seconds. Afterwards the run waits (at most ``--settle`` s) for the
gateway's ``offload_requests_in_flight`` and every simulator's running and waiting requests to
return to 0, and for the gateway's descriptors to return to the baseline (:func:`fds_back`: no
client connection, nothing half closed, no other descriptor above the count before the load; idle
keep-alive connections to the engines as the pool keeps them, :data:`_IDLE_POOL_PER_ENGINE`).

Passed when: no error the run did not inject (every stream not left on purpose ends with ``[DONE]``
after a usage chunk counting all its tokens, every request answers 200), the slope of a
least-squares line through the RSS samples after ``--warmup`` is under ``--max-slope`` MB per
minute, the descriptors are back, nothing is in flight in the gateway or running in an engine, and
the stream phase held at least 95% of ``--streams`` at once. Writes
``benchmarks/results/reliability/soak.json``; exits 1 when the run did not pass.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from benchmarks import peers
from benchmarks.load import Dist, LoadConfig, run_load
from benchmarks.peers import ROOT, Server, free_port, wait_all

RESULTS = ROOT / "benchmarks" / "results" / "reliability"
CHAT = "chat"
EMBED = "embed"
SERVED = "soak"
_JSON = {"Content-Type": "application/json"}
_FAST = {"sim": {"ttft": 0, "itl": 0}}  # the simulator answers plain requests at once
_MIN_TOKENS = 5  # a stream shorter than this is not started (the end of the stream phase is near)
_IDLE_POOL_PER_ENGINE = 32
"""Idle keep-alive connections to one engine the gateway may still hold after the run. Its client
pool (aiohttp) hands out the oldest idle connection first, and the health probes and metric scrapes
go through it too: each idle connection is reused before the engine's keep-alive timeout (uvicorn's
5 s) closes it, so some of the connections a burst opened stay open for good (measured: 8 to 12 per
engine, after 200 streams as after 1,000). Bounded by the probing rate, not by the load: not a leak.
(A connection the engine closed and the gateway did not is counted apart, as ``close_wait``.)"""
_CLOSE_WAIT = "08"
_LISTEN = "0A"


@dataclass(slots=True)
class Sample:
    """One reading of the gateway process."""

    t: float
    """Seconds since the load began."""
    phase: str
    rss_mb: float
    fds: int
    streams: int
    """Streams the client held open at that moment."""


@dataclass(slots=True)
class Tally:
    """What the client saw, by outcome."""

    errors: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    streams_started: int = 0
    streams_completed: int = 0
    stream_events: int = 0
    streams_open: int = 0
    requests_ok: int = 0
    requests_sent: int = 0


# Processes -------------------------------------------------------------------------------------


def _sim(workdir: Path, index: int, args: argparse.Namespace) -> Server:
    extra = ("--embedding-dims", "64")
    high = args.stream_tokens.high
    return peers.sim_server(
        workdir, SERVED, itl=args.itl, output_tokens=high, name=f"sim-{index}", extra=extra
    )


def _gateway(workdir: Path, sims: list[Server]) -> Server:
    """``offload serve`` with the production defaults; one chat and one embeddings model, each with
    every simulator as a replica."""
    engines = [{"url": s.base_url, "served_name": SERVED} for s in sims]
    config = workdir / "offload.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {"name": CHAT, "task": "chat", "engines": engines},
                    {"name": EMBED, "task": "embeddings", "engines": engines},
                ]
            }
        )
    )
    port = free_port()
    env = {
        "OFFLOAD_CONFIG": str(config),
        "OFFLOAD_LOG__FORMAT": "json",
        "OFFLOAD_SERVER__DRAIN_GRACE": "0",  # no load balancer to wait for at the end
        "PYTHONPATH": str(ROOT),
    }
    argv = [sys.executable, "-m", "gateway", "serve", "--port", str(port)]
    return Server("offload", argv, port, "/ready?all=true", workdir / "offload.log", env=env)


# /proc and /metrics ----------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """The process's resident set (``VmRSS``) in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    """Open file descriptors of the process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_census(pid: int, port: int, engine_ports: set[int]) -> dict[str, int]:
    """The process's descriptors by kind: ``client`` (accepted connections on ``port``),
    ``upstream`` (connections to an engine), ``close_wait`` (TCP connections the peer closed and the
    process never did: a leak), ``other`` (everything else: files, pipes, the listener)."""
    sockets: dict[int, tuple[int, int, str]] = {}  # inode: local port, remote port, TCP state
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            sockets[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state)
    census = {"total": 0, "client": 0, "upstream": 0, "close_wait": 0, "other": 0}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed while we looked
        census["total"] += 1
        kind = "other"
        if target.startswith("socket:["):
            local, remote, state = sockets.get(int(target[8:-1]), (0, 0, ""))
            if state == _CLOSE_WAIT:
                census["close_wait"] += 1
            if local == port and state != _LISTEN:
                kind = "client"
            elif remote in engine_ports:
                kind = "upstream"
        census[kind] += 1
    return census


def metric_sum(base_url: str, name: str) -> float:
    """A gauge from a Prometheus ``/metrics``, summed over its label sets (0 when absent: a gauge
    with no labels seen yet)."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    pattern = rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$"
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.MULTILINE))


class Sampler(threading.Thread):
    """Reads the gateway's RSS and descriptors every ``interval`` seconds, apart from the client's
    event loop (a busy loop would delay its readings)."""

    def __init__(self, pid: int, interval: float, tally: Tally) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.tally = pid, interval, tally
        self.samples: list[Sample] = []
        self.phase = "streams"
        self.t0 = time.monotonic()
        self._halt = threading.Event()

    def read(self) -> Sample:
        return Sample(
            round(time.monotonic() - self.t0, 2),
            self.phase,
            round(rss_mb(self.pid), 2),
            fd_count(self.pid),
            self.tally.streams_open,
        )

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.samples.append(self.read())
            except OSError:  # the gateway is gone: the run fails on its own
                return

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def slope_mb_per_min(samples: Sequence[Sample]) -> float:
    """The least-squares slope of RSS over time, MB per minute."""
    if len(samples) < 3:
        raise ValueError("fewer than 3 samples after the warm-up: make the run longer")
    fit = statistics.linear_regression([s.t for s in samples], [s.rss_mb for s in samples])
    return fit.slope * 60


# Phase 1: streams -----------------------------------------------------------------------------


def _stream_body(index: int, tokens: int) -> bytes:
    return orjson.dumps(
        {
            "model": CHAT,
            "messages": [{"role": "user", "content": f"soak stream {index}: tell me a long story"}],
            "max_tokens": tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )


async def _one_stream(
    session: aiohttp.ClientSession,
    url: str,
    index: int,
    tokens: int,
    leave: tuple[str, int] | None,
    within: float,
    tally: Tally,
) -> None:
    """One stream of ``tokens`` tokens, failed as a timeout past ``within`` seconds. ``leave``: where
    the client leaves on purpose, None to read it to the end: ``("before_head", ms)`` after sending,
    ``("after_head", 0)``, or ``("mid_stream", events)``."""
    body = _stream_body(index, tokens)
    where, cut = leave or ("", 0)
    tally.streams_started += 1
    tally.streams_open += 1
    try:
        if where == "before_head":
            try:
                async with asyncio.timeout(cut / 1000):
                    async with session.post(url, data=body, headers=_JSON) as response:
                        response.close()  # the head came first: leave right after it
                if response.status != 200:
                    tally.errors[f"stream_http_{response.status}"] += 1
                    return
            except TimeoutError:
                pass
            tally.injected[where] += 1
            return
        async with asyncio.timeout(within):
            async with session.post(url, data=body, headers=_JSON) as response:
                if response.status != 200:
                    tally.errors[f"stream_http_{response.status}"] += 1
                    return
                if where == "after_head":
                    response.close()
                    tally.injected[where] += 1
                    return
                outcome = await _read_events(response, tokens, cut if where else None, tally)
        if outcome == "left":
            tally.injected["mid_stream"] += 1
        elif outcome == "ok":
            tally.streams_completed += 1
        else:
            tally.errors[f"stream_{outcome}"] += 1
    except TimeoutError:
        tally.errors["stream_timeout"] += 1
    except aiohttp.ClientConnectorError:
        tally.errors["stream_connect"] += 1
    except aiohttp.ClientError:
        tally.errors["stream_broken"] += 1
    finally:
        tally.streams_open -= 1


async def _read_events(response: aiohttp.ClientResponse, tokens: int, cut: int | None, tally: Tally) -> str:
    """``ok`` (``[DONE]`` after a usage chunk counting every token), ``left`` (cut on purpose), or
    the kind of failure. Only the usage chunk is parsed (the client must not be the bottleneck)."""
    buffer = b""
    events = 0
    done = False
    completion_tokens = None
    async for data in response.content.iter_any():
        buffer += data
        *complete, buffer = buffer.split(b"\n\n")
        for event in complete:
            if not event.startswith(b"data: "):
                continue  # a keep-alive comment
            if event.startswith(b"data: [DONE]"):
                done = True
            elif event.startswith(b'data: {"error"'):
                return "in_band"
            else:
                events += 1
                tally.stream_events += 1
                if b'"completion_tokens"' in event:
                    usage = orjson.loads(event[6:]).get("usage") or {}
                    completion_tokens = usage.get("completion_tokens")
        if cut is not None and events >= cut and not done:
            response.close()  # the client leaves mid-answer
            return "left"
    if not done:
        return "incomplete"
    return "ok" if completion_tokens == tokens else "wrong_usage"


async def stream_phase(base_url: str, args: argparse.Namespace, tally: Tally) -> None:
    url = base_url + "/v1/chat/completions"
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.minutes * 60
    counter = iter(range(10**9))
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None)
    ) as session:

        async def slot(position: int) -> None:
            await asyncio.sleep(args.ramp * position / args.streams)  # arrivals spread over the ramp
            while True:
                left_s = deadline - time.monotonic()
                tokens = min(args.stream_tokens.sample(rng), int(left_s / args.itl))
                if tokens < _MIN_TOKENS:
                    return
                leave = None
                if rng.random() < args.disconnect:
                    where = rng.choice(("before_head", "after_head", "mid_stream", "mid_stream"))
                    leave = (where, rng.randint(1, 20) if where == "before_head" else rng.randint(1, tokens))
                within = tokens * args.itl * 5 + 60  # generous: the machine is shared
                await _one_stream(session, url, next(counter), tokens, leave, within, tally)

        await asyncio.gather(*(slot(i) for i in range(args.streams)))


# Phase 2: plain requests ------------------------------------------------------------------------


async def _abandoned(base_url: str, stop: asyncio.Event, rng: random.Random, tally: Tally) -> None:
    """Slow non-streaming requests (about 2 s) left by their client at a random moment."""
    body = orjson.dumps(
        {
            "model": CHAT,
            "messages": [{"role": "user", "content": "an answer nobody waits for"}],
            "max_tokens": 40,
            "sim": {"itl": 0.05, "ttft": 0},
        }
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        while not stop.is_set():
            try:
                async with asyncio.timeout(rng.uniform(0.01, 1.9)):
                    async with session.post(base_url + "/v1/chat/completions", data=body, headers=_JSON) as r:
                        await r.read()
                if r.status != 200:
                    tally.errors[f"request_http_{r.status}"] += 1
                else:
                    tally.requests_ok += 1  # it answered before the client gave up
            except TimeoutError:
                tally.injected["abandoned_request"] += 1
            except aiohttp.ClientError:
                tally.errors["request_broken"] += 1


async def request_phase(base_url: str, args: argparse.Namespace, tally: Tally) -> None:
    if args.requests <= 0:
        return
    embed = args.requests // 5
    chat = LoadConfig(
        base_url=base_url,
        model=CHAT,
        stream=False,
        concurrency=max(1, args.concurrency * 3 // 4),
        requests=args.requests - embed,
        prompt_tokens=Dist(32, 32),
        output_tokens=Dist(16, 16),
        extra_body=_FAST,
        timeout=60.0,
        seed=args.seed,
    )
    loads = [run_load(chat)]
    if embed:
        embeddings = LoadConfig(
            base_url=base_url,
            model=EMBED,
            kind="embeddings",
            concurrency=max(1, args.concurrency // 4),
            requests=embed,
            prompt_tokens=Dist(32, 32),
            timeout=60.0,
            seed=args.seed,
        )
        loads.append(run_load(embeddings))
    stop = asyncio.Event()
    rng = random.Random(args.seed + 1)
    abandoners = [asyncio.create_task(_abandoned(base_url, stop, rng, tally)) for _ in range(args.abandoners)]
    try:
        results = await asyncio.gather(*loads)
    finally:
        stop.set()
        await asyncio.gather(*abandoners)
    for result in results:
        tally.requests_sent += len(result.records)
        for record in result.records:
            if record.error is None:
                tally.requests_ok += 1
            else:
                tally.errors[f"request_{record.error}"] += 1


# Afterwards -------------------------------------------------------------------------------------


def fds_back(after: dict[str, int], baseline: dict[str, int], engines: int) -> bool:
    """No client connection left, no connection half closed, nothing else above the baseline, and
    no more idle engine connections than the pool keeps (see :data:`_IDLE_POOL_PER_ENGINE`)."""
    return (
        after["client"] == 0
        and after["close_wait"] == 0
        and after["other"] <= baseline["other"]
        and after["upstream"] <= max(baseline["upstream"], _IDLE_POOL_PER_ENGINE * engines)
    )


def settle(gateway: Server, sims: list[Server], baseline: dict[str, int], within: float) -> dict[str, Any]:
    """Wait (at most ``within`` s) until nothing is in flight and the descriptors are back; the last
    readings."""
    deadline = time.monotonic() + within
    engine_ports = {s.port for s in sims}
    while True:
        state: dict[str, Any] = {
            "in_flight": round(metric_sum(gateway.base_url, "offload_requests_in_flight")),
            "engine_running": round(sum(metric_sum(s.base_url, "vllm:num_requests_running") for s in sims)),
            "engine_waiting": round(sum(metric_sum(s.base_url, "vllm:num_requests_waiting") for s in sims)),
            "fds": fd_census(gateway.pid, gateway.port, engine_ports),
        }
        clean = not (state["in_flight"] or state["engine_running"] or state["engine_waiting"])
        if (clean and fds_back(state["fds"], baseline, len(sims))) or time.monotonic() > deadline:
            state["settle_s"] = round(within - max(0.0, deadline - time.monotonic()), 1)
            return state
        time.sleep(0.5)


def baseline_fds(gateway: Server, sims: list[Server], seconds: float = 3.0) -> dict[str, int]:
    """The gateway's descriptors at rest: the reading with the most seen over a few seconds (health
    probes come and go)."""
    readings = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        readings.append(fd_census(gateway.pid, gateway.port, {s.port for s in sims}))
        time.sleep(0.25)
    return max(readings, key=lambda census: census["total"])


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    sims = [_sim(workdir, i, args) for i in range(args.sims)]
    servers: list[Server] = []
    sampler: Sampler | None = None
    try:
        servers.extend(sim.start() for sim in sims)
        wait_all(sims)
        gateway = _gateway(workdir, sims)
        servers.append(gateway.start())
        wait_all([gateway])
        pid = gateway.pid
        base_fds = baseline_fds(gateway, sims)
        rss_start = rss_mb(pid)
        tally = Tally()
        sampler = Sampler(pid, args.sample_interval, tally)
        sampler.start()
        say(
            f"gateway pid {pid}: {rss_start:.1f} MB, {base_fds['total']} fds; "
            f"{args.streams} streams for {args.minutes} min"
        )
        reporter = threading.Thread(target=_report, args=(sampler, tally), daemon=True)
        reporter.start()
        asyncio.run(stream_phase(gateway.base_url, args, tally))
        streams_s = time.monotonic() - sampler.t0
        sampler.phase = "requests"
        say(f"streams done in {streams_s:.0f} s; {args.requests} requests")
        asyncio.run(request_phase(gateway.base_url, args, tally))
        load_s = time.monotonic() - sampler.t0
        sampler.phase = "settle"
        state = settle(gateway, sims, base_fds, args.settle)
        sampler.stop()
        end = sampler.read()
        gateway_alive = gateway.alive()
    finally:
        if sampler is not None:
            sampler.stop()
        for server in reversed(servers):
            server.stop()
    return _result(
        args, tally, sampler.samples, end, rss_start, base_fds, state, streams_s, load_s, gateway_alive
    )


def _report(sampler: Sampler, tally: Tally) -> None:
    while sampler.is_alive():
        time.sleep(30)
        last = sampler.samples[-1] if sampler.samples else None
        if last is not None and sampler.is_alive():
            say(
                f"[{last.t:6.0f}s] {sampler.phase}: {last.streams} streams open, "
                f"{tally.streams_completed} completed, {tally.requests_ok} requests, "
                f"{sum(tally.errors.values())} errors; gateway {last.rss_mb:.1f} MB, {last.fds} fds"
            )


def _result(
    args: argparse.Namespace,
    tally: Tally,
    samples: list[Sample],
    end: Sample,
    rss_start: float,
    base_fds: dict[str, int],
    state: dict[str, Any],
    streams_s: float,
    load_s: float,
    gateway_alive: bool,
) -> dict[str, Any]:
    warmup = min(args.warmup, streams_s / 2)
    steady = [s for s in samples if s.t >= warmup and s.phase != "settle"]
    slope = slope_mb_per_min(steady)
    by_phase = {}
    for phase in ("streams", "requests"):
        part = [s for s in steady if s.phase == phase]
        by_phase[phase] = round(slope_mb_per_min(part), 3) if len(part) >= 3 else None
    held = [s.streams for s in samples if s.phase == "streams" and args.ramp <= s.t <= streams_s - 60]
    peak_streams = max((s.streams for s in samples), default=0)
    checks = {
        "no_errors": not tally.errors,
        "rss_flat": slope < args.max_slope,
        "fds_back": fds_back(state["fds"], base_fds, args.sims),
        "in_flight_zero": state["in_flight"] == 0,
        "engines_idle": state["engine_running"] == 0 and state["engine_waiting"] == 0,
        "streams_held": peak_streams >= 0.95 * args.streams,
        "gateway_alive": gateway_alive,
    }
    return {
        "streams": args.streams,
        "minutes": args.minutes,
        "requests": tally.requests_sent,
        "errors": dict(sorted(tally.errors.items())),
        "injected_disconnects": sum(tally.injected.values()),
        "injected_by_kind": dict(sorted(tally.injected.items())),
        "rss_mb": {
            "start": round(rss_start, 2),
            "after_warmup": steady[0].rss_mb if steady else None,
            "end": end.rss_mb,
            "peak": max(s.rss_mb for s in samples),
        },
        "rss_slope_mb_per_min": round(slope, 3),
        "rss_slope_by_phase": by_phase,
        "fds": {
            "baseline": base_fds["total"],
            "peak": max(s.fds for s in samples),
            "after": state["fds"]["total"],
            "baseline_by_kind": base_fds,
            "after_by_kind": state["fds"],
        },
        "in_flight_after": state["in_flight"],
        "engine_running_after": state["engine_running"],
        "engine_waiting_after": state["engine_waiting"],
        "settle_s": state["settle_s"],
        "streams_completed": tally.streams_completed,
        "streams_started": tally.streams_started,
        "stream_events": tally.stream_events,
        "streams_open": {"peak": peak_streams, "median_held": statistics.median(held) if held else None},
        "requests_ok": tally.requests_ok,
        "seconds": {"streams": round(streams_s, 1), "requests": round(load_s - streams_s, 1)},
        "settings": {
            "itl": args.itl,
            "stream_tokens": f"{args.stream_tokens.low}-{args.stream_tokens.high}",
            "disconnect": args.disconnect,
            "sims": args.sims,
            "concurrency": args.concurrency,
            "warmup_s": warmup,
            "sample_interval_s": args.sample_interval,
            "max_slope_mb_per_min": args.max_slope,
        },
        "checks": checks,
        "passed": all(checks.values()),
        "samples": [[s.t, s.phase, s.rss_mb, s.fds, s.streams] for s in samples],
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def say(text: str) -> None:
    print(f"soak: {text}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=1000, help="concurrent streams (default 1000)")
    p.add_argument("--minutes", type=float, default=10.0, help="length of the stream phase (default 10)")
    p.add_argument("--requests", type=int, default=200_000, help="non-streaming requests (default 200,000)")
    p.add_argument("--itl", type=float, default=0.2, help="inter-token seconds of the streams (default 0.2)")
    p.add_argument("--stream-tokens", type=Dist.parse, default=Dist(25, 250), help="tokens per stream")
    p.add_argument("--disconnect", type=float, default=0.2, help="share of streams left on purpose")
    p.add_argument("--sims", type=int, default=2, help="simulator processes (replicas)")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight in phase 2")
    p.add_argument("--abandoners", type=int, default=4, help="clients leaving slow requests in phase 2")
    p.add_argument("--ramp", type=float, default=10.0, help="seconds over which the streams first arrive")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds of RSS left out of the slope")
    p.add_argument("--sample-interval", type=float, default=2.0, help="seconds between /proc readings")
    p.add_argument("--settle", type=float, default=120.0, help="most seconds to wait for things to return")
    p.add_argument("--max-slope", type=float, default=1.0, help="RSS MB per minute allowed after warm-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    p.add_argument(
        "--workdir", type=Path, default=None, help="keep the servers' logs here (default: a temp dir)"
    )
    args = p.parse_args(argv)
    if not 1 <= args.streams <= 5000:
        p.error("--streams must be 1..5000")
    if not 0 < args.minutes <= 60:
        p.error("--minutes must be in (0, 60]")
    if not 0 <= args.requests <= 1_000_000:
        p.error("--requests must be 0..1,000,000")
    if not 0 <= args.disconnect <= 1 or args.itl <= 0 or args.sims < 1 or args.concurrency < 4:
        p.error("need 0 <= --disconnect <= 1, --itl > 0, --sims >= 1, --concurrency >= 4")
    return args


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through run(), which stops the servers it started


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(args, args.workdir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="offload-soak-") as tmp:
            result = run(args, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    summary = {k: result[k] for k in ("errors", "injected_disconnects", "rss_mb", "rss_slope_mb_per_min")}
    say(f"{'PASSED' if result['passed'] else 'FAILED'} {result['checks']}")
    say(f"{summary} fds {result['fds']}; wrote {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
