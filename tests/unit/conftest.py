"""Shared fixtures for unit tests: a small configuration, its route table and a dispatcher."""

from __future__ import annotations

import pytest

from gateway.config import EngineConfig, ModelConfig, OffloadConfig
from gateway.metrics import Metrics
from gateway.routing.health import HealthRegistry, State
from gateway.routing.table import RouteTable
from gateway.record import RequestRecord
from gateway.services.dispatch import Dispatcher

CHAT_URL = "http://10.1.2.3:9001"
EMBED_URL = "http://10.1.2.3:9002"
RETRY_AFTER = 7


@pytest.fixture
def config() -> OffloadConfig:
    """One chat model served under another engine name, one embeddings model."""
    return OffloadConfig(
        models=(
            ModelConfig(
                name="chat", task="chat", engine=EngineConfig(url=CHAT_URL, served_name="engine-chat")
            ),
            ModelConfig(name="embed", task="embeddings", engine=EngineConfig(url=EMBED_URL + "/v1")),
        )
    )


@pytest.fixture
def table(config: OffloadConfig) -> RouteTable:
    return RouteTable.from_config(config)


@pytest.fixture
def health(table: RouteTable) -> HealthRegistry:
    """Every replica UP."""
    registry = HealthRegistry()
    for replica in table.replicas():
        registry.mark(replica.id, State.UP)
    return registry


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def dispatcher(table: RouteTable, health: HealthRegistry, metrics: Metrics) -> Dispatcher:
    return Dispatcher(table, health, metrics, retry_after=RETRY_AFTER)


@pytest.fixture
def record() -> RequestRecord:
    return RequestRecord(request_id="req-1", route="/v1/test")
