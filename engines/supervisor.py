"""Owns a set of local engines: prepares their models, starts them, keeps them alive.

The engines come as :class:`~engines.spec.EngineSpec` (``gateway.local_engines.engine_specs`` turns
a configuration into them); this package never reads the gateway's configuration.

* Crashed engines are restarted with exponential back-off (1 s doubling to 60 s; reset once an
  engine has stayed up for a minute), whatever killed them: a bug, ``kill -9``, or the OOM killer
  enforcing the engine's memory limit.
* On-demand engines start on their first request and stop after ``idle_timeout`` without traffic.
* Everything is stopped on shutdown: SIGTERM to each engine's process group, SIGKILL after a grace.
* The set can change while running (a configuration reload, ``gateway.rollout``): :meth:`Supervisor.add`
  starts a new engine, :meth:`Supervisor.set_aside` takes one out of the set (it keeps serving
  what it has until :meth:`Supervisor.retire` drains it and stops it).

A watcher thread does the keeping-alive; the gateway reaches the supervisor through
:class:`engines.control.LocalEngineControl` (thread-safe calls only).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from engines.hostinfo import describe_exit, is_engine_group, port_free
from engines.models import PREPARERS
from engines.process import EngineProcess, EngineStartError
from engines.spec import EngineSpec

__all__ = ["EngineStartError", "ManagedEngine", "Supervisor"]

BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
STABLE_AFTER = 60.0  # seconds up after which a crash counts as a fresh one (back-off reset)


@dataclass
class ManagedEngine:
    """One engine and what the supervisor knows about it."""

    process: EngineProcess
    state: str = "stopped"  # stopped | starting | ready | backoff | stopping | draining | retired
    wanted: bool = False  # should be running
    restarts: int = 0
    last_exit: str | None = None
    backoff: float = BACKOFF_START
    next_start: float = 0.0
    ready_since: float | None = None
    last_activity: float = field(default_factory=time.monotonic)
    in_flight: int = 0  # requests the gateway has on this engine
    ready_event: threading.Event = field(default_factory=threading.Event)

    @property
    def name(self) -> str:
        return self.process.spec.name

    @property
    def on_demand(self) -> bool:
        return self.process.spec.launch.on_demand


class Supervisor:
    """The local engines Offload runs (engines given by URL or DNS are not ours to run).

    ``models_dir`` holds the prepared packaged models (:data:`engines.models.PREPARERS`); each
    engine logs to ``logs_dir/<name>.log``.
    """

    def __init__(
        self, specs: list[EngineSpec], models_dir: Path, logs_dir: Path, out: TextIO = sys.stdout
    ) -> None:
        self._models_dir = models_dir
        self._out = out
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._logs_dir = logs_dir
        self.managed: dict[str, ManagedEngine] = {}
        # Out of the set (removed or replaced by a reload), in the order they left it: draining,
        # then stopped; the last few stopped ones are kept for `offload engines list`.
        self.retiring: list[ManagedEngine] = []
        self._state_file: Path | None = None
        for spec in specs:
            if spec.name in self.managed:
                raise ValueError(f"two engines are named {spec.name!r}")
            self.managed[spec.name] = self._managed(spec)

    def _managed(self, spec: EngineSpec) -> ManagedEngine:
        log = self._logs_dir / f"{spec.name.replace(':', '-').replace('#', '-')}.log"
        return ManagedEngine(EngineProcess(spec, log))

    @property
    def engines(self) -> list[EngineProcess]:
        """The engine processes, in configuration order."""
        return [m.process for m in self.managed.values()]

    def _say(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def prepare_models(self) -> None:
        """Prepare the packaged models the engines need (in a subprocess: it imports torch)."""
        for engine in self.engines:
            if engine.spec.launch.model not in PREPARERS and not engine.spec.model_dir.is_dir():
                raise EngineStartError(
                    f"model directory {engine.spec.model_dir} for {engine.spec.name} does not exist"
                )
        self._prepare(sorted({e.spec.launch.model for e in self.engines if e.spec.launch.model in PREPARERS}))

    def _prepare(self, names: list[str]) -> None:
        if not names:
            return
        cmd = [
            sys.executable,
            "-m",
            "engines.models",
            "prepare",
            *names,
            "--models-dir",
            str(self._models_dir),
        ]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise EngineStartError("model preparation failed (see above)")

    # --- start-up (blocking, with progress) ----------------------------------------------------
    def reap_stale(self, state_file: Path) -> None:
        """Stop engines a previous run left behind (it was killed before it could stop them),
        then record this run's engine process groups in ``state_file`` as they start."""
        self._state_file = state_file
        try:
            stale = json.loads(state_file.read_text())
        except (OSError, ValueError):
            stale = []
        for pgid in stale:
            if isinstance(pgid, int) and is_engine_group(pgid):
                self._say(f"stopping engine process group {pgid} left by an earlier run")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text("[]")

    def _record_pids(self) -> None:
        if self._state_file is not None:
            pids = [m.process.pid for m in self._all() if m.process.pid is not None]
            self._state_file.write_text(json.dumps(pids))

    def start_all(self) -> None:
        """Start every engine that is not on-demand (they load in parallel)."""
        for m in self.managed.values():
            e = m.process.spec.launch
            if not port_free(e.host, e.port):
                raise EngineStartError(
                    f"port {e.port} for engine {m.name} is already in use (another Offload still running?)"
                )
        for m in self.managed.values():
            if m.on_demand:
                self._say(f"engine {m.name}: on demand (starts on its first request)")
                continue
            self._launch(m)

    def _launch(self, m: ManagedEngine, why: str = "") -> None:
        with self._lock:
            m.wanted = True
            m.state = "starting"
            m.ready_event.clear()
            m.process.start()
            self._record_pids()
        self._say(f"engine {m.name}: starting{why} (pid {m.process.pid}, log {m.process.log_path})")

    def wait_all(self, poll: float = 1.0, report_every: float = 10.0) -> None:
        """Block until every started engine is healthy, printing progress; raise if one fails."""
        pending = [m for m in self.managed.values() if m.state == "starting"]
        started = time.monotonic()
        last_report = started
        while pending:
            for m in list(pending):
                if m.process.check_started():
                    pending.remove(m)
                    self._mark_ready(m)
                    self._say(
                        f"engine {m.name}: ready at {m.process.spec.base_url} ({time.monotonic() - started:.0f} s)"
                    )
            if pending and time.monotonic() - last_report >= report_every:
                last_report = time.monotonic()
                for m in pending:
                    tail = m.process.log_tail(1)
                    hint = f" - {tail[0][-100:]}" if tail else ""
                    self._say(f"engine {m.name}: loading ({last_report - started:.0f} s){hint}")
            if pending:
                time.sleep(poll)

    def _mark_ready(self, m: ManagedEngine) -> None:
        with self._lock:
            m.state = "ready"
            m.ready_since = time.monotonic()
            m.last_activity = time.monotonic()
            m.ready_event.set()

    # --- keeping them alive --------------------------------------------------------------------
    def start_watching(self, interval: float = 0.5) -> None:
        """Restart crashed engines and stop idle on-demand ones, in a background thread."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._watch, args=(interval,), name="offload-supervisor", daemon=True
            )
            self._thread.start()

    def _all(self) -> list[ManagedEngine]:
        with self._lock:
            return [*self.managed.values(), *self.retiring]

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            for m in self._all():
                try:
                    self.tick(m)
                except EngineStartError as exc:
                    self._say(f"engine {m.name}: {str(exc).splitlines()[0]}")

    def tick(self, m: ManagedEngine, now: float | None = None) -> None:
        """One supervision step for one engine."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if not m.wanted:
                return
            code = m.process.exit_code()
            if m.state in ("starting", "ready") and code is not None:
                self._crashed(m, code, now)
            elif m.state == "backoff" and now >= m.next_start:
                m.process.stop(grace=2)  # reap what is left of the old group
                self._launch(m, f" again (restart {m.restarts})")
            elif m.state == "starting":
                try:
                    ok = m.process.is_healthy(timeout=1.0)
                except OSError:
                    ok = False
                if ok:
                    self._mark_ready(m)
                    self._say(f"engine {m.name}: ready")
            elif (
                m.state == "ready"
                and m.on_demand
                and m.in_flight == 0
                and now - m.last_activity > m.process.spec.launch.idle_timeout
            ):
                self._say(f"engine {m.name}: idle for {m.process.spec.launch.idle_timeout:.0f} s, stopping")
                self._stop_engine(m)

    def _crashed(self, m: ManagedEngine, code: int, now: float) -> None:
        if m.ready_since is not None and now - m.ready_since > STABLE_AFTER:
            m.backoff = BACKOFF_START
        m.last_exit = describe_exit(code)
        m.restarts += 1
        m.state = "backoff"
        m.ready_event.clear()
        m.ready_since = None
        m.next_start = now + m.backoff
        self._say(f"engine {m.name}: {m.last_exit}; restarting in {m.backoff:.0f} s")
        m.backoff = min(BACKOFF_MAX, m.backoff * 2)

    def _stop_engine(self, m: ManagedEngine) -> None:
        # Under the lock throughout: a start of this engine (an on-demand request) waits until
        # the old process group is gone rather than finding it still alive and adopting it.
        with self._lock:
            m.wanted = False
            m.state = "stopping"
            m.ready_since = None
            m.ready_event.clear()
            m.process.stop()
            m.state = "stopped"

    # --- control (thread-safe; used by the gateway's admin API and on-demand loading) ----------
    def ensure_running(self, name: str, timeout: float) -> bool:
        """Start ``name`` if it is not running and wait until it is ready; False on timeout."""
        m = self.managed[name]
        with self._lock:
            m.last_activity = time.monotonic()
            if not m.wanted:
                self._launch(m, " on demand")
        return m.ready_event.wait(timeout)

    def touch(self, name: str) -> None:
        """Traffic went to ``name`` (keeps an on-demand engine from idling out)."""
        self.managed[name].last_activity = time.monotonic()

    def start(self, name: str) -> None:
        """Start an engine (no wait)."""
        m = self.managed[name]
        with self._lock:
            if not m.wanted:
                m.backoff = BACKOFF_START
                self._launch(m)

    def stop(self, name: str) -> None:
        """Stop an engine; it stays stopped (an on-demand one until its next request)."""
        self._stop_engine(self.managed[name])

    def restart(self, name: str) -> None:
        """Stop and start an engine."""
        self._stop_engine(self.managed[name])
        self.start(name)

    # --- changing the set (a configuration reload; thread-safe) ------------------------------
    def add(self, spec: EngineSpec) -> ManagedEngine:
        """Put ``spec`` in the set and start it (no wait; an on-demand one waits for its first
        request). An engine of the same name is set aside first (:meth:`set_aside`): it keeps
        serving until it is retired. Prepares a packaged model first if needed (blocking)."""
        m = self._managed(spec)
        if spec.launch.model in PREPARERS and not spec.model_dir.is_dir():
            self._prepare([spec.launch.model])
        if not m.on_demand and not port_free(spec.launch.host, spec.launch.port):
            raise EngineStartError(f"port {spec.launch.port} for engine {m.name} is already in use")
        with self._lock:
            if spec.name in self.managed:
                self.set_aside(spec.name)
            self.managed[spec.name] = m
        if m.on_demand:
            self._say(f"engine {m.name}: on demand (starts on its first request)")
        else:
            self._launch(m)
        return m

    def set_aside(self, name: str) -> ManagedEngine:
        """Take ``name`` out of the set; it runs on (and is still restarted if it crashes) until
        :meth:`retire` drains and stops it."""
        with self._lock:
            m = self.managed.pop(name)
            self.retiring.append(m)
            return m

    def drain(self, m: ManagedEngine) -> None:
        """``m`` gets no new requests from now on: it only finishes what it has."""
        with self._lock:
            if m.state != "stopped":
                m.state = "draining"
        self._say(f"engine {m.name}: draining ({m.in_flight} in flight)")

    def retire(self, m: ManagedEngine, keep: int = 10) -> None:
        """Stop a set-aside engine for good (its requests drained, or the deadline passed); the
        last ``keep`` retired engines stay listed."""
        pid = m.process.pid
        self._stop_engine(m)
        with self._lock:
            m.state = "retired"
            if m.process.limits.cgroup is not None:
                m.process.limits.cgroup.remove()
            self._record_pids()
            done = [r for r in self.retiring if r.state == "retired"]
            for old in done[: max(0, len(done) - keep)]:
                self.retiring.remove(old)
        self._say(f"engine {m.name}: stopped (pid {pid}); no longer configured")

    def stop_all(self, grace: float = 15.0) -> None:
        """Stop watching, then stop every engine and everything it started (SIGKILL for what is
        left of an engine's process group ``grace`` seconds after its SIGTERM)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        running = [m for m in self._all() if m.process.pid is not None]
        for m in running:
            self._say(f"engine {m.name}: stopping")
            m.wanted = False
            m.process.terminate()  # all at once, so their shutdowns overlap
        deadline = time.monotonic() + grace
        for m in running:
            m.process.stop(grace=max(0.0, deadline - time.monotonic()))
            m.state = "stopped"
            if m.process.limits.cgroup is not None:
                m.process.limits.cgroup.remove()
