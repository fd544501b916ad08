"""The gateway's handle on the supervisor: :class:`gateway.services.engine_control.EngineControl`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from engines.spec import EngineSpec
from engines.supervisor import ManagedEngine, Supervisor
from engines.usage import EngineUsage, UsageMeter


class LocalEngineControl:
    """Adapts :class:`Supervisor` (threads, blocking waits) to the gateway's async world."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        # Draining engines -> set when their last request ends (begin/end run on the event loop).
        self._drained: dict[int, asyncio.Event] = {}
        self._meter = UsageMeter()

    def _find(self, base_url: str) -> ManagedEngine | None:
        """The engine at ``base_url``: one in the set first, else one set aside (still draining)."""
        sup = self._supervisor
        for m in (*sup.managed.values(), *reversed(sup.retiring)):
            if m.process.spec.base_url == base_url:
                return m
        return None

    def can_start(self, base_url: str) -> bool:
        m = self._find(base_url)
        return m is not None and m.on_demand and m.state in ("stopped", "stopping", "starting")

    async def ensure_running(self, base_url: str, timeout: float) -> bool:
        m = self._find(base_url)
        if m is None:
            return False
        return await asyncio.to_thread(self._supervisor.ensure_running, m.name, timeout)

    def begin(self, base_url: str) -> None:
        m = self._find(base_url)
        if m is not None:
            m.in_flight += 1
            m.last_activity = time.monotonic()

    def end(self, base_url: str) -> None:
        m = self._find(base_url)
        if m is not None:
            m.in_flight = max(0, m.in_flight - 1)
            m.last_activity = time.monotonic()
            drained = self._drained.get(id(m))
            if drained is not None and m.in_flight == 0:
                drained.set()

    def describe(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        rows = []
        for m in (*self._supervisor.managed.values(), *self._supervisor.retiring):
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
                    "url": spec.base_url,
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

    def usage(self) -> dict[str, EngineUsage]:
        """CPU, memory and GPU of each engine now, by base URL (blocking: it reads /proc and NVML)."""
        sup = self._supervisor  # an engine in the set wins over one of the same URL set aside
        groups = {m.process.spec.base_url: m.process.pid for m in (*sup.retiring, *sup.managed.values())}
        return self._meter.sample(groups)

    def log_tail(self, name: str, lines: int) -> list[str]:
        return self._supervisor.managed[name].process.log_tail(lines)

    def specs(self) -> dict[str, EngineSpec]:
        return {name: m.process.spec for name, m in self._supervisor.managed.items()}

    async def add(self, spec: EngineSpec) -> None:
        await asyncio.to_thread(self._supervisor.add, spec)

    async def wait_ready(self, name: str, timeout: float) -> bool:
        m = self._supervisor.managed.get(name)
        if m is None:
            return False
        # In short waits: a cancelled wait (a superseded rollout) frees its worker thread soon.
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(
            m.ready_event.wait, min(1.0, max(0.0, deadline - time.monotonic()))
        ):
            if time.monotonic() >= deadline or self._supervisor.managed.get(name) is not m:
                return False
        return True

    async def retire(self, base_url: str, drain_timeout: float) -> int:
        sup = self._supervisor
        aside = (m for m in sup.retiring if m.state != "retired")
        m = next((m for m in aside if m.process.spec.base_url == base_url), None)
        if m is None:
            m = next((m for m in sup.managed.values() if m.process.spec.base_url == base_url), None)
            if m is None:
                return 0
            sup.set_aside(m.name)
        sup.drain(m)
        drained = self._drained[id(m)] = asyncio.Event()
        try:
            if m.in_flight:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(drained.wait(), drain_timeout)
        finally:
            del self._drained[id(m)]
        left = m.in_flight
        await asyncio.to_thread(sup.retire, m)
        return left
