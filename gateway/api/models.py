"""``GET /v1/models``."""

from __future__ import annotations

from litestar import Controller, Response, get

from gateway.protocol.models import ModelCard, ModelList
from gateway.routing.table import RouteTable
from gateway.services.errors import ModelNotFoundError


class ModelsController(Controller):
    """The public model names this gateway serves."""

    path = "/v1/models"

    @get()
    async def list_models(self, route_table: RouteTable, started_at: int) -> Response[bytes]:
        """OpenAI list of models."""
        cards = [ModelCard(id=r.model, created=started_at) for r in route_table.routes]
        return Response(ModelList(data=cards).model_dump_json().encode(), media_type="application/json")

    @get("/{model:str}")
    async def get_model(self, model: str, route_table: RouteTable, started_at: int) -> Response[bytes]:
        """One model, or 404 ``model_not_found``."""
        if route_table.get(model) is None:
            raise ModelNotFoundError(f"The model '{model}' does not exist.", param="model")
        card = ModelCard(id=model, created=started_at)
        return Response(card.model_dump_json().encode(), media_type="application/json")
