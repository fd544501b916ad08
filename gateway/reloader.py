"""Configuration reload without restart: on SIGHUP or when the file changes.

A new route table is built and its new replicas probed *before* it is swapped in, so traffic never
sees a replica in an unknown state. Requests and streams in flight hold their replica objects and
finish where they started. An invalid file is logged and ignored: the running table stays.
Local engines are started by ``offload run`` at start-up; a reload re-routes, it does not start
or stop engines.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from gateway.config import ConfigError, load_config
from gateway.monitor import HealthMonitor
from gateway.routing.table import RouteTable
from gateway.services.dispatch import Dispatcher

_log = structlog.get_logger("offload.reload")


class ConfigReloader:
    """Reloads ``path`` into the dispatcher's route table."""

    def __init__(self, path: Path, dispatcher: Dispatcher, monitor: HealthMonitor) -> None:
        self._path = path
        self._dispatcher = dispatcher
        self._monitor = monitor
        self._stamp = self._file_stamp()
        self._lock = asyncio.Lock()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self._path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    async def reload(self) -> bool:
        """Load, validate, probe and swap. True when a new table is in place."""
        async with self._lock:
            self._stamp = self._file_stamp()
            try:
                config = load_config(self._path)
            except ConfigError as exc:
                _log.error("configuration reload rejected; keeping the running one", reason=str(exc))
                return False
            table = RouteTable.from_config(config)
            known = {(r.id, r.base_url) for r in self._dispatcher.table.replicas()}
            new = tuple(r for r in table.replicas() if (r.id, r.base_url) not in known)
            if new:
                # A replica id that now points elsewhere starts over: probe before it takes traffic.
                self._dispatcher.health.forget_ids({r.id for r in new})
                await self._monitor.probe_all(new)
            self._dispatcher.replace_table(table)
            _log.info("configuration reloaded", models=[r.model for r in table.routes])
            return True

    async def watch(self, interval: float) -> None:
        """Reload whenever the file's modification time or size changes; cancel to stop."""
        while True:
            await asyncio.sleep(interval)
            if self._file_stamp() != self._stamp:
                await self.reload()
