"""CPU time and peak memory of a process tree, read from ``/proc`` (Linux only).

CPU is ``utime + stime + cutime + cstime`` (fields 14-17 of ``/proc/PID/stat``, clock ticks) summed
over the process and its live descendants: children that exited and were reaped are already in their
parent's ``cutime``/``cstime``. Read it before and after a run; the difference is what the tree spent.
Peak memory is ``VmHWM`` (the resident set's high-water mark) from ``/proc/PID/status``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_TICK = 1.0 / os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after its last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))  # fields[1] is ppid
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, children included) the tree rooted at ``pid`` has used so far."""
    total = 0
    for member in descendants(pid):
        fields = _stat_fields(member)
        if fields is not None:
            # After the name: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17).
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total * _TICK


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def peak_rss_mb(pid: int) -> float:
    """Sum of ``VmHWM`` over the tree, in MB (10^6 bytes)."""
    return sum(_status_kib(p, "VmHWM") for p in descendants(pid)) * 1024 / 1e6


def rss_mb(pid: int) -> float:
    """Current resident set (``VmRSS``) of the tree, in MB."""
    return sum(_status_kib(p, "VmRSS") for p in descendants(pid)) * 1024 / 1e6


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where it does not say)."""
    with contextlib.suppress(OSError, StopIteration):
        return next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return ""
