"""Owns the local engines of a configuration: prepares their models, starts them, waits, stops them."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

from engines.models import PREPARERS
from engines.process import EngineProcess, EngineStartError
from engines.spec import EngineSpec
from gateway.config import OffloadConfig

__all__ = ["EngineStartError", "Supervisor"]


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class Supervisor:
    """The local engines of one configuration (engines given by URL are not ours to run)."""

    def __init__(
        self, config: OffloadConfig, models_dir: Path, logs_dir: Path, out: TextIO = sys.stdout
    ) -> None:
        self._models_dir = models_dir
        self._out = out
        self._packaged: list[str] = []
        self.engines: list[EngineProcess] = []
        for model in config.models:
            locals_ = model.local_engines()
            for version, index, local in locals_:
                if local.model in PREPARERS:
                    self._packaged.append(local.model)
                    model_dir = models_dir / local.model
                else:
                    model_dir = Path(local.model).expanduser()
                # Engine names: smollm2, chat:v1, chat:v1#1 (second replica of v1).
                name = f"{model.name}:{version}" if version else model.name
                if index or sum(1 for v, _, _ in locals_ if v == version) > 1:
                    name += f"#{index}"
                served = next(e for e in model.version_configs()[version].engines if e.local is local)
                spec = EngineSpec(name, model.task, model_dir, model.served_name(served), local)
                self.engines.append(EngineProcess(spec, logs_dir / f"{name.replace(':', '-').replace('#', '-')}.log"))

    def _say(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def prepare_models(self) -> None:
        """Prepare the packaged models the engines need (in a subprocess: it imports torch)."""
        for engine in self.engines:
            if engine.spec.engine.model not in PREPARERS and not engine.spec.model_dir.is_dir():
                raise EngineStartError(
                    f"model directory {engine.spec.model_dir} for {engine.spec.name} does not exist"
                )
        names = sorted(set(self._packaged))
        if not names:
            return
        cmd = [sys.executable, "-m", "engines.models", "prepare", *names, "--models-dir", str(self._models_dir)]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise EngineStartError("model preparation failed (see above)")

    def start_all(self) -> None:
        """Start every local engine (they load in parallel)."""
        for engine in self.engines:
            e = engine.spec.engine
            if not _port_free(e.host, e.port):
                raise EngineStartError(
                    f"port {e.port} for engine {engine.spec.name} is already in use "
                    "(another Offload still running?)"
                )
        for engine in self.engines:
            engine.start()
            self._say(f"engine {engine.spec.name}: starting (pid {engine.pid}, log {engine.log_path})")

    def wait_all(self, poll: float = 1.0, report_every: float = 10.0) -> None:
        """Block until every engine is healthy, printing progress; raise if one fails."""
        pending = list(self.engines)
        started = time.monotonic()
        last_report = started
        while pending:
            for engine in list(pending):
                if engine.check_started():
                    pending.remove(engine)
                    self._say(f"engine {engine.spec.name}: ready at {engine.spec.base_url} "
                              f"({time.monotonic() - started:.0f} s)")
            if pending and time.monotonic() - last_report >= report_every:
                last_report = time.monotonic()
                for engine in pending:
                    tail = engine.log_tail(1)
                    hint = f" - {tail[0][-100:]}" if tail else ""
                    self._say(f"engine {engine.spec.name}: loading ({last_report - started:.0f} s){hint}")
            if pending:
                time.sleep(poll)

    def stop_all(self) -> None:
        """Stop every engine and everything it started."""
        running = [e for e in self.engines if e.pid is not None]
        for engine in running:
            self._say(f"engine {engine.spec.name}: stopping")
            engine.terminate()  # all at once, so their shutdowns overlap
        for engine in running:
            engine.stop()
