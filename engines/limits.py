"""Per-engine resource limits applied to the engine process (and so to everything it starts).

* CPU set: the process's CPU affinity, inherited by vLLM's EngineCore and Worker.
* Memory: a cgroup of its own with a hard limit, so the kernel's OOM killer ends the engine (not the
  gateway) when it exceeds it. cgroup v2 where it is mounted with the memory controller, else the
  cgroup v1 memory hierarchy, else ``RLIMIT_AS`` (address space: coarse, but still per process).
"""

from __future__ import annotations

import contextlib
import os
import resource
from dataclasses import dataclass
from pathlib import Path

_V2_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
_V1_MEMORY = Path("/sys/fs/cgroup/memory")


def parse_cpus(spec: str) -> set[int]:
    """``"0-1,3"`` -> ``{0, 1, 3}``; raises ValueError on nonsense."""
    cpus: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-", 1))
            if hi < lo:
                raise ValueError(f"bad CPU range {part!r}")
            cpus.update(range(lo, hi + 1))
        elif part:
            cpus.add(int(part))
    if not cpus:
        raise ValueError(f"no CPUs in {spec!r}")
    return cpus


@dataclass(frozen=True)
class MemoryCgroup:
    """Where an engine's memory cgroup lives and how to write its limit."""

    path: Path
    limit_file: str
    procs_file: str = "cgroup.procs"

    def create(self, limit_bytes: int) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / self.limit_file).write_text(str(limit_bytes))

    def enter(self) -> None:
        """Move the calling process into the cgroup (runs in the child before exec)."""
        (self.path / self.procs_file).write_text(str(os.getpid()))

    def remove(self) -> None:
        with contextlib.suppress(OSError):  # still has processes, or never created
            self.path.rmdir()


def memory_cgroup(name: str) -> MemoryCgroup | None:
    """A cgroup for engine ``name`` on this machine, or None when none can be used."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
    for root in _V2_ROOTS:
        controllers = root / "cgroup.controllers"
        if controllers.is_file() and "memory" in controllers.read_text().split() and os.access(root, os.W_OK):
            return MemoryCgroup(root / "offload" / safe, "memory.max")
    if (_V1_MEMORY / "memory.limit_in_bytes").is_file() and os.access(_V1_MEMORY, os.W_OK):
        return MemoryCgroup(_V1_MEMORY / "offload" / safe, "memory.limit_in_bytes")
    return None


@dataclass(frozen=True)
class Limits:
    """What to apply to one engine process."""

    cpus: frozenset[int] | None = None
    memory_bytes: int | None = None
    cgroup: MemoryCgroup | None = None

    @property
    def memory_mechanism(self) -> str | None:
        """How the memory limit is enforced: ``cgroup`` or ``rlimit`` (None: no limit)."""
        if self.memory_bytes is None:
            return None
        return "cgroup" if self.cgroup is not None else "rlimit"

    def prepare(self) -> None:
        """In the parent, before starting the engine: create its cgroup."""
        if self.cgroup is not None and self.memory_bytes is not None:
            self.cgroup.create(self.memory_bytes)

    def apply_in_child(self) -> None:
        """In the child between fork and exec (must not raise for a missing facility)."""
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)
        if self.memory_bytes is not None:
            if self.cgroup is not None:
                self.cgroup.enter()
            else:
                resource.setrlimit(resource.RLIMIT_AS, (self.memory_bytes, self.memory_bytes))


def limits_for(name: str, cpus: str | None, memory_gib: float | None) -> Limits:
    """The limits for engine ``name`` from its configuration."""
    memory = int(memory_gib * 2**30) if memory_gib is not None else None
    cgroup = memory_cgroup(name) if memory is not None else None
    return Limits(frozenset(parse_cpus(cpus)) if cpus else None, memory, cgroup)
