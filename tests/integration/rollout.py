"""The rollout scenario, shared by the real-vLLM test (``test_rollout.py``) and its fast simulator
twin (``tests/unit/test_reconcile_run.py``): an `offload run` whose file moves from ``v1`` alone to
``v1 90 / v2 10``, then ``v2`` alone, then back to ``v1``, under a steady streaming load.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from engines.hostinfo import group_members
from tests.integration.conftest import CHAT
from tests.integration.servers import OffloadRun, wait_until

MODEL = "smollm2"
CLIENTS = 3  # concurrent streaming clients
PAUSE = 0.1  # seconds each client waits between requests


# Each version on a core of its own when there are two: a loading engine does not compete with the
# one serving the load (vLLM's CPU threads spin; two on one core slow each other many times over).
CORES = {"v1": "0", "v2": "1"} if (os.cpu_count() or 1) >= 2 else {}


def versions(ports: dict[str, int], weights: dict[str, int], model: str = CHAT) -> list[dict[str, object]]:
    """The model's entry: the given versions of SmolLM2, each a local engine on its own port."""
    local = {"model": model, "dtype": "float32", "max_model_len": 512}
    return [
        {
            "name": MODEL,
            "task": "chat",
            "versions": {
                v: {"weight": w, "engines": [{"local": {**local, "port": ports[v], **cores(v)}}]}
                for v, w in weights.items()
            },
        }
    ]


def cores(version: str) -> dict[str, str]:
    return {"cpus": CORES[version]} if version in CORES else {}


@dataclass
class Load:
    """Streaming clients in threads until stopped; every outcome counted."""

    base_url: str
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    completed: int = 0  # streams that ended with a finish_reason and [DONE]
    failures: list[str] = field(default_factory=list)
    served: Counter[str] = field(default_factory=Counter)  # by x-offload-version

    def client(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=120) as http:
            while not self.stop.wait(PAUSE):
                self.one(http)

    def one(self, http: httpx.Client) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Count from one to twenty."}],
            "max_tokens": 16,
            "stream": True,
        }
        with self.lock:
            self.requests += 1
        try:
            with http.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    raise AssertionError(f"status {r.status_code}: {r.read()[:200]!r}")
                finish, done = None, False
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: "):
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            raise AssertionError(f"error event: {chunk['error']}")
                        for choice in chunk.get("choices", []):
                            finish = choice.get("finish_reason") or finish
                if not (done and finish):
                    raise AssertionError(f"stream ended early (finish={finish}, done={done})")
                with self.lock:
                    self.completed += 1
                    self.served[r.headers.get("x-offload-version", "?")] += 1
        except (httpx.HTTPError, AssertionError, ValueError) as exc:
            with self.lock:
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def served_by(self, version: str) -> int:
        with self.lock:
            return self.served[version]


@dataclass
class Watch:
    """Polls ``/admin/engines``: each engine's state changes in order (keyed by name and pid)."""

    base_url: str
    stop: threading.Event = field(default_factory=threading.Event)
    seen: dict[str, list[str]] = field(default_factory=dict)

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as http:
            while not self.stop.wait(0.05):
                try:
                    rows = http.get("/admin/engines").json()["data"]
                except (httpx.HTTPError, ValueError):
                    continue
                now: dict[str, str] = {}
                for row in rows:  # an engine back on its old port: the live row, not the retired one
                    key = f"{row['name']} port {row['port']}"
                    if key not in now or now[key] == "retired":
                        now[key] = row["state"]
                for key, state in now.items():
                    states = self.seen.setdefault(key, [])
                    if not states or states[-1] != state:
                        states.append(state)


def listed(run: OffloadRun) -> dict[str, list[tuple[str, str]]]:
    """`offload engines list`, parsed: name -> [(state, pid)] (one row per engine, old ones too)."""
    rows: dict[str, list[tuple[str, str]]] = {}
    lines = run.cli("list").splitlines()
    header = lines[0].split()
    for line in lines[1:]:
        cells = dict(zip(header, line.split(), strict=False))
        rows.setdefault(cells["name"], []).append((cells["state"], cells["pid"]))
    return rows


def roll_out_under_load(
    run: OffloadRun, ports: dict[str, int], config: Path, start_timeout: float, model: str = CHAT
) -> dict[str, object]:
    """v1 -> v1 90 / v2 10 -> v2 -> v1 under a steady streaming load; checks every step and returns
    the figures (requests, streams completed, failures, seconds per step, states seen)."""
    timings: dict[str, float] = {}
    steps: dict[str, str] = {}  # `offload engines list` after each step

    def reload(weights: dict[str, int]) -> float:
        config.write_text(yaml.safe_dump({"models": versions(ports, weights, model)}))
        run.proc.send_signal(signal.SIGHUP)
        return time.monotonic()

    started = time.monotonic()
    run.wait_ready(timeout=start_timeout)
    timings["start v1"] = time.monotonic() - started
    v1_pid = run.pid_of(f"{MODEL}:v1")
    steps["v1"] = run.cli("list")

    load = Load(run.base_url)
    watch = Watch(run.base_url)
    threads = [threading.Thread(target=load.client, daemon=True) for _ in range(CLIENTS)]
    threads.append(threading.Thread(target=watch.run, daemon=True))
    for t in threads:
        t.start()
    try:
        wait_until(lambda: load.completed >= CLIENTS, 120, what="the load to be flowing")

        # v1 90 / v2 10: v2 starts, is probed, then takes a share
        t0 = reload({"v1": 90, "v2": 10})
        wait_until(lambda: f"{MODEL}:v2" in listed(run), 30, what="v2 to be listed")
        assert listed(run)[f"{MODEL}:v2"][0][0] in ("starting", "ready")
        wait_until(lambda: load.served_by("v2") > 0, start_timeout, interval=0.2, what="v2 to serve")
        timings["add v2"] = time.monotonic() - t0
        v2_pid = run.pid_of(f"{MODEL}:v2")
        steps["v1 90 / v2 10"] = run.cli("list")
        assert listed(run)[f"{MODEL}:v2"] == [("ready", str(v2_pid))]

        # v2 alone: v1 leaves the routes at once, drains, stops
        t0 = reload({"v2": 1})
        wait_until(lambda: not group_members(v1_pid), 120, what="v1's processes to exit")
        timings["remove v1"] = time.monotonic() - t0
        served_v1 = load.served_by("v1")
        steps["v2"] = run.cli("list")
        assert listed(run)[f"{MODEL}:v1"] == [("retired", "-")]

        # back to v1: a new v1 starts while v2 serves; v2 drains once v1 is up
        t0 = reload({"v1": 1})
        wait_until(lambda: load.served_by("v1") > served_v1, start_timeout, interval=0.2, what="v1 back")
        new_v1_pid = run.pid_of(f"{MODEL}:v1")
        wait_until(lambda: not group_members(v2_pid), 120, what="v2's processes to exit")
        timings["back to v1"] = time.monotonic() - t0
        steps["v1 again"] = run.cli("list")
    finally:
        load.stop.set()
        for t in threads[:CLIENTS]:
            t.join(timeout=120)
        watch.stop.set()
        threads[-1].join(timeout=10)

    for name, text in steps.items():
        print(f"\n`offload engines list` at {name}:\n{text}")
    assert load.failures == [], load.failures[:5]
    assert load.completed == load.requests > 0
    assert load.served["v1"] > 0 and load.served["v2"] > 0

    # what `offload engines list` showed at each step
    assert re.search(rf"^{MODEL}:v1\s+ready\s+{v1_pid}", steps["v1"], re.M), steps["v1"]
    assert re.search(rf"^{MODEL}:v2\s+ready\s+{v2_pid}", steps["v1 90 / v2 10"], re.M)
    assert re.search(rf"^{MODEL}:v1\s+retired\s", steps["v2"], re.M), steps["v2"]
    assert re.search(rf"^{MODEL}:v2\s+ready\s", steps["v2"], re.M), steps["v2"]
    assert re.search(rf"^{MODEL}:v1\s+ready\s+{new_v1_pid}", steps["v1 again"], re.M), steps["v1 again"]
    assert re.search(rf"^{MODEL}:v2\s+retired\s", steps["v1 again"], re.M), steps["v1 again"]
    # and each engine's steps as they happened: started, probed ready, drained, stopped
    v2_states = watch.seen[f"{MODEL}:v2 port {ports['v2']}"]
    assert v2_states[0] == "starting" and v2_states[-1] == "retired" and "ready" in v2_states, v2_states
    assert {"draining", "stopping"} & set(v2_states), v2_states

    # nothing left running that the file no longer names
    assert not group_members(v1_pid) and not group_members(v2_pid)
    assert group_members(new_v1_pid)
    log = run.out.read_text()
    assert f"engine {MODEL}:v2: stopped" in log and f"engine {MODEL}:v1: stopped" in log
    return {
        "requests": load.requests,
        "completed": load.completed,
        "failures": len(load.failures),
        "served": dict(load.served),
        "engines started": log.count(": starting"),
        "engines stopped": log.count(": stopped ("),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "states": watch.seen,
    }
