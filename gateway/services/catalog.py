"""What ``/v1/models`` (and the gRPC door's ``ListModels``) list: public names, and for versioned
models each ``name:version`` and alias, limited to what the request's API key may use."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.protocol.models import ModelCard
from gateway.routing.table import Route


def cards(route: Route, created: int) -> list[ModelCard]:
    """The model cards of one route: the public model, then its versions and aliases."""
    if not route.versioned:
        return [ModelCard(id=route.model, created=created)]
    listed = [
        ModelCard(
            id=route.model,
            created=created,
            versions=[f"{route.model}:{v}" for v in route.versions],
            aliases={f"{route.model}:{a}": f"{route.model}:{t}" for a, t in route.aliases.items()},
        )
    ]
    listed += [
        ModelCard(id=v.public_id, created=created, parent=route.model, weight=v.weight)
        for v in route.versions.values()
    ]
    listed += [
        ModelCard(id=f"{route.model}:{a}", created=created, parent=route.model, alias_of=f"{route.model}:{t}")
        for a, t in route.aliases.items()
    ]
    return listed


def visible(routes: Iterable[Route], allowed: frozenset[str] | None) -> list[Route]:
    """The routes a key allowed ``allowed`` models may use (every route when None: keys off)."""
    return [r for r in routes if allowed is None or r.model in allowed]
