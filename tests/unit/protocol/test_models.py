from __future__ import annotations

import orjson

from gateway.protocol.models import ModelCard, ModelList


def test_model_list_has_the_openai_list_shape() -> None:
    body = orjson.loads(
        ModelList(data=[ModelCard(id="chat", created=123)]).model_dump_json(exclude_none=True)
    )

    assert body == {
        "object": "list",
        "data": [{"id": "chat", "object": "model", "created": 123, "owned_by": "offload"}],
    }


def test_offload_additions_appear_only_when_set() -> None:
    card = ModelCard(id="chat:stable", created=1, parent="chat", alias_of="chat:v1")

    body = orjson.loads(card.model_dump_json(exclude_none=True))

    assert body["parent"] == "chat"
    assert body["alias_of"] == "chat:v1"
    assert "versions" not in body and "aliases" not in body
