from __future__ import annotations

from gateway.config import EngineConfig, LocalEngine, ModelConfig, OffloadConfig
from gateway.routing.table import RouteTable
from tests.unit.conftest import CHAT_URL, EMBED_URL


def test_from_config_builds_one_route_with_one_replica_per_model(table: RouteTable) -> None:
    chat = table.get("chat")
    embed = table.get("embed")

    assert chat is not None and embed is not None
    assert chat.task == "chat"
    assert embed.task == "embeddings"
    assert [(r.id, r.model, r.base_url, r.served_name) for r in chat.replicas] == [
        ("chat-0", "chat", CHAT_URL, "engine-chat")
    ]
    assert [(r.id, r.base_url, r.served_name) for r in embed.replicas] == [("embed-0", EMBED_URL, "embed")]


def test_local_engines_are_reached_on_their_host_and_port() -> None:
    config = OffloadConfig(
        models=(
            ModelConfig(name="m", task="chat", engine=EngineConfig(local=LocalEngine(model="m", port=8123))),
        )
    )

    (replica,) = RouteTable.from_config(config).replicas()

    assert replica.base_url == "http://127.0.0.1:8123"


def test_unknown_model_has_no_route(table: RouteTable) -> None:
    assert table.get("gpt-4") is None
    assert table.get("engine-chat") is None  # engine-side names are not public


def test_routes_keep_configuration_order(config: OffloadConfig) -> None:
    reversed_config = OffloadConfig(models=tuple(reversed(config.models)))

    assert [r.model for r in RouteTable.from_config(config).routes] == ["chat", "embed"]
    assert [r.model for r in RouteTable.from_config(reversed_config).routes] == ["embed", "chat"]


def test_replicas_lists_every_replica_of_every_route(table: RouteTable) -> None:
    assert [r.id for r in table.replicas()] == ["chat-0", "embed-0"]
