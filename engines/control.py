"""The gateway's handle on the supervisor: :class:`gateway.services.engine_control.EngineControl`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from engines.supervisor import ManagedEngine, Supervisor


class LocalEngineControl:
    """Adapts :class:`Supervisor` (threads, blocking waits) to the gateway's async world."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._by_url: dict[str, ManagedEngine] = {
            m.process.spec.base_url: m for m in supervisor.managed.values()
        }

    def can_start(self, base_url: str) -> bool:
        m = self._by_url.get(base_url)
        return m is not None and m.on_demand and m.state in ("stopped", "stopping", "starting")

    async def ensure_running(self, base_url: str, timeout: float) -> bool:
        m = self._by_url.get(base_url)
        if m is None:
            return False
        return await asyncio.to_thread(self._supervisor.ensure_running, m.name, timeout)

    def begin(self, base_url: str) -> None:
        m = self._by_url.get(base_url)
        if m is not None:
            m.in_flight += 1
            m.last_activity = time.monotonic()

    def end(self, base_url: str) -> None:
        m = self._by_url.get(base_url)
        if m is not None:
            m.in_flight = max(0, m.in_flight - 1)
            m.last_activity = time.monotonic()

    def describe(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        rows = []
        for m in self._supervisor.managed.values():
            spec = m.process.spec
            rows.append(
                {
                    "name": m.name,
                    "state": m.state,
                    "task": spec.task,
                    "served_name": spec.served_name,
                    "model": str(spec.model_dir),
                    "pid": m.process.pid,
                    "port": spec.launch.port,
                    "uptime_s": round(now - m.ready_since, 1) if m.ready_since is not None else None,
                    "restarts": m.restarts,
                    "in_flight": m.in_flight,
                    "last_exit": m.last_exit,
                    "on_demand": m.on_demand,
                    "memory_limit": m.process.limits.memory_mechanism,
                    "log": str(m.process.log_path),
                }
            )
        return rows

    async def act(self, name: str, action: str) -> None:
        if name not in self._supervisor.managed:
            raise KeyError(name)
        method = {
            "start": self._supervisor.start,
            "stop": self._supervisor.stop,
            "restart": self._supervisor.restart,
        }[action]
        await asyncio.to_thread(method, name)

    def log_tail(self, name: str, lines: int) -> list[str]:
        return self._supervisor.managed[name].process.log_tail(lines)
