"""``GET /v1/models``: public names, and for versioned models each ``name:version`` and alias."""

from __future__ import annotations

from litestar import Controller, Response, get

from gateway.errors import ModelNotFoundError
from gateway.protocol import paths
from gateway.protocol.models import ModelCard, ModelList
from gateway.routing.router import Router
from gateway.routing.table import Route


def _cards(route: Route, created: int) -> list[ModelCard]:
    if not route.versioned:
        return [ModelCard(id=route.model, created=created)]
    cards = [
        ModelCard(
            id=route.model,
            created=created,
            versions=[f"{route.model}:{v}" for v in route.versions],
            aliases={f"{route.model}:{a}": f"{route.model}:{t}" for a, t in route.aliases.items()},
        )
    ]
    cards += [ModelCard(id=f"{route.model}:{v}", created=created, parent=route.model) for v in route.versions]
    cards += [
        ModelCard(id=f"{route.model}:{a}", created=created, parent=route.model, alias_of=f"{route.model}:{t}")
        for a, t in route.aliases.items()
    ]
    return cards


class ModelsController(Controller):
    """What this gateway serves."""

    path = paths.MODELS

    @get()
    async def list_models(self, router: Router, started_at: int) -> Response[bytes]:
        """OpenAI list of models, with versions and aliases as their own entries."""
        cards = [card for route in router.table.routes for card in _cards(route, started_at)]
        return Response(
            ModelList(data=cards).model_dump_json(exclude_none=True).encode(), media_type="application/json"
        )

    @get("/{model:path}")
    async def get_model(self, model: str, router: Router, started_at: int) -> Response[bytes]:
        """One model, version or alias (names may contain ``/``); 404 ``model_not_found`` otherwise."""
        model = model.lstrip("/")
        for route in router.table.routes:
            for card in _cards(route, started_at):
                if card.id == model:
                    return Response(
                        card.model_dump_json(exclude_none=True).encode(), media_type="application/json"
                    )
        raise ModelNotFoundError(f"The model '{model}' does not exist.", param="model")
