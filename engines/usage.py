"""What each local engine uses of the machine: CPU, resident memory and, on GPU hosts, GPU.

An engine is a process group (vLLM's API server, its EngineCore and workers: :mod:`engines.process`),
so its usage is the sum over the group's live members, read through psutil. The CPU seconds are a
counter that never goes back: a member that exits keeps its last reading in the total, and a
restarted engine's new group adds to it. (CPU of a process that starts and ends between two
samples is not seen; vLLM's processes live as long as the engine.) Resident memory is the sum of the
members' RSS, so pages they share are counted once per process.

GPU figures come from NVML (``nvidia-ml-py``, imported as ``pynvml``) when the library and a driver
are there; without them an engine simply has no GPU figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import psutil

__all__ = ["EngineUsage", "GpuUsage", "Gpus", "GroupMeter", "UsageMeter", "group_members_of"]

MIN_INTERVAL = 1.0
"""Seconds a cores-in-use figure is averaged over at least (closer samples reuse the last one)."""


@dataclass(frozen=True, slots=True)
class GpuUsage:
    """One GPU as an engine uses it."""

    device: int
    """NVML's device index."""
    utilization: float | None
    """How busy the device is, 0..1 (the whole device: NVML does not split it between processes)."""
    memory_bytes: int
    """GPU memory held by the engine's processes on this device."""


@dataclass(frozen=True, slots=True)
class EngineUsage:
    """One sample of an engine's usage (a stopped engine: no processes, zero memory)."""

    cpu_seconds: float
    """User + system CPU time of the engine's processes since they started (a counter: what
    ended processes used stays in it, across restarts too)."""
    cpu_cores: float | None
    """CPU cores in use, averaged since the previous sample; None until there is one."""
    memory_bytes: int
    """Resident memory (RSS) summed over the engine's processes."""
    processes: int
    """Live processes in the engine's process group."""
    gpus: tuple[GpuUsage, ...] = ()
    """The GPUs the engine's processes hold memory on (none without NVML)."""


def group_members_of(pgids: Iterable[int]) -> dict[int, list[int]]:
    """The processes of each process group in ``pgids``, in one pass over ``/proc``."""
    found: dict[int, list[int]] = {pgid: [] for pgid in pgids}
    if not found:
        return found
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                pgid = os.getpgid(int(entry))
            except OSError:  # gone since the listing
                continue
            members = found.get(pgid)
            if members is not None:
                members.append(int(entry))
    return found


class GroupMeter:
    """The usage of one engine across samples: the CPU counter and the cores-in-use average need the
    readings before. Thread-safe."""

    def __init__(self, min_interval: float = MIN_INTERVAL) -> None:
        self._min_interval = min_interval
        self._lock = threading.Lock()
        self._procs: dict[int, psutil.Process] = {}  # psutil caches per Process; pid reuse is checked
        self._last_cpu: dict[tuple[int, float], float] = {}  # (pid, start time) -> CPU seconds
        self._gone = 0.0  # CPU seconds of members that have exited
        self._ref: tuple[float, float] | None = None  # (time, CPU seconds) the next average starts at
        self._cores: float | None = None

    def sample(self, pids: Iterable[int], now: float | None = None) -> tuple[EngineUsage, list[int]]:
        """Read the members ``pids`` (one process group); returns the usage (no GPU figures) and
        the live ones (not ended meanwhile, not zombies)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            cpu: dict[tuple[int, float], float] = {}
            rss, live = 0, []
            for pid in pids:
                reading = self._read(pid)
                if reading is not None:
                    key, seconds, resident, alive = reading
                    cpu[key] = seconds  # a zombie's last reading still counts
                    rss += resident
                    if alive:
                        live.append(pid)
            self._gone += sum(s for key, s in self._last_cpu.items() if key not in cpu)
            self._last_cpu = cpu
            self._procs = {pid: p for pid, p in self._procs.items() if (pid, p.create_time()) in cpu}
            total = self._gone + sum(cpu.values())
            if self._ref is None:
                self._ref = (now, total)
            elif now - self._ref[0] >= self._min_interval:
                self._cores = max(0.0, total - self._ref[1]) / (now - self._ref[0])
                self._ref = (now, total)
            return EngineUsage(total, self._cores, rss, len(live)), live

    def _read(self, pid: int) -> tuple[tuple[int, float], float, int, bool] | None:
        """(pid, start time), CPU seconds, RSS, and whether it is alive (not a zombie)."""
        proc = self._procs.get(pid)
        try:
            if proc is None or not proc.is_running():  # is_running: False when the pid was reused
                proc = self._procs[pid] = psutil.Process(pid)
            with proc.oneshot():  # one read of /proc/PID/stat for all of these
                times = proc.cpu_times()
                alive = proc.status() != psutil.STATUS_ZOMBIE
                rss = proc.memory_info().rss if alive else 0
                return (pid, proc.create_time()), times.user + times.system, rss, alive
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None


class Gpus:
    """NVML, opened once. Devices are attributed to an engine by its processes in the device's
    list of compute processes (which also gives their memory)."""

    def __init__(self, nvml: ModuleType) -> None:
        self._nvml = nvml
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]

    @classmethod
    def open(cls) -> Gpus | None:
        """NVML when the library and a GPU driver are there, else None (no GPU figures, no error)."""
        try:
            # importlib: pynvml ships no type information; its calls are Any either way
            nvml = importlib.import_module("pynvml")
            nvml.nvmlInit()
        except Exception:  # no library, no driver (NVMLError_LibraryNotFound...), no GPU
            return None
        try:
            return cls(nvml)
        except Exception:
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()
            return None

    def usage(self, pids: Iterable[int]) -> tuple[GpuUsage, ...]:
        """Per device the engine's processes are on: its utilisation and their memory."""
        wanted = set(pids)
        found = []
        for index, handle in enumerate(self._handles):
            memory, present = 0, False
            for proc in self._processes(handle):
                if proc.pid in wanted:
                    present = True
                    memory += proc.usedGpuMemory or 0  # None: NVML cannot tell (e.g. some vGPUs)
            if present:
                found.append(GpuUsage(index, self._utilization(handle), memory))
        return tuple(found)

    def _processes(self, handle: Any) -> list[Any]:
        try:
            return list(self._nvml.nvmlDeviceGetComputeRunningProcesses(handle))
        except Exception:  # NVMLError_NotSupported and the like: nothing attributable
            return []

    def _utilization(self, handle: Any) -> float | None:
        try:
            return float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu) / 100.0
        except Exception:
            return None

    def close(self) -> None:
        """Release NVML."""
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()


class UsageMeter:
    """Samples a set of engines, named, each a process group (None: not running). Thread-safe.

    NVML is opened on the first sample (``gpus=False``: never, e.g. in tests)."""

    def __init__(self, gpus: bool = True, min_interval: float = MIN_INTERVAL) -> None:
        self._want_gpus = gpus
        self._gpus: Gpus | None = None
        self._gpus_opened = False
        self._min_interval = min_interval
        self._meters: dict[str, GroupMeter] = {}
        self._lock = threading.Lock()

    def sample(self, groups: Mapping[str, int | None], now: float | None = None) -> dict[str, EngineUsage]:
        """The usage of each engine ``name -> process group id`` (engines not named are forgotten)."""
        with self._lock:
            if self._want_gpus and not self._gpus_opened:
                self._gpus_opened = True
                self._gpus = Gpus.open()
            self._meters = {n: self._meters.get(n) or GroupMeter(self._min_interval) for n in groups}
            members = group_members_of(pgid for pgid in groups.values() if pgid is not None)
            usage = {}
            for name, pgid in groups.items():
                found, live = self._meters[name].sample(members.get(pgid, []) if pgid else [], now)
                if self._gpus is not None and live:
                    found = dataclasses.replace(found, gpus=self._gpus.usage(live))
                usage[name] = found
            return usage

    def close(self) -> None:
        """Release NVML if it was opened."""
        with self._lock:
            if self._gpus is not None:
                self._gpus.close()
                self._gpus = None
