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
from gateway.discovery import TableSource

_log = structlog.get_logger("offload.reload")


class ConfigReloader:
    """Reloads ``path`` into the router's route table (through the table source)."""

    def __init__(self, path: Path, source: TableSource) -> None:
        self._path = path
        self._source = source
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
            await self._source.rebuild(config)
            _log.info("configuration reloaded", models=[m.name for m in config.models])
            return True

    async def watch(self, interval: float) -> None:
        """Reload whenever the file's modification time or size changes; cancel to stop."""
        while True:
            await asyncio.sleep(interval)
            if self._file_stamp() != self._stamp:
                await self.reload()
