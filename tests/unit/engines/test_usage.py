"""engines.usage: what an engine's process group uses, read from real processes (and NVML, faked)."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engines.usage import EngineUsage, Gpus, GpuUsage, GroupMeter, UsageMeter, group_members_of
from tests.unit.engines.local import wait_until

# A leader that starts a helper in its group (as vLLM's API server starts its EngineCore), then
# burns CPU until the file named by argv[1] exists; the helper sleeps.
BUSY_FAMILY = (
    "import os, subprocess, sys\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "while not os.path.exists(sys.argv[1]):\n"
    "    sum(range(10000))\n"
)


@pytest.fixture
def family(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A busy two-process group; yields its id and the file that makes the leader stop working."""
    stop = tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, "-c", BUSY_FAMILY, str(stop)], start_new_session=True)
    try:
        wait_until(lambda: len(group_members_of([proc.pid])[proc.pid]) == 2, what="the helper to start")
        yield proc.pid, stop
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_group_members_of_finds_every_process_of_each_group(family: tuple[int, Path]) -> None:
    pgid, _ = family
    members = group_members_of([pgid, 999_999_999])
    assert pgid in members[pgid] and len(members[pgid]) == 2
    assert members[999_999_999] == []


def test_a_working_group_shows_cpu_seconds_rising_cores_in_use_and_memory(family: tuple[int, Path]) -> None:
    pgid, _ = family
    meter = UsageMeter(gpus=False, min_interval=0.2)
    first = meter.sample({"e": pgid})["e"]
    assert first.cpu_cores is None  # nothing to average over yet
    assert first.processes == 2 and first.memory_bytes > 5 * 2**20

    samples: list[EngineUsage] = []

    def worked() -> bool:
        samples.append(meter.sample({"e": pgid})["e"])
        return samples[-1].cpu_seconds - first.cpu_seconds >= 0.3

    wait_until(worked, timeout=20, what="0.3 CPU seconds of work")
    assert all(b.cpu_seconds >= a.cpu_seconds for a, b in itertools.pairwise(samples))
    assert max(s.cpu_cores or 0.0 for s in samples) > 0.05
    assert samples[-1].gpus == ()


def test_cpu_seconds_never_go_back_when_members_end(family: tuple[int, Path]) -> None:
    pgid, stop = family
    meter = UsageMeter(gpus=False, min_interval=0.2)
    meter.sample({"e": pgid})
    wait_until(lambda: meter.sample({"e": pgid})["e"].cpu_seconds > 0.2, timeout=20, what="some work")
    before = meter.sample({"e": pgid})["e"]

    stop.touch()  # the leader ends (a zombie until reaped), its helper sleeps on
    wait_until(lambda: meter.sample({"e": pgid})["e"].processes == 1, what="the leader to end")
    os.killpg(pgid, signal.SIGKILL)
    wait_until(lambda: meter.sample({"e": pgid})["e"].processes == 0, what="the helper to end")

    after = meter.sample({"e": pgid})["e"]
    assert after.cpu_seconds >= before.cpu_seconds
    assert after.memory_bytes == 0


def test_a_stopped_engine_keeps_its_cpu_seconds_and_a_restarted_one_adds_to_them(
    family: tuple[int, Path],
) -> None:
    pgid, _ = family
    meter = UsageMeter(gpus=False, min_interval=0.2)
    meter.sample({"e": pgid})
    wait_until(lambda: meter.sample({"e": pgid})["e"].cpu_seconds > 0.2, timeout=20, what="some work")
    used = meter.sample({"e": pgid})["e"].cpu_seconds

    stopped = meter.sample({"e": None})["e"]  # not running: no group
    assert (stopped.cpu_seconds, stopped.memory_bytes, stopped.processes) == (used, 0, 0)

    again = meter.sample({"e": os.getpgid(0)})["e"]  # "restarted" as another group (this one)
    assert again.cpu_seconds > used and again.processes >= 1


def test_engines_no_longer_named_are_forgotten(family: tuple[int, Path]) -> None:
    pgid, _ = family
    meter = UsageMeter(gpus=False)
    meter.sample({"a": pgid, "b": None})
    assert set(meter.sample({"b": None})) == {"b"}


def test_cores_are_averaged_over_at_least_the_minimum_interval() -> None:
    meter, me = GroupMeter(min_interval=1.0), [os.getpid()]
    first, _ = meter.sample(me, now=100.0)
    assert first.cpu_cores is None
    early, _ = meter.sample(me, now=100.5)  # too soon to average: still unknown
    assert early.cpu_cores is None
    sum(range(2_000_000))  # some CPU for this process
    later, _ = meter.sample(me, now=102.0)
    assert later.cpu_cores == pytest.approx((later.cpu_seconds - first.cpu_seconds) / 2.0)
    assert later.cpu_seconds > first.cpu_seconds
    soon, _ = meter.sample(me, now=102.1)  # too soon again: the last average stands
    assert soon.cpu_cores == later.cpu_cores


# --- NVML -----------------------------------------------------------------------------------------


def test_without_the_nvml_library_there_are_no_gpu_figures_and_no_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    assert Gpus.open() is None
    usage = UsageMeter().sample({"me": os.getpgid(0)})["me"]
    assert usage.gpus == () and usage.memory_bytes > 0


class NVMLError(Exception):
    """pynvml's error type (its subclasses name the cause)."""


def fake_nvml(processes: dict[int, list[tuple[int, int | None]]], busy: dict[int, int], **fail: bool) -> Any:
    """A stand-in for pynvml: devices with their compute processes (pid, memory) and utilisation."""

    def init() -> None:
        if fail.get("init"):
            raise NVMLError("NVML Shared Library Not Found")

    def running(handle: int) -> list[SimpleNamespace]:
        if fail.get("listing"):
            raise NVMLError("Not Supported")
        return [SimpleNamespace(pid=pid, usedGpuMemory=mem) for pid, mem in processes.get(handle, [])]

    return SimpleNamespace(
        nvmlInit=init,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: len(busy),
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetComputeRunningProcesses=running,
        nvmlDeviceGetUtilizationRates=lambda handle: SimpleNamespace(gpu=busy[handle], memory=0),
    )


def test_when_nvml_cannot_start_there_are_no_gpu_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml({}, {0: 50}, init=True))
    assert Gpus.open() is None


def test_gpu_figures_are_the_devices_the_engines_processes_are_on(monkeypatch: pytest.MonkeyPatch) -> None:
    me = os.getpid()
    nvml = fake_nvml(
        {0: [(1, 5 * 2**30)], 1: [(me, 3 * 2**30), (2, 2**30)], 2: [(me, None)]},
        {0: 90, 1: 37, 2: 10},
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    usage = UsageMeter().sample({"me": os.getpgid(0)})["me"]
    # device 0 is someone else's; on 1 only this process's memory counts; 2 cannot tell the memory
    assert usage.gpus == (GpuUsage(1, 0.37, 3 * 2**30), GpuUsage(2, 0.10, 0))


def test_devices_without_per_process_figures_are_not_attributed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml({0: [(os.getpid(), 2**30)]}, {0: 50}, listing=True))
    assert UsageMeter().sample({"me": os.getpgid(0)})["me"].gpus == ()
