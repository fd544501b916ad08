"""Where the route table comes from: the configuration plus DNS answers for ``dns`` engines.

A ``dns`` engine (e.g. ``chat-v1.offload.svc.cluster.local:8000``, a Kubernetes headless service)
becomes one replica per address the name resolves to; the name is resolved again every
``interval`` seconds and the table rebuilt when the set of addresses changes. A name that does not
exist (or has no address) has no replicas; a resolver that cannot answer (a DNS server down or
timing out) changes nothing: the last answer stands until it can. Every rebuild (DNS
change or configuration reload) probes the new replicas before the table is swapped in, so no
request is routed to a replica whose health is unknown; requests in flight keep their replicas.
"""

from __future__ import annotations

import asyncio
import socket

import structlog

from gateway.config import OffloadConfig
from gateway.monitor import HealthMonitor
from gateway.routing.breaker import Breakers
from gateway.routing.router import Router
from gateway.routing.table import RouteTable

_log = structlog.get_logger("offload.discovery")


def dns_names(config: OffloadConfig) -> list[str]:
    """Every ``host:port`` the configuration discovers replicas from."""
    return sorted(
        {e.dns for m in config.models for v in m.version_configs().values() for e in v.engines if e.dns}
    )


_UNANSWERED = frozenset({socket.EAI_AGAIN, socket.EAI_FAIL})
"""Lookup failures that say nothing about the name: the resolver could not answer."""


async def resolve(name: str) -> list[str] | None:
    """The addresses ``host:port`` resolves to (sorted, unique); empty when the name does not
    resolve; None when the resolver could not answer (a temporary failure: ask again later)."""
    host, _, port = name.rpartition(":")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return None if exc.errno in _UNANSWERED else []
    except (OSError, UnicodeError):
        return []
    return sorted({str(info[4][0]) for info in infos})


class TableSource:
    """Holds the running configuration and DNS answers; rebuilds and swaps the route table."""

    def __init__(
        self, config: OffloadConfig, router: Router, breakers: Breakers, monitor: HealthMonitor
    ) -> None:
        self.config = config
        self.resolved: dict[str, list[str]] = {}
        self._router = router
        self._breakers = breakers
        self._monitor = monitor
        self._lock = asyncio.Lock()

    async def _resolve_all(self, config: OffloadConfig) -> dict[str, list[str]]:
        """Each name's addresses; the last known ones for a name the resolver could not answer for."""
        names = dns_names(config)
        answers = await asyncio.gather(*(resolve(n) for n in names))
        resolved: dict[str, list[str]] = {}
        for name, answer in zip(names, answers, strict=True):
            if answer is None:
                answer = self.resolved.get(name, [])
                _log.warning("dns lookup failed; keeping the last answer", name=name, addresses=len(answer))
            resolved[name] = answer
        return resolved

    async def rebuild(self, config: OffloadConfig | None = None) -> None:
        """Build the table for ``config`` (default: the running one) with fresh DNS answers,
        probe its new replicas, then swap it in."""
        async with self._lock:
            config = config or self.config
            resolved = await self._resolve_all(config)
            table = RouteTable.from_config(config, resolved)
            known = {(r.id, r.base_url) for r in self._router.table.replicas()}
            new = tuple(r for r in table.replicas() if (r.id, r.base_url) not in known)
            if new:
                # A replica id that now points elsewhere starts over: probe before it takes traffic.
                self._breakers.forget_ids({r.id for r in new})
                await self._monitor.probe_all(new)
            self._router.replace_table(table)
            if resolved != self.resolved:
                _log.info("replicas discovered", counts={n: len(a) for n, a in resolved.items()})
            self.config, self.resolved = config, resolved

    async def watch_dns(self, interval: float) -> None:
        """Re-resolve the DNS names on an interval; rebuild when an answer changes. Cancel to stop."""
        while True:
            await asyncio.sleep(interval)
            if await self._resolve_all(self.config) != self.resolved:
                await self.rebuild()
