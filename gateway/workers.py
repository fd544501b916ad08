"""Several gateway processes serving one port: ``server.workers`` (``--workers``).

One Python process relays on one core, and the engines of a GPU node emit more tokens than one
core relays. With ``workers`` above 1, ``offload serve`` becomes a small pool process that binds the
listening sockets and starts that many workers, each a whole gateway (``python -m gateway serve``)
handed its sockets as inherited descriptors:

* TCP: one socket per worker, all bound to the port with ``SO_REUSEPORT``, so the kernel spreads
  new connections evenly (one shared socket lets whichever worker wakes first take a whole burst);
  the Unix socket (``server.uds``): one, accepted from by all;
* a private Unix socket per worker, in a directory only this user can enter, through which the
  worker answering ``/metrics`` collects the others' figures (gateway/worker_metrics.py).

The pool keeps its copies of the sockets, so a worker that dies is replaced on the same sockets
without refusing a connection (those that arrive meanwhile wait in its queue), after a pause that
grows while it keeps dying young. SIGTERM and SIGINT are passed to every worker, which drains as a
single gateway does (gateway/drain.py); the pool closes its copies at once, so the listeners close
when the workers close theirs, and it kills the workers still running past the drain's own time.
SIGHUP (reload) is passed on too; each worker also watches the configuration file itself.

Each worker routes, probes engines, keeps its breakers and counts key limits on its own (per
worker unless ``limits.redis_url`` shares them). The workers run in a process group of their own,
so a Ctrl-C reaches them once, through the pool; a worker whose pool is gone (killed) drains and
stops by itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from gateway.serving import bind_tcp, bind_unix, unix_listener
from gateway.settings import Settings

_log = structlog.get_logger("offload.workers")
_ENV = "OFFLOAD_INTERNAL_WORKER"  # how the pool hands a worker its slot (not a setting)
_YOUNG_S = 5.0  # a worker that exits sooner than this after its start died young
_MAX_PAUSE_S = 30.0
_KILL_MARGIN_S = 10.0  # past the drain's grace and timeout, the pool kills what still runs
_PARENT_CHECK_S = 1.0


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """What the pool hands one worker: its number, its listening sockets (inherited descriptors) and
    the private sockets of the other workers."""

    index: int
    fds: tuple[int, ...]
    peers: tuple[Path, ...]

    @classmethod
    def from_env(cls) -> WorkerSlot | None:
        """The slot of this process when the pool started it, else None."""
        raw = os.environ.get(_ENV)
        if not raw:
            return None
        data = json.loads(raw)
        return cls(int(data["index"]), tuple(data["fds"]), tuple(Path(p) for p in data["peers"]))

    def to_env(self) -> str:
        """The value of the environment variable that passes this slot to the worker."""
        return json.dumps({"index": self.index, "fds": list(self.fds), "peers": [str(p) for p in self.peers]})

    def sockets(self) -> list[socket.socket]:
        """The listening sockets handed to this worker."""
        return [socket.socket(fileno=fd) for fd in self.fds]


def stop_with_parent() -> None:
    """In a worker: drain and stop (SIGTERM to itself) once the pool that started it is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_CHECK_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="offload-parent-watch", daemon=True).start()


@dataclass(slots=True)
class _Worker:
    slot: WorkerSlot
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    young_deaths: int = 0
    restart_at: float | None = None


class WorkerPool:
    """The pool process: binds the sockets, starts ``count`` workers, replaces one that dies,
    passes signals on, and returns when every worker has stopped."""

    def __init__(self, settings: Settings, count: int) -> None:
        self._settings = settings
        self._count = count
        self._workers: list[_Worker] = []
        self._sockets: list[socket.socket] = []
        self._stopping_since: float | None = None

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT has stopped every worker; 0 when each stopped cleanly."""
        with self._bound() as env:
            wake_r, wake_w = os.pipe()
            os.set_blocking(wake_r, False)
            os.set_blocking(wake_w, False)
            previous = signal.set_wakeup_fd(wake_w)
            handlers = {s: signal.signal(s, _noted) for s in _HANDLED}
            try:
                for worker in self._workers:
                    self._start(worker, env)
                _log.info(
                    "workers started",
                    workers=self._count,
                    pids=[w.process.pid for w in self._workers if w.process],
                )
                return self._supervise(wake_r, env)
            finally:
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)
                signal.set_wakeup_fd(previous)
                os.close(wake_r)
                os.close(wake_w)

    @contextlib.contextmanager
    def _bound(self) -> Iterator[dict[str, str]]:
        server = self._settings.server
        with contextlib.ExitStack() as stack:
            private = Path(tempfile.mkdtemp(prefix="offload-workers-"))  # mode 0700: this user only
            stack.callback(shutil.rmtree, private, ignore_errors=True)
            stack.callback(self._close_sockets)

            def kept(sock: socket.socket) -> socket.socket:
                self._sockets.append(sock)  # closed by _close_sockets, whichever bind fails next
                return sock

            port = server.port
            tcp: list[socket.socket] = []
            if server.tcp:
                for _ in range(self._count):
                    tcp.append(kept(bind_tcp(server.host, port, reuse_port=True)))
                    port = tcp[0].getsockname()[1]  # (port 0: the one the first socket got)
            shared = [] if server.uds is None else [kept(stack.enter_context(unix_listener(server.uds)))]
            own = [kept(bind_unix(private / f"worker-{i}.sock")) for i in range(self._count)]
            for i in range(self._count):
                fds = [*([tcp[i].fileno()] if tcp else []), *(s.fileno() for s in shared), own[i].fileno()]
                peers = tuple(private / f"worker-{j}.sock" for j in range(self._count) if j != i)
                self._workers.append(_Worker(WorkerSlot(i, tuple(fds), peers)))
            env = {
                "OFFLOAD_SERVER__HOST": server.host,
                "OFFLOAD_SERVER__PORT": str(port),
                "OFFLOAD_SERVER__WORKERS": str(self._count),
            }
            if self._settings.config is not None:
                env["OFFLOAD_CONFIG"] = str(self._settings.config)
            yield env

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []

    def _start(self, worker: _Worker, env: dict[str, str]) -> None:
        # The worker starts with SIGHUP blocked (a signal mask is inherited): a reload passed on
        # while it starts waits instead of killing it, until it notes them (reloader.hold_hangups).
        # The pool's own SIGHUP meanwhile is held as well, and handled when the mask is restored.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            worker.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve"],
                env={**os.environ, **env, _ENV: worker.slot.to_env()},
                pass_fds=worker.slot.fds,
                process_group=0,  # a terminal's Ctrl-C reaches the pool, which passes it on once
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        worker.started = time.monotonic()
        worker.restart_at = None

    def _supervise(self, wake_r: int, env: dict[str, str]) -> int:
        clean = True
        while True:
            select.select([wake_r], [], [], self._next_wait())
            with contextlib.suppress(BlockingIOError):
                for signum in os.read(wake_r, 512):
                    self._on_signal(signum)
            now = time.monotonic()
            for worker in self._workers:
                process = worker.process
                if process is not None and process.poll() is not None:
                    worker.process = None
                    if self._stopping_since is None:
                        self._schedule_restart(worker, process, now)
                    elif process.returncode != 0:
                        clean = False  # (killed past the drain, or failed while draining)
                if (
                    self._stopping_since is None
                    and worker.restart_at is not None
                    and now >= worker.restart_at
                ):
                    self._start(worker, env)
                    _log.info(
                        "worker replaced",
                        worker=worker.slot.index,
                        pid=worker.process.pid if worker.process else None,
                    )
            if self._stopping_since is not None:
                running = [w.process for w in self._workers if w.process is not None]
                if not running:
                    return 0 if clean else 1
                if now - self._stopping_since > self._stop_limit():
                    _log.warning(
                        "workers still running past the drain: killed", pids=[p.pid for p in running]
                    )
                    for process in running:
                        with contextlib.suppress(ProcessLookupError):
                            process.kill()

    def _next_wait(self) -> float:
        pending = [w.restart_at for w in self._workers if w.restart_at is not None]
        wait = 1.0 if self._stopping_since is not None else 5.0  # (SIGCHLD wakes it sooner)
        if pending:
            wait = min(wait, max(0.0, min(pending) - time.monotonic()))
        return wait

    def _schedule_restart(self, worker: _Worker, process: subprocess.Popen[bytes], now: float) -> None:
        young = now - worker.started < _YOUNG_S
        worker.young_deaths = worker.young_deaths + 1 if young else 0
        pause = min(_MAX_PAUSE_S, 0.5 * 2 ** (worker.young_deaths - 1)) if young else 0.0
        worker.restart_at = now + pause
        _log.error(
            "worker exited; replacing it",
            worker=worker.slot.index,
            pid=process.pid,
            exit_code=process.returncode,
            pause_s=pause,
        )

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            if self._stopping_since is None:
                self._stopping_since = time.monotonic()
                _log.info("stopping workers", signal=signal.Signals(signum).name)
                # The workers hold the listeners now: each closes its own when its drain says so.
                self._close_sockets()
            self._send(signum)  # (a second one: the workers stop at once)
        elif signum == signal.SIGHUP:
            self._send(signum)

    def _send(self, signum: int) -> None:
        for worker in self._workers:
            if worker.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)

    def _stop_limit(self) -> float:
        server = self._settings.server
        return server.drain_grace + server.drain_timeout + _KILL_MARGIN_S


_HANDLED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _noted(signum: int, frame: object) -> None:
    """The signal's number reaches the pool through the wakeup descriptor; nothing to do here."""
