"""The route table: public model name -> versions -> replicas, built from the configuration."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.config import OffloadConfig, PolicyName, Task


@dataclass(frozen=True, slots=True)
class Replica:
    """One engine endpoint. ``id`` is safe to show to clients; ``base_url`` is not."""

    id: str
    model: str
    version: str
    base_url: str
    served_name: str


@dataclass(frozen=True, slots=True)
class Version:
    """One version of a model and its replicas. An unversioned model has one, named ``""``."""

    model: str
    name: str
    replicas: tuple[Replica, ...]
    weight: float = 1.0
    shadow: float = 0.0
    fallback: str | None = None
    policy: PolicyName = "least_outstanding"
    max_in_flight: int | None = None
    """Requests each replica takes at once (more wait at the gateway); None: no limit."""
    resume: bool = False
    """Whether a stream broken mid-answer is continued on another replica of this version."""

    @property
    def public_id(self) -> str:
        """What responses report as ``model``: ``chat:v2``, or just ``chat`` when unversioned."""
        return f"{self.model}:{self.name}" if self.name else self.model

    @property
    def label(self) -> str:
        """The metric label for this version (``-`` when unversioned)."""
        return self.name or "-"


@dataclass(frozen=True, slots=True)
class Route:
    """Where requests for one public model name go."""

    model: str
    task: Task
    versions: dict[str, Version]
    aliases: dict[str, str] = field(default_factory=dict)
    session_header: str = "x-session-id"
    prefix_chars: int = 2048

    @property
    def versioned(self) -> bool:
        """False for a model configured with ``engine``/``engines`` only."""
        return "" not in self.versions

    @property
    def replicas(self) -> tuple[Replica, ...]:
        """Every replica of every version."""
        return tuple(r for v in self.versions.values() for r in v.replicas)


def _first(*choices: bool | None) -> bool:
    """The first setting given (the last is the default)."""
    return next(c for c in choices if c is not None)


class RouteTable:
    """Immutable lookup built from the configuration (a reload builds a new table)."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self._routes = routes

    @classmethod
    def from_config(
        cls, config: OffloadConfig, resolved: Mapping[str, Sequence[str]] | None = None
    ) -> RouteTable:
        """One route per configured model, one replica per engine (per address for ``dns`` engines,
        from ``resolved``: ``"host:port"`` -> addresses)."""
        routes: dict[str, Route] = {}
        for m in config.models:
            versions: dict[str, Version] = {}
            for name, vc in m.version_configs().items():
                stem = f"{m.name}-{name}" if name else m.name
                replicas: list[Replica] = []
                for i, e in enumerate(vc.engines):
                    target = e.dns_target
                    if target is None:
                        replicas.append(Replica(f"{stem}-{i}", m.name, name, e.base_url, m.served_name(e)))
                        continue
                    for address in (resolved or {}).get(e.dns or "", ()):
                        # The id shows in headers and metrics: a digest, never the pod address.
                        tag = hashlib.blake2b(address.encode(), digest_size=3).hexdigest()
                        host = f"[{address}]" if ":" in address else address
                        replicas.append(
                            Replica(
                                f"{stem}-{i}-{tag}",
                                m.name,
                                name,
                                f"http://{host}:{target[1]}",
                                m.served_name(e),
                            )
                        )
                versions[name] = Version(
                    model=m.name,
                    name=name,
                    replicas=tuple(replicas),
                    weight=vc.weight,
                    shadow=vc.shadow,
                    fallback=vc.fallback,
                    policy=vc.policy or m.policy,
                    max_in_flight=m.replica_limit(vc),
                    resume=_first(vc.resume, m.resume, len(replicas) >= 2),
                )
            routes[m.name] = Route(
                model=m.name,
                task=m.task,
                versions=versions,
                aliases=dict(m.aliases),
                session_header=m.session_header.lower(),
                prefix_chars=m.prefix_chars,
            )
        return cls(routes)

    def get(self, model: str) -> Route | None:
        """The route for public name ``model``, or None when it is not served."""
        return self._routes.get(model)

    @property
    def routes(self) -> tuple[Route, ...]:
        """All routes, in configuration order."""
        return tuple(self._routes.values())

    def replicas(self) -> tuple[Replica, ...]:
        """Every replica of every route."""
        return tuple(r for route in self._routes.values() for r in route.replicas)
