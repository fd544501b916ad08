"""EngineProcess: start in a process group of its own, wait for health, stop the whole group."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines.hostinfo import group_members
from engines.process import EngineProcess, EngineStartError
from engines.spec import EngineSpec
from tests.unit.engines.local import FAMILY, STUBBORN, script, sim, wait_until

PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[EngineProcess]]:
    """Engine processes a test starts; whatever is left of them is killed afterwards."""
    procs: list[EngineProcess] = []
    yield procs
    for proc in procs:
        proc.stop(grace=0)


def start(procs: list[EngineProcess], spec: EngineSpec, log: Path) -> EngineProcess:
    proc = EngineProcess(spec, log)
    procs.append(proc)
    proc.start()
    return proc


def wait_started(proc: EngineProcess, timeout: float = 10.0) -> None:
    wait_until(proc.check_started, timeout, f"{proc.spec.name} to answer /health")


def test_start_runs_the_engine_in_its_own_process_group_and_waits_for_health(
    started: list[EngineProcess], tmp_path: Path
) -> None:
    proc = start(started, sim("chat"), tmp_path / "logs" / "chat.log")

    assert proc.pid is not None
    assert os.getpgid(proc.pid) == proc.pid  # a session of its own: the group id is its pid
    assert os.getpgid(proc.pid) != os.getpgrp()
    wait_started(proc)
    assert proc.is_healthy()
    assert proc.exit_code() is None
    assert (tmp_path / "logs" / "chat.log").is_file()


def test_start_while_running_keeps_the_running_process(started: list[EngineProcess], tmp_path: Path) -> None:
    proc = start(started, script("import time; time.sleep(60)"), tmp_path / "e.log")
    pid = proc.pid

    proc.start()

    assert proc.pid == pid


def test_the_engine_gets_the_spec_environment_and_logs_to_its_file(
    started: list[EngineProcess], tmp_path: Path
) -> None:
    code = "import os; print('kv', os.environ['VLLM_CPU_KVCACHE_SPACE'], os.environ['EXTRA'], flush=True)"
    proc = start(started, script(code, kv_cache_gib=3, env={"EXTRA": "yes"}), tmp_path / "e.log")

    wait_until(lambda: proc.exit_code() is not None, what="the script to finish")

    assert proc.exit_code() == 0
    assert proc.log_tail(5) == ["kv 3 yes"]


def test_an_engine_that_exits_while_starting_fails_with_its_log(
    started: list[EngineProcess], tmp_path: Path
) -> None:
    proc = start(started, script("print('no such model'); raise SystemExit(3)"), tmp_path / "e.log")
    wait_until(lambda: proc.exit_code() is not None, what="the script to exit")

    with pytest.raises(EngineStartError) as info:
        proc.check_started()

    assert "exited with status 3 while starting" in str(info.value)
    assert "no such model" in str(info.value)
    assert str(tmp_path / "e.log") in str(info.value)


def test_an_engine_that_never_becomes_healthy_fails_after_its_startup_timeout(
    started: list[EngineProcess], tmp_path: Path
) -> None:
    proc = start(started, script("import time; time.sleep(60)", startup_timeout=0.3), tmp_path / "e.log")

    assert proc.check_started() is False  # not yet: within its timeout
    with pytest.raises(EngineStartError, match="not healthy after"):
        wait_until(lambda: proc.check_started(), 10, "the start-up timeout")


def test_stop_ends_the_whole_process_group_with_sigterm(started: list[EngineProcess], tmp_path: Path) -> None:
    proc = start(started, script(FAMILY), tmp_path / "e.log")
    wait_started(proc)
    pid = proc.pid
    assert pid is not None
    assert len(group_members(pid)) == 2  # the leader and its helper

    begun = time.monotonic()
    proc.stop(grace=10)

    assert time.monotonic() - begun < 5  # SIGTERM sufficed: no wait for the grace
    assert group_members(pid) == []
    assert proc.pid is None and proc.exit_code() is None


def test_stop_does_not_wait_for_zombies_that_nobody_reaps(
    started: list[EngineProcess], tmp_path: Path
) -> None:
    # Orphans go to a reaper that may never reap them (a container's PID 1); here, this process.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1) == 0
    helper = None
    try:
        proc = start(started, script(FAMILY), tmp_path / "e.log")
        wait_started(proc)
        pid = proc.pid
        assert pid is not None
        helper = next(p for p in group_members(pid) if p != pid)

        begun = time.monotonic()
        proc.stop(grace=3)

        assert time.monotonic() - begun < 2
        assert _state(helper) == "Z"  # still there, dead, in the group
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0)
        if helper is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(helper, 0)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_stop_kills_what_ignores_sigterm_after_the_grace(
    started: list[EngineProcess], tmp_path: Path
) -> None:
    proc = start(started, script(STUBBORN), tmp_path / "e.log")
    wait_until(lambda: proc.log_tail() == ["ignoring SIGTERM"], what="SIGTERM to be ignored")
    pid = proc.pid
    assert pid is not None
    wait_until(lambda: len(group_members(pid)) == 2, what="the helper to start")

    begun = time.monotonic()
    proc.stop(grace=0.5)

    assert time.monotonic() - begun >= 0.5  # it waited for a graceful exit first
    assert group_members(pid) == []


def test_terminate_sends_sigterm_without_waiting(started: list[EngineProcess], tmp_path: Path) -> None:
    proc = start(started, script("import time; time.sleep(60)"), tmp_path / "e.log")

    proc.terminate()

    wait_until(lambda: proc.exit_code() is not None, what="the engine to end")
    assert proc.exit_code() == -signal.SIGTERM


def test_stopping_an_engine_that_never_started_does_nothing(tmp_path: Path) -> None:
    proc = EngineProcess(sim(), tmp_path / "e.log")

    proc.stop(grace=0)
    proc.terminate()

    assert proc.pid is None and proc.exit_code() is None and proc.log_tail() == []


PARENT = """
import sys, time
from pathlib import Path
from engines.process import EngineProcess
from engines.spec import EngineLaunch, EngineSpec

class Sleeper(EngineSpec):
    def argv(self) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(60)"]

proc = EngineProcess(Sleeper("x", "chat", Path("."), "x", EngineLaunch(model="x", port=1)), Path(sys.argv[1]))
proc.start()
print(proc.pid, flush=True)
time.sleep(60)
"""


def test_an_engine_ends_when_the_process_that_started_it_dies(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "e.log")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        engine = int(parent.stdout.readline())
        assert group_members(engine) == [engine]

        parent.kill()  # SIGKILL: the parent cannot clean up; the kernel sends the engine SIGTERM
        parent.wait()

        wait_until(lambda: not group_members(engine), 10, "the orphaned engine to exit")
    finally:
        parent.kill()
        parent.wait()
