"""One local vLLM engine process: start it in its own process group, wait for health, stop it whole.

vLLM's API server forks an EngineCore and a Worker that hold the weights; killing the API server
alone leaves them running as orphans. So each engine gets its own session (process group) and is
stopped with ``killpg``; and it receives SIGTERM if the process that started it dies
(``PR_SET_PDEATHSIG``), on which vLLM shuts its children down.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

from engines.hostinfo import group_members
from engines.limits import Limits, limits_for
from engines.spec import EngineSpec

_PR_SET_PDEATHSIG = 1
_PROC = Path("/proc/self")


class EngineStartError(RuntimeError):
    """An engine failed to start or become healthy; the message says why and where its log is."""


def _die_with_parent(parent: int) -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError):  # not Linux: the supervisor's own shutdown still stops the group
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the signal was armed: it will never come
        os.kill(os.getpid(), signal.SIGTERM)


class EngineProcess:
    """A vLLM OpenAI server started by Offload."""

    def __init__(self, spec: EngineSpec, log_path: Path) -> None:
        self.spec = spec
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        e = spec.launch
        self.limits: Limits = limits_for(spec.name, e.cpus, e.memory_limit_gib)

    @property
    def pid(self) -> int | None:
        """The API server's pid (also its process group id), while running."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the engine; returns at once (see :meth:`wait_healthy`)."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.limits.prepare()
        limits = self.limits
        parent = os.getpid()

        def in_child() -> None:
            _die_with_parent(parent)
            limits.apply_in_child()

        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.spec.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.spec.env()},
                start_new_session=True,
                preexec_fn=in_child,
            )
        self.started_at = time.monotonic()

    def exit_code(self) -> int | None:
        """The exit status if the process has ended, else None."""
        return None if self._proc is None else self._proc.poll()

    def is_healthy(self, timeout: float = 2.0) -> bool:
        """True when ``GET /health`` answers 200."""
        try:
            with urllib.request.urlopen(self.spec.base_url + "/health", timeout=timeout) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 1) -> list[str]:
        """The last lines of the engine's log (for progress and error messages)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        kept: deque[str] = deque(maxlen=lines)
        for line in text.splitlines():
            line = line.strip()
            if line:
                kept.append(line)
        return list(kept)

    def check_started(self) -> bool:
        """True once healthy; raise :class:`EngineStartError` if the process died or took too long."""
        code = self.exit_code()
        if code is not None:
            tail = "\n    ".join(self.log_tail(15))
            raise EngineStartError(
                f"engine {self.spec.name} exited with status {code} while starting; "
                f"log {self.log_path}:\n    {tail}"
            )
        if self.is_healthy():
            return True
        assert self.started_at is not None
        if time.monotonic() - self.started_at > self.spec.launch.startup_timeout:
            raise EngineStartError(
                f"engine {self.spec.name} not healthy after {self.spec.launch.startup_timeout:.0f} s; "
                f"log {self.log_path}"
            )
        return False

    def terminate(self) -> None:
        """Ask the whole process group to stop (SIGTERM); see :meth:`stop`."""
        if self._proc is not None:
            _signal_group(self._proc.pid, signal.SIGTERM)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after ``grace`` seconds."""
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the group id is the leader's pid
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)  # children (EngineCore, Worker) may outlive the leader briefly
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self._proc = None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """True while the group has a live member. Zombies do not count: an orphan's is reaped by
    init, which may take seconds, or never when init does not reap (a container's PID 1)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(group_members(pgid)) if _PROC.is_dir() else True
