"""Shared fixtures for unit tests: a small configuration, its route table and the routing pieces over it
(breakers, loads, router, leases, failover), wired as :func:`gateway.app.create_app` wires them."""

from __future__ import annotations

import pytest

from gateway.config import EngineConfig, ModelConfig, OffloadConfig
from gateway.metrics import Metrics
from gateway.record import RequestRecord
from gateway.routing.breaker import Breakers, State
from gateway.routing.load import Loads
from gateway.routing.router import Router
from gateway.routing.table import RouteTable
from gateway.services.failover import Failover
from gateway.services.leases import Leases

# Loopback addresses nothing listens on: unit tests never connect to them, and never name any other.
CHAT_URL = "http://127.0.0.1:9"
EMBED_URL = "http://127.0.0.1:19"
RETRY_AFTER = 7
MAX_RETRIES = 2


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
def breakers(table: RouteTable) -> Breakers:
    """Every replica UP."""
    breakers = Breakers()
    for replica in table.replicas():
        breakers.mark(replica.id, State.UP)
    return breakers


@pytest.fixture
def loads() -> Loads:
    return Loads()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def router(table: RouteTable, breakers: Breakers, loads: Loads) -> Router:
    return Router(table, breakers, loads, retry_after=RETRY_AFTER)


@pytest.fixture
def leases(breakers: Breakers, loads: Loads) -> Leases:
    """Without engine control (``offload serve``)."""
    return Leases(breakers, loads, None, retry_after=RETRY_AFTER)


@pytest.fixture
def failover(router: Router, leases: Leases, metrics: Metrics) -> Failover:
    """Without on-demand engines."""
    return Failover(router, leases, metrics, None, max_retries=MAX_RETRIES, deadline=600.0)


@pytest.fixture
def record() -> RequestRecord:
    return RequestRecord(request_id="req-1", route="/v1/test")
