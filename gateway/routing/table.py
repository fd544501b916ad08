"""The route table: public model name -> the replicas that serve it."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import OffloadConfig, Task


@dataclass(frozen=True, slots=True)
class Replica:
    """One engine endpoint serving one model. ``id`` is safe to show; ``base_url`` is not."""

    id: str
    model: str
    base_url: str
    served_name: str


@dataclass(frozen=True, slots=True)
class Route:
    """Where requests for one public model name go."""

    model: str
    task: Task
    replicas: tuple[Replica, ...]


class RouteTable:
    """Immutable lookup built from the configuration."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self._routes = routes

    @classmethod
    def from_config(cls, config: OffloadConfig) -> RouteTable:
        """One route per configured model, one replica per engine."""
        routes: dict[str, Route] = {}
        for m in config.models:
            replica = Replica(
                id=f"{m.name}-0",
                model=m.name,
                base_url=m.engine.base_url,
                served_name=m.served_name,
            )
            routes[m.name] = Route(model=m.name, task=m.task, replicas=(replica,))
        return cls(routes)

    def get(self, model: str) -> Route | None:
        """The route for ``model``, or None when it is not served."""
        return self._routes.get(model)

    @property
    def routes(self) -> tuple[Route, ...]:
        """All routes, in configuration order."""
        return tuple(self._routes.values())

    def replicas(self) -> tuple[Replica, ...]:
        """Every replica of every route."""
        return tuple(r for route in self._routes.values() for r in route.replicas)
