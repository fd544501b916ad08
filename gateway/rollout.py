"""A configuration reload that reconciles the local engines (``offload run``): versions rolled out
by editing the file.

The desired engines are the file's (:func:`gateway.local_engines.engine_specs`); they are compared
by name and launch settings with the engines running (:func:`plan`):

* added (a new version or replica): its engine is started; the new routes go in only once every
  engine they name answers its health check, so a version never gets traffic it cannot serve
  (the breaker of a new replica starts UNKNOWN, and the swap probes it first);
* removed: it is out of the routes at the swap and gets no new requests; it finishes those in
  flight (up to ``drain_timeout`` seconds), then its engine is stopped;
* changed launch settings: replaced the same way, the new engine up and probed before the old one
  drains. The old engine still holds the file's port, so the new one runs on a free port chosen
  here and the routes follow it (``offload engines list`` shows the port); a later reload that
  leaves it unchanged keeps it there.

On-demand engines are added and removed alike but started by their first request, as always.
The reload itself does not wait for engines to load (vLLM takes a minute): that runs in the
background, and a newer reload supersedes a rollout still waiting. Until the swap the running
routes stay in force; an engine that does not come up within its ``startup_timeout`` leaves them
in force (logged), and the next reload tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import structlog

from gateway.config import OffloadConfig
from gateway.local_engines import EngineSpec, free_port, port_free, with_ports
from gateway.services.engine_control import EngineSet

_log = structlog.get_logger("offload.rollout")


class Routes(Protocol):
    """Where the routes of a configuration are put in force (:class:`gateway.discovery.TableSource`)."""

    async def rebuild(self, config: OffloadConfig) -> None:
        """Build, probe and swap in the route table of ``config``."""
        ...


@dataclass(frozen=True)
class Plan:
    """What turns the running engines into the desired ones."""

    add: tuple[EngineSpec, ...] = ()  # names not running
    replace: tuple[EngineSpec, ...] = ()  # running with other settings
    remove: tuple[str, ...] = ()  # running, no longer in the file

    def __bool__(self) -> bool:
        return bool(self.add or self.replace or self.remove)


def plan(desired: Sequence[EngineSpec], running: Mapping[str, EngineSpec]) -> Plan:
    """Compare by name, then by everything that goes into starting the engine (model directory,
    served name, launch settings). ``running``: the specs as the file wrote them."""
    names = {s.name for s in desired}
    return Plan(
        add=tuple(s for s in desired if s.name not in running),
        replace=tuple(s for s in desired if s.name in running and running[s.name] != s),
        remove=tuple(n for n in running if n not in names),
    )


class Rollout:
    """Applies reloads to the local engines, then the routes (a :class:`gateway.reloader.Reloadable`)."""

    def __init__(
        self,
        engines: EngineSet,
        routes: Routes,
        config: OffloadConfig,
        specs_of: Callable[[OffloadConfig], list[EngineSpec]],
        drain_timeout: float,
    ) -> None:
        """``specs_of``: a configuration's local engines (``engine_specs`` with the models
        directory); ``config``: the one the engines running now were started from."""
        self._engines = engines
        self._routes = routes
        self._specs_of = specs_of
        self._drain_timeout = drain_timeout
        # The running engines as the file wrote them (the port may differ from where they run).
        self._written = {s.name: s for s in specs_of(config)}
        self._ports: dict[str, int] = {}  # engines that run on another port than the file's
        self._pending: asyncio.Task[None] | None = None
        self._draining: set[asyncio.Task[int]] = set()
        # Engines to retire at the next switch (kept when a rollout is superseded before its own).
        self._to_retire: list[str] = []

    async def rebuild(self, config: OffloadConfig) -> None:
        """Start what ``config`` adds or changes; the routes and the retirements follow once the
        new engines are up (at once when nothing has to start)."""
        if self._pending is not None:
            self._pending.cancel()  # superseded: this reload compares against what it started
            with contextlib.suppress(asyncio.CancelledError):
                await self._pending
            self._pending = None
        desired = self._specs_of(config)
        steps = plan(desired, self._written)
        running = self._engines.specs()
        self._to_retire += [running[n].base_url for n in steps.remove if n in running]
        self._to_retire += [running[s.name].base_url for s in steps.replace if s.name in running]
        for name in steps.remove:
            del self._written[name]
            self._ports.pop(name, None)
        if steps:
            _log.info(
                "engines reconciled",
                add=[s.name for s in steps.add],
                replace=[s.name for s in steps.replace],
                remove=list(steps.remove),
            )
        for spec in (*steps.add, *steps.replace):
            host, port = spec.launch.host, spec.launch.port
            if not port_free(host, port):  # the engine it replaces (or one draining) still holds it
                port = free_port(host)
                _log.info(
                    "engine moved to a free port", engine=spec.name, file_port=spec.launch.port, port=port
                )
            try:
                await self._engines.add(replace(spec, launch=replace(spec.launch, port=port)))
            except Exception as exc:  # a model that cannot be prepared, a port taken meanwhile
                _log.error("engine not started; the running routes stay", engine=spec.name, reason=str(exc))
                return
            self._written[spec.name] = spec
            if port != spec.launch.port:
                self._ports[spec.name] = port
            else:
                self._ports.pop(spec.name, None)
        waiting = [s for s in desired if not s.launch.on_demand]
        routed = with_ports(config, self._ports)
        if all([await self._engines.wait_ready(s.name, 0) for s in waiting]):
            await self._switch(routed)
        else:
            self._pending = asyncio.create_task(self._when_ready(waiting, routed), name="offload-rollout")

    async def _when_ready(self, waiting: list[EngineSpec], routed: OffloadConfig) -> None:
        ready = await asyncio.gather(
            *(self._engines.wait_ready(s.name, s.launch.startup_timeout) for s in waiting)
        )
        late = [s.name for s, ok in zip(waiting, ready, strict=True) if not ok]
        if late:
            _log.error("engines did not come up; the running routes stay", engines=late)
            return
        await self._switch(routed)

    async def _switch(self, routed: OffloadConfig) -> None:
        await self._routes.rebuild(routed)  # new replicas probed first; the retired ones out
        retire, self._to_retire = self._to_retire, []
        for base_url in retire:
            task = asyncio.create_task(self._retire(base_url), name=f"offload-drain {base_url}")
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)

    async def _retire(self, base_url: str) -> int:
        left = await self._engines.retire(base_url, self._drain_timeout)
        if left:
            _log.warning("engine stopped with requests in flight (drain timeout)", engine=base_url, left=left)
        return left

    async def settled(self) -> None:
        """Wait until the rollout under way (if any) has switched routes and its engines retired."""
        if self._pending is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._pending
        while self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)

    async def close(self) -> None:
        """Cancel what is under way (at shutdown: the supervisor stops every engine itself)."""
        tasks = [t for t in (self._pending, *self._draining) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
