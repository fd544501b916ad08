"""Configuration reload without restart: on SIGHUP or when the file changes.

The keys file the configuration names is watched too: a revoked key is refused from the next
check on (``reload.watch_interval``). A new route table is built and its new replicas probed
*before* it is swapped in, so traffic never sees a replica in an unknown state. Requests and
streams in flight hold their replica objects and finish where they started. An invalid file is
logged and ignored: the running table stays. With ``offload run`` a reload also reconciles the
local engines (starts what the file adds, drains and stops what it removes): :mod:`gateway.rollout`.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Protocol

import structlog

from gateway.config import ConfigError, OffloadConfig, keys_file_of, load_config

_log = structlog.get_logger("offload.reload")


class Reloadable(Protocol):
    """What a reload is applied to: the route table's source, the key ring..."""

    async def rebuild(self, config: OffloadConfig) -> None:
        """Put ``config`` in force (it has been validated)."""
        ...


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class ConfigReloader:
    """Reloads ``path`` (and the keys file it names) into ``target``."""

    def __init__(self, path: Path, target: Reloadable, keys_file: Path | None = None) -> None:
        self._path = path
        self._source = target
        self._keys_file = keys_file
        self._stamp = self._file_stamp()
        self._lock = asyncio.Lock()

    def _file_stamp(self) -> tuple[tuple[int, int] | None, ...]:
        """Modification time and size of each watched file (None: unreadable)."""
        paths = (self._path,) if self._keys_file is None else (self._path, self._keys_file)
        return tuple(_stamp(p) for p in paths)

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
            keys_file = keys_file_of(config, self._path)
            if keys_file != self._keys_file:  # a keys file named, renamed or dropped: watch that one
                self._keys_file = keys_file
                self._stamp = self._file_stamp()
            _log.info("configuration reloaded", models=[m.name for m in config.models])
            return True

    async def watch(self, interval: float) -> None:
        """Reload whenever a watched file's modification time or size changes; cancel to stop."""
        while True:
            await asyncio.sleep(interval)
            if self._file_stamp() != self._stamp:
                await self.reload()


_hangup_noted = False


def hold_hangups() -> None:
    """From here until the app installs its own SIGHUP handler, a SIGHUP is noted rather than fatal
    (its default action ends the process), and one that waited blocked comes through now: a worker
    pool starts its workers with SIGHUP blocked. The app reloads once it serves if one came
    (:func:`take_hangup`): a reload asked while the gateway starts is done, not lost or fatal."""
    signal.signal(signal.SIGHUP, _note_hangup)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def _note_hangup(signum: int, frame: object) -> None:
    global _hangup_noted
    _hangup_noted = True


def take_hangup() -> bool:
    """Whether a SIGHUP was noted since :func:`hold_hangups` (and forget it)."""
    global _hangup_noted
    noted, _hangup_noted = _hangup_noted, False
    return noted
