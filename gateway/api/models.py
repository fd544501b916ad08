"""``GET /v1/models``: public names, and for versioned models each ``name:version`` and alias."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get

from gateway.api.asgi import record_of
from gateway.errors import ModelNotFoundError
from gateway.protocol import paths
from gateway.protocol.models import ModelList
from gateway.routing.router import Router
from gateway.routing.table import Route
from gateway.services.catalog import cards, visible


def _visible(request: Request[Any, Any, Any], router: Router) -> list[Route]:
    """The routes the request's API key may use (every route when keys are off)."""
    record = record_of(request.scope)
    return visible(router.table.routes, None if record is None else record.allowed_models)


class ModelsController(Controller):
    """What this gateway serves."""

    path = paths.MODELS

    @get()
    async def list_models(
        self, request: Request[Any, Any, Any], router: Router, started_at: int
    ) -> Response[bytes]:
        """OpenAI list of models, with versions and aliases as their own entries (only those the
        request's API key may use)."""
        listed = [card for route in _visible(request, router) for card in cards(route, started_at)]
        return Response(
            ModelList(data=listed).model_dump_json(exclude_none=True).encode(), media_type="application/json"
        )

    @get("/{model:path}")
    async def get_model(
        self, request: Request[Any, Any, Any], model: str, router: Router, started_at: int
    ) -> Response[bytes]:
        """One model, version or alias (names may contain ``/``); 404 ``model_not_found`` otherwise."""
        model = model.lstrip("/")
        for route in _visible(request, router):
            for card in cards(route, started_at):
                if card.id == model:
                    return Response(
                        card.model_dump_json(exclude_none=True).encode(), media_type="application/json"
                    )
        raise ModelNotFoundError(f"The model '{model}' does not exist.", param="model")
