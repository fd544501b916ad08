"""Supervisor: starts engines, restarts crashed ones with back-off, starts and idles out on-demand
ones, stops whole process groups, and reaps what an earlier run left behind."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engines import supervisor as supervision
from engines.hostinfo import group_members
from engines.spec import EngineLaunch, EngineSpec
from engines.supervisor import EngineStartError, ManagedEngine, Supervisor
from tests.unit.engines.local import FAMILY, LINGERING, script, sim, wait_until

Make = Callable[..., Supervisor]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    """Build supervisors over the given specs; every engine is stopped after the test."""
    made: list[Supervisor] = []

    def build(*specs: EngineSpec) -> Supervisor:
        sup = Supervisor(list(specs), tmp_path / "models", tmp_path / "logs", out=io.StringIO())
        made.append(sup)
        return sup

    yield build
    for sup in made:
        sup.stop_all(grace=1)


def said(sup: Supervisor) -> str:
    out = sup._out
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def crash(m: ManagedEngine) -> int:
    """kill -9 the engine's process group, as the OOM killer would; returns its pid."""
    pid = m.process.pid
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: m.process.exit_code() is not None, what="the engine to die")
    return pid


def tick_until_ready(sup: Supervisor, m: ManagedEngine) -> None:
    def ready() -> bool:
        sup.tick(m)
        return m.state == "ready"

    wait_until(ready, 10, f"{m.name} to be ready")


def test_engines_are_named_by_spec_and_log_to_files_named_after_them(make: Make, tmp_path: Path) -> None:
    sup = make(sim("chat:v1#1"), sim("embed", task="embeddings"))

    assert list(sup.managed) == ["chat:v1#1", "embed"]
    assert [e.spec.name for e in sup.engines] == ["chat:v1#1", "embed"]
    assert sup.managed["chat:v1#1"].process.log_path == tmp_path / "logs" / "chat-v1-1.log"
    assert all(m.state == "stopped" and not m.wanted for m in sup.managed.values())


def test_two_engines_with_one_name_are_refused(make: Make) -> None:
    with pytest.raises(ValueError, match="'a'"):
        make(sim("a"), sim("a"))


def test_start_all_starts_every_engine_and_wait_all_reports_them_ready(make: Make) -> None:
    sup = make(sim("a"), sim("b"))

    sup.start_all()
    sup.wait_all(poll=0.05)

    for m in sup.managed.values():
        assert m.state == "ready" and m.ready_event.is_set() and m.process.is_healthy()
    assert "engine a: ready at http://127.0.0.1:" in said(sup)


def test_start_all_refuses_a_port_already_in_use(make: Make) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        sup = make(sim("a"), sim("b", port=taken.getsockname()[1]))

        with pytest.raises(EngineStartError, match="already in use"):
            sup.start_all()

    assert sup.managed["a"].process.pid is None  # checked before starting anything


def test_wait_all_raises_when_an_engine_dies_while_starting(make: Make) -> None:
    sup = make(script("raise SystemExit(4)", name="broken"))
    sup.start_all()

    with pytest.raises(EngineStartError, match="exited with status 4"):
        sup.wait_all(poll=0.05)


def test_a_crashed_engine_is_restarted_after_a_doubling_back_off(make: Make) -> None:
    sup = make(sim("a"))
    sup.start_all()
    sup.wait_all(poll=0.05)
    m = sup.managed["a"]
    first = crash(m)

    t0 = time.monotonic()
    sup.tick(m, now=t0)
    assert (m.state, m.restarts, m.last_exit) == ("backoff", 1, "killed by SIGKILL")
    assert m.next_start == t0 + 1.0 and not m.ready_event.is_set()
    sup.tick(m, now=t0 + 0.9)
    assert m.state == "backoff"  # not before its back-off is over
    sup.tick(m, now=t0 + 1.0)
    assert m.state == "starting" and m.process.pid not in (None, first)
    tick_until_ready(sup, m)

    crash(m)
    t1 = time.monotonic()
    sup.tick(m, now=t1)
    assert m.restarts == 2 and m.next_start == t1 + 2.0  # doubled: it crashed again soon
    assert "engine a: killed by SIGKILL; restarting in 2 s" in said(sup)


def test_the_back_off_resets_once_an_engine_stayed_up_and_is_capped(make: Make) -> None:
    sup = make(sim("a"))
    sup.start_all()
    sup.wait_all(poll=0.05)
    m = sup.managed["a"]
    m.backoff = 32.0  # after several quick crashes
    up_since = m.ready_since
    assert up_since is not None
    crash(m)

    later = up_since + supervision.STABLE_AFTER + 1  # it had been up for a while: a fresh crash
    sup.tick(m, now=later)
    assert m.next_start == later + supervision.BACKOFF_START and m.backoff == 2.0

    m.backoff = 48.0
    m.state = "ready"  # as if it had come back and crashed again at once
    now = time.monotonic()
    sup.tick(m, now=now)
    assert m.next_start == now + 48.0 and m.backoff == supervision.BACKOFF_MAX


def test_the_watcher_brings_a_killed_engine_back(make: Make) -> None:
    sup = make(sim("a"))
    sup.start_all()
    sup.wait_all(poll=0.05)
    m = sup.managed["a"]
    sup.start_watching(interval=0.05)

    first = crash(m)

    wait_until(lambda: m.restarts == 1 and m.state == "ready", 10, "the restart")
    assert m.process.pid != first and m.process.is_healthy()
    assert m.ready_event.wait(0)


def test_stop_all_stops_every_engine_with_its_whole_process_group(make: Make) -> None:
    sup = make(script(FAMILY, name="family"), sim("plain"))
    sup.start_all()
    sup.wait_all(poll=0.05)
    sup.start_watching(interval=0.05)
    pids = [m.process.pid for m in sup.managed.values()]
    assert all(pid is not None for pid in pids)
    family = pids[0]
    assert family is not None and len(group_members(family)) == 2  # leader + helper, like vLLM

    sup.stop_all(grace=5)

    assert all(group_members(pid) == [] for pid in pids if pid is not None)
    assert all(m.state == "stopped" and not m.wanted for m in sup.managed.values())
    assert "engine family: stopping" in said(sup)


def test_an_on_demand_engine_starts_on_its_first_request_and_stops_when_idle(make: Make) -> None:
    sup = make(sim("lazy", on_demand=True, idle_timeout=0.3))
    m = sup.managed["lazy"]
    sup.start_all()
    assert m.process.pid is None and m.state == "stopped"
    assert "on demand" in said(sup)
    sup.start_watching(interval=0.05)

    assert sup.ensure_running("lazy", timeout=10) is True
    pid = m.process.pid
    assert pid is not None and m.state == "ready"

    wait_until(lambda: m.state == "stopped", 10, "the idle stop")
    assert group_members(pid) == [] and not m.wanted
    assert "idle for 0 s, stopping" in said(sup)


def test_an_on_demand_engine_with_requests_in_flight_is_not_idle(make: Make) -> None:
    sup = make(sim("lazy", on_demand=True, idle_timeout=5))
    m = sup.managed["lazy"]
    assert sup.ensure_running("lazy", timeout=0) is False  # nobody marks it ready without a watcher
    tick_until_ready(sup, m)
    later = time.monotonic() + 60

    m.in_flight = 1
    sup.tick(m, now=later)
    assert m.state == "ready"
    sup.touch("lazy")
    m.in_flight = 0
    sup.tick(m, now=time.monotonic())
    assert m.state == "ready"  # touched just now
    sup.tick(m, now=later)
    assert m.state == "stopped"


def test_a_request_during_a_stop_waits_for_it_then_gets_a_fresh_engine(make: Make) -> None:
    sup = make(script(LINGERING, name="slow", on_demand=True))
    m = sup.managed["slow"]
    sup.start_watching(interval=0.05)
    assert sup.ensure_running("slow", timeout=10)
    old = m.process.pid
    stopper = threading.Thread(target=sup.stop, args=("slow",))
    stopper.start()
    wait_until(lambda: m.state == "stopping", what="the stop to begin")

    assert sup.ensure_running("slow", timeout=10) is True

    stopper.join(timeout=10)
    assert old is not None and group_members(old) == []
    assert m.state == "ready" and m.process.pid not in (None, old) and m.process.is_healthy()


def test_stop_start_and_restart_by_name(make: Make) -> None:
    sup = make(sim("a"))
    m = sup.managed["a"]
    sup.start("a")
    tick_until_ready(sup, m)
    first = m.process.pid

    sup.restart("a")
    assert m.state == "starting" and m.process.pid != first
    tick_until_ready(sup, m)

    sup.stop("a")
    assert m.state == "stopped" and m.process.pid is None
    sup.tick(m)
    assert m.state == "stopped"  # a stopped engine is not brought back


def test_prepare_models_refuses_a_missing_model_directory(make: Make, tmp_path: Path) -> None:
    missing = EngineSpec(
        "m", "chat", tmp_path / "nope", "m", EngineLaunch(model=str(tmp_path / "nope"), port=1)
    )
    present = EngineSpec("p", "chat", tmp_path, "p", EngineLaunch(model=str(tmp_path), port=2))

    make(present).prepare_models()  # nothing packaged: nothing to run
    with pytest.raises(EngineStartError, match="does not exist"):
        make(present, missing).prepare_models()


@pytest.fixture
def leftovers() -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    """Process groups an earlier run might have left: a vLLM lookalike and something unrelated."""
    sleep = "import time; time.sleep(60)"
    engine = subprocess.Popen([sys.executable, "-c", sleep, "vllm-lookalike"], start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", sleep, "unrelated"], start_new_session=True)
    yield engine, other
    for proc in (engine, other):
        proc.kill()
        proc.wait()


def test_reap_stale_kills_engines_of_an_earlier_run_and_records_this_runs(
    make: Make, tmp_path: Path, leftovers: tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]
) -> None:
    engine, other = leftovers
    state = tmp_path / "run" / "engines.json"
    state.parent.mkdir()
    state.write_text(json.dumps([engine.pid, other.pid, "junk"]))
    sup = make(sim("a"))

    sup.reap_stale(state)

    assert engine.wait(timeout=10) == -signal.SIGKILL
    assert other.poll() is None  # a recycled id of something else is never signalled
    assert json.loads(state.read_text()) == []
    assert f"stopping engine process group {engine.pid}" in said(sup)

    sup.start_all()
    assert json.loads(state.read_text()) == [sup.managed["a"].process.pid]


def test_reap_stale_starts_afresh_from_a_missing_or_broken_state_file(make: Make, tmp_path: Path) -> None:
    missing = tmp_path / "a" / "engines.json"
    broken = tmp_path / "engines.json"
    broken.write_text("{not json")

    make().reap_stale(missing)
    make().reap_stale(broken)

    assert missing.read_text() == "[]" and broken.read_text() == "[]"
