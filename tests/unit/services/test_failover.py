"""Failover: which failures are retried, the routing decision noted on the record, and running an
engine call on another replica when the first one failed before anything reached the client."""

from __future__ import annotations

import pytest

from gateway.config import EngineConfig, ModelConfig, OffloadConfig, parse_config
from gateway.errors import (
    ClientDisconnected,
    EngineConnectError,
    EngineError,
    EngineStatusError,
    EngineTimeoutError,
    EngineUnavailableError,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
)
from gateway.metrics import Metrics
from gateway.record import RequestRecord
from gateway.routing.breaker import Breakers, State
from gateway.routing.router import Router
from gateway.routing.table import Replica, RouteTable
from gateway.services.failover import Failover, resolve, retryable
from tests.unit.conftest import MAX_RETRIES, RETRY_AFTER
from tests.unit.fakes import Wiring, wire
from tests.unit.samples import metric_total

# --- retryable ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (EngineConnectError("unreachable"), True),
        (EngineError("the connection broke before the answer"), True),
        (EngineStatusError(502, "failed"), True),
        (EngineStatusError(503, "busy"), True),
        (EngineStatusError(400, "bad request"), False),
        (EngineStatusError(429, "slow down"), False),
        (EngineStatusError(500, "internal"), False),
        (EngineTimeoutError("slow"), False),
        (EngineUnavailableError("no replica"), False),
        (InvalidRequestError("bad"), False),
        (ClientDisconnected("gone"), False),
        (GatewayError("bug"), False),
    ],
)
def test_retryable_only_for_failures_another_replica_could_fix(error: GatewayError, expected: bool) -> None:
    assert retryable(error) is expected


# --- resolve: the routing decision, noted and counted ---------------------------------------------


def test_resolve_notes_the_model_and_counts_it_in_flight(
    router: Router, record: RequestRecord, metrics: Metrics
) -> None:
    route, choice = resolve(router, metrics, record, "chat", "chat", None)

    assert route.model == "chat"
    assert choice.version.public_id == "chat"
    assert record.routed_model == "chat"
    assert record.version == "-"
    assert record.in_flight is True
    assert metrics.registry.get_sample_value("offload_requests_in_flight", {"model": "chat"}) == 1
    assert metric_total(metrics, "offload_routing_decisions_total", model="chat", reason=choice.reason) == 1


def test_resolve_of_an_unknown_model_does_not_label_metrics_with_it(
    router: Router, record: RequestRecord, metrics: Metrics
) -> None:
    with pytest.raises(ModelNotFoundError):
        resolve(router, metrics, record, "made-up", "chat", None)

    assert record.routed_model is None
    assert record.in_flight is False
    assert metric_total(metrics, "offload_routing_decisions_total") is None


def test_resolve_of_an_unknown_version_is_model_not_found(
    router: Router, record: RequestRecord, metrics: Metrics
) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve(router, metrics, record, "chat:v9", "chat", None)

    assert info.value.param == "model"
    assert "v9" in info.value.message
    assert record.in_flight is False


def test_resolve_passes_the_session_header_on(record: RequestRecord, metrics: Metrics) -> None:
    text = """
models:
  - name: chat
    task: chat
    versions:
      v1: {weight: 1, engines: [{url: "http://127.0.0.1:11"}]}
      v2: {weight: 1, engines: [{url: "http://127.0.0.1:12"}]}
"""
    router = wire(RouteTable.from_config(parse_config(text)), metrics).router

    _, choice = resolve(router, metrics, record, "chat", "chat", None, {"x-session-id": "abc"})

    assert choice.reason == "sticky"
    assert record.version == choice.version.label


# --- Failover.pick --------------------------------------------------------------------------------


async def test_pick_notes_the_replica_on_the_record(
    router: Router, failover: Failover, record: RequestRecord, metrics: Metrics
) -> None:
    route, choice = resolve(router, metrics, record, "chat", "chat", None)

    pick = await failover.pick(route, choice.version, record)

    assert pick.replica.id == "chat-0"
    assert pick.replica.served_name == "engine-chat"
    assert record.replica == "chat-0"


async def test_pick_without_a_healthy_replica_is_unavailable_and_notes_nothing(
    router: Router, breakers: Breakers, failover: Failover, record: RequestRecord, metrics: Metrics
) -> None:
    breakers.mark("chat-0", State.DOWN)
    route, choice = resolve(router, metrics, record, "chat", "chat", None)

    with pytest.raises(EngineUnavailableError) as info:
        await failover.pick(route, choice.version, record)

    assert info.value.retry_after == RETRY_AFTER
    assert record.replica is None


FALLBACK = """
models:
  - name: chat
    task: chat
    versions:
      v1: {weight: 1, fallback: v2, engines: [{url: "http://127.0.0.1:11"}]}
      v2: {weight: 0, engines: [{url: "http://127.0.0.1:12"}]}
"""


async def test_pick_of_a_fallback_notes_and_counts_it(record: RequestRecord, metrics: Metrics) -> None:
    table = RouteTable.from_config(parse_config(FALLBACK))
    w = wire(table, metrics)
    w.breakers.mark("chat-v2-0", State.UP)  # v1 is not up
    route, choice = resolve(w.router, metrics, record, "chat", "chat", None)
    assert choice.version.name == "v1"

    pick = await w.failover.pick(route, choice.version, record)

    assert (pick.version.name, pick.replica.id, pick.fallback) == ("v2", "chat-v2-0", True)
    assert (record.version, record.replica) == ("v2", "chat-v2-0")
    assert metric_total(metrics, "offload_routing_decisions_total", version="v2", reason="fallback") == 1


# --- Failover.run ---------------------------------------------------------------------------------

POOL = ("http://127.0.0.1:11", "http://127.0.0.1:12", "http://127.0.0.1:13")


def pool_table(urls: tuple[str, ...] = POOL) -> RouteTable:
    config = OffloadConfig(
        models=(ModelConfig(name="pool", task="chat", engines=tuple(EngineConfig(url=u) for u in urls)),)
    )
    return RouteTable.from_config(config)


def all_up(table: RouteTable) -> Breakers:
    breakers = Breakers()
    for replica in table.replicas():
        breakers.mark(replica.id, State.UP)
    return breakers


@pytest.fixture
def pool(metrics: Metrics) -> Wiring:
    """A chat model served by three replicas, all UP."""
    table = pool_table()
    return wire(table, metrics, breakers=all_up(table), retry_after=RETRY_AFTER, max_retries=MAX_RETRIES)


async def run(
    wiring: Wiring, record: RequestRecord, outcomes: dict[str, BaseException | str], model: str = "pool"
) -> tuple[str, list[str]]:
    """Run Failover.run where each replica (by URL) answers or raises as told."""
    tried: list[str] = []

    async def attempt(replica: Replica) -> str:
        tried.append(replica.base_url)
        assert wiring.loads.in_flight(replica.id) == 1, "the attempt runs under a lease"
        outcome = outcomes[replica.base_url]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    route, choice = wiring.router.resolve(model, "chat", None)
    result, _ = await wiring.failover.run(route, choice.version, record, attempt)
    return result, tried


async def test_run_returns_the_result_and_the_version_that_served(
    pool: Wiring, record: RequestRecord
) -> None:
    route, choice = pool.router.resolve("pool", "chat", None)

    async def attempt(replica: Replica) -> str:
        return replica.id

    result, used = await pool.failover.run(route, choice.version, record, attempt)

    assert (result, used) == ("pool-0", choice.version)
    assert record.replica == "pool-0"
    assert record.retries == 0
    assert pool.loads.in_flight("pool-0") == 0


async def test_failover_tries_another_replica_when_one_is_unreachable(
    pool: Wiring, record: RequestRecord, metrics: Metrics
) -> None:
    pool.loads.begin("pool-1")  # so the least-loaded choice is pool-0 first, then pool-2
    pool.loads.begin("pool-1")
    outcomes: dict[str, BaseException | str] = {
        POOL[0]: EngineConnectError("unreachable"),
        POOL[1]: "one",
        POOL[2]: "two",
    }

    result, tried = await run(pool, record, outcomes)

    assert tried == [POOL[0], POOL[2]]
    assert result == "two"
    assert record.retries == 1
    assert record.replica == "pool-2"
    assert pool.breakers.state("pool-0") is State.DOWN
    assert metric_total(metrics, "offload_retries_total", model="pool", replica="pool-0") == 1


@pytest.mark.parametrize(
    "error",
    [EngineError("the engine broke before answering"), EngineStatusError(502, "failed")],
    ids=["broken", "bad-gateway"],
)
async def test_failover_retries_an_engine_failure_elsewhere(
    pool: Wiring, record: RequestRecord, error: GatewayError
) -> None:
    outcomes: dict[str, BaseException | str] = {POOL[0]: error, POOL[1]: "one", POOL[2]: "two"}

    result, tried = await run(pool, record, outcomes)

    assert (result, tried) == ("one", [POOL[0], POOL[1]])
    assert record.retries == 1
    assert pool.breakers.snapshot("pool-0").failures == 1
    assert pool.breakers.state("pool-0") is State.UP  # one failure does not open the circuit


@pytest.mark.parametrize(
    "error",
    [EngineStatusError(400, "bad request"), EngineTimeoutError("slow")],
    ids=["client-error", "timeout"],
)
async def test_failover_does_not_retry_what_another_replica_would_not_fix(
    pool: Wiring, record: RequestRecord, error: GatewayError
) -> None:
    outcomes: dict[str, BaseException | str] = dict.fromkeys(POOL, error)

    with pytest.raises(type(error)):
        await run(pool, record, outcomes)

    assert record.retries == 0


async def test_failover_does_not_retry_a_bug(pool: Wiring, record: RequestRecord) -> None:
    outcomes: dict[str, BaseException | str] = dict.fromkeys(POOL, RuntimeError("bug"))

    with pytest.raises(RuntimeError):
        await run(pool, record, outcomes)

    assert record.retries == 0
    assert all(pool.loads.in_flight(f"pool-{i}") == 0 for i in range(3))


async def test_failover_stops_after_the_retry_budget(pool: Wiring, record: RequestRecord) -> None:
    outcomes: dict[str, BaseException | str] = {url: EngineStatusError(503, "busy") for url in POOL}

    with pytest.raises(EngineStatusError):
        await run(pool, record, outcomes)

    assert record.retries == 2  # max_retries: three replicas tried in all


async def test_failover_within_a_budget_of_one(metrics: Metrics, record: RequestRecord) -> None:
    table = pool_table()
    wiring = wire(table, metrics, breakers=all_up(table), max_retries=1)
    outcomes: dict[str, BaseException | str] = {url: EngineStatusError(502, "failed") for url in POOL}

    with pytest.raises(EngineStatusError):
        await run(wiring, record, outcomes)

    assert record.retries == 1


async def test_failover_never_tries_a_replica_twice(pool: Wiring, record: RequestRecord) -> None:
    outcomes: dict[str, BaseException | str] = {url: EngineConnectError("unreachable") for url in POOL}

    with pytest.raises(EngineUnavailableError) as info:
        await run(pool, record, outcomes)

    assert info.value.retry_after == RETRY_AFTER
    assert all(pool.breakers.state(f"pool-{i}") is State.DOWN for i in range(3))
    assert all(pool.loads.in_flight(f"pool-{i}") == 0 for i in range(3))


async def test_when_no_replica_is_left_the_last_failure_is_raised_not_a_503(
    metrics: Metrics, record: RequestRecord
) -> None:
    table = pool_table(POOL[:2])
    wiring = wire(table, metrics, breakers=all_up(table), max_retries=5)
    outcomes: dict[str, BaseException | str] = {
        POOL[0]: EngineStatusError(502, "failed"),
        POOL[1]: EngineStatusError(503, "busy"),
    }

    with pytest.raises(EngineStatusError) as info:
        await run(wiring, record, outcomes)

    assert info.value.status == 503
    assert record.retries == 2


async def test_no_retry_once_the_deadline_has_passed(metrics: Metrics, record: RequestRecord) -> None:
    table = pool_table()
    wiring = wire(table, metrics, breakers=all_up(table), deadline=0.0)
    outcomes: dict[str, BaseException | str] = {POOL[0]: EngineConnectError("unreachable"), POOL[1]: "one"}

    with pytest.raises(EngineConnectError):
        await run(wiring, record, outcomes)

    assert record.retries == 0


async def test_failover_moves_on_to_the_fallback_version(metrics: Metrics, record: RequestRecord) -> None:
    table = RouteTable.from_config(parse_config(FALLBACK))
    wiring = wire(table, metrics, breakers=all_up(table))
    route, choice = wiring.router.resolve("chat", "chat", None)

    async def attempt(replica: Replica) -> str:
        if replica.id == "chat-v1-0":
            raise EngineConnectError("unreachable")
        return replica.id

    result, used = await wiring.failover.run(route, choice.version, record, attempt)

    assert (result, used.name) == ("chat-v2-0", "v2")
    assert (record.version, record.replica, record.retries) == ("v2", "chat-v2-0", 1)
