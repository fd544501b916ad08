from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.config import EngineConfig, ModelConfig, OffloadConfig
from gateway.metrics import Metrics
from gateway.routing.health import HealthRegistry, State
from gateway.routing.table import Replica, RouteTable
from gateway.record import RequestRecord
from gateway.services.dispatch import Dispatcher, engine_error
from gateway.errors import (
    EngineError,
    EngineStatusError,
    EngineTimeoutError,
    EngineUnavailableError,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
)
from gateway.errors import EngineConnectError
from tests.unit.conftest import RETRY_AFTER

# --- engine_error: normalising engine error answers ---------------------------------------------


def vllm_error(message: str, type_: str, code: int, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def test_vllm_400_becomes_an_invalid_request_error_with_a_string_code() -> None:
    error = engine_error(400, vllm_error("max_tokens is too large", "BadRequestError", 400, "max_tokens"))

    assert error.status == 400
    assert error.type == "invalid_request_error"
    assert error.code == "invalid_request"
    assert isinstance(error.code, str)
    assert error.message == "max_tokens is too large"
    assert error.param == "max_tokens"


def test_envelope_of_a_normalised_error_validates_as_openai_shape() -> None:
    body = orjson.loads(
        engine_error(400, vllm_error("bad", "BadRequestError", 400)).to_response().model_dump_json()
    )

    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["message"] == "bad"


@pytest.mark.parametrize("status", [500, 501, 502, 504])
def test_engine_5xx_becomes_502_without_leaking_the_engine_text(status: int) -> None:
    body = vllm_error("CUDA out of memory at /opt/vllm/worker.py:123", "InternalServerError", status)

    error = engine_error(status, body)

    assert error.status == 502
    assert error.type == "server_error"
    assert "CUDA" not in error.message
    assert "worker.py" not in error.message
    assert error.message == "The engine failed to process the request."


def test_engine_503_stays_503_with_a_generic_message() -> None:
    error = engine_error(503, vllm_error("engine dead at 10.0.0.5", "ServiceUnavailable", 503))

    assert error.status == 503
    assert error.type == "server_error"
    assert "10.0.0.5" not in error.message


@pytest.mark.parametrize(
    "body", [b"", b"<html>Bad Gateway</html>", b"[1, 2]", b'{"error": "just a string"}', b"null"]
)
def test_unreadable_4xx_body_gets_a_generic_message(body: bytes) -> None:
    error = engine_error(400, body)

    assert error.status == 400
    assert error.message == "The engine rejected the request."
    assert error.param is None


def test_garbage_5xx_body_still_becomes_502() -> None:
    error = engine_error(500, b"\x00\xffgarbage")

    assert error.status == 502
    assert error.message == "The engine failed to process the request."


def test_flat_message_body_is_understood() -> None:
    error = engine_error(
        400,
        orjson.dumps(
            {"object": "error", "message": "prompt too long", "type": "BadRequestError", "code": 400}
        ),
    )

    assert error.message == "prompt too long"
    assert error.status == 400


def test_engine_404_and_429_keep_their_status_and_get_known_codes() -> None:
    assert engine_error(404, vllm_error("no such model", "NotFoundError", 404)).code == "not_found"
    limited = engine_error(429, vllm_error("too many", "RateLimitError", 429))
    assert (limited.status, limited.code) == (429, "rate_limit_exceeded")


# --- Dispatcher.route / resolve / choose -------------------------------------------------------


def test_route_of_an_unknown_model_names_the_available_models_of_that_task(dispatcher: Dispatcher) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        dispatcher.route("gpt-4", "chat")

    assert info.value.status == 404
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"
    assert "'gpt-4'" in info.value.message
    assert info.value.message.endswith("Available chat completions models: chat.")


def test_route_of_an_unknown_embeddings_model_lists_embeddings_models(dispatcher: Dispatcher) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        dispatcher.route("nope", "embeddings")

    assert info.value.message.endswith("embeddings models: embed.")


def test_route_for_the_wrong_task_is_an_invalid_request(dispatcher: Dispatcher) -> None:
    with pytest.raises(InvalidRequestError) as info:
        dispatcher.route("embed", "chat")

    assert info.value.status == 400
    assert info.value.param == "model"
    assert "chat completions" in info.value.message


def test_route_returns_the_configured_route_and_the_version_selector(dispatcher: Dispatcher) -> None:
    route, selector = dispatcher.route("chat", "chat")
    pinned_route, pinned = dispatcher.route("chat:v2", "chat")

    assert (route.model, route.task, selector) == ("chat", "chat", None)
    assert (pinned_route.model, pinned) == ("chat", "v2")


def test_resolve_notes_the_model_and_counts_it_in_flight(
    dispatcher: Dispatcher, record: RequestRecord, metrics: Metrics
) -> None:
    route, choice = dispatcher.resolve("chat", "chat", None, record)

    assert route.model == "chat"
    assert choice.version.public_id == "chat"
    assert record.routed_model == "chat"
    assert record.in_flight is True
    assert metrics.registry.get_sample_value("offload_requests_in_flight", {"model": "chat"}) == 1


def test_resolve_of_an_unknown_model_does_not_label_metrics_with_it(
    dispatcher: Dispatcher, record: RequestRecord
) -> None:
    with pytest.raises(ModelNotFoundError):
        dispatcher.resolve("made-up", "chat", None, record)

    assert record.routed_model is None
    assert record.in_flight is False


def test_resolve_of_an_unknown_version_is_model_not_found(
    dispatcher: Dispatcher, record: RequestRecord
) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        dispatcher.resolve("chat:v9", "chat", None, record)

    assert info.value.param == "model"
    assert "v9" in info.value.message


def test_choose_without_a_healthy_replica_is_unavailable_with_retry_after(
    dispatcher: Dispatcher, health: HealthRegistry, record: RequestRecord
) -> None:
    health.mark("chat-0", State.DOWN)
    route, choice = dispatcher.resolve("chat", "chat", None, record)

    with pytest.raises(EngineUnavailableError) as info:
        dispatcher.choose(route, choice.version, record)

    assert info.value.status == 503
    assert info.value.retry_after == RETRY_AFTER
    assert "'chat'" in info.value.message
    assert "10.1.2.3" not in info.value.message
    assert record.replica is None


def test_choose_never_sends_traffic_to_an_unprobed_replica(
    table: RouteTable, metrics: Metrics, record: RequestRecord
) -> None:
    dispatcher = Dispatcher(table, HealthRegistry(), metrics, retry_after=1)
    route, choice = dispatcher.resolve("chat", "chat", None, record)

    with pytest.raises(EngineUnavailableError):
        dispatcher.choose(route, choice.version, record)


def test_choose_notes_the_replica_on_the_record(dispatcher: Dispatcher, record: RequestRecord) -> None:
    route, choice = dispatcher.resolve("chat", "chat", None, record)

    _, replica = dispatcher.choose(route, choice.version, record)

    assert replica.id == "chat-0"
    assert replica.served_name == "engine-chat"
    assert record.replica == "chat-0"


# --- Dispatcher.calling -------------------------------------------------------------------------


def test_calling_counts_the_call_in_flight_while_it_runs(
    dispatcher: Dispatcher, health: HealthRegistry
) -> None:
    replica = dispatcher.table.replicas()[0]

    with dispatcher.calling(replica):
        assert health.in_flight(replica.id) == 1
        with dispatcher.calling(replica):
            assert health.in_flight(replica.id) == 2
    assert health.in_flight(replica.id) == 0


def test_calling_marks_the_replica_down_when_it_cannot_be_reached(
    dispatcher: Dispatcher, health: HealthRegistry
) -> None:
    replica = dispatcher.table.replicas()[0]

    with pytest.raises(EngineConnectError) as info, dispatcher.calling(replica):
        raise EngineConnectError("the engine is unreachable")

    assert health.state(replica.id) is State.DOWN
    assert info.value.retry_after == RETRY_AFTER
    assert health.in_flight(replica.id) == 0


@pytest.mark.parametrize(
    "exc",
    [
        EngineError("broke"),
        EngineStatusError(502, "failed"),
        EngineStatusError(400, "bad"),
        RuntimeError("bug"),
    ],
)
def test_calling_keeps_the_replica_up_after_one_other_failure(
    dispatcher: Dispatcher, health: HealthRegistry, exc: Exception
) -> None:
    replica = dispatcher.table.replicas()[0]

    with pytest.raises(type(exc)), dispatcher.calling(replica):
        raise exc

    assert health.state(replica.id) is State.UP
    assert health.in_flight(replica.id) == 0


def test_repeated_engine_failures_open_the_circuit(dispatcher: Dispatcher, health: HealthRegistry) -> None:
    replica = dispatcher.table.replicas()[0]

    for _ in range(3):  # the registry's default threshold
        with pytest.raises(EngineStatusError), dispatcher.calling(replica):
            raise EngineStatusError(502, "failed")

    assert health.state(replica.id) is State.DOWN


def test_client_errors_relayed_by_the_engine_never_open_the_circuit(
    dispatcher: Dispatcher, health: HealthRegistry
) -> None:
    replica = dispatcher.table.replicas()[0]

    for _ in range(10):
        with pytest.raises(EngineStatusError), dispatcher.calling(replica):
            raise EngineStatusError(400, "prompt too long")

    assert health.state(replica.id) is State.UP


@pytest.mark.parametrize("exc", [EngineStatusError(400, "prompt too long"), asyncio.CancelledError()])
def test_a_half_open_replica_is_available_again_after_its_trial_ends(
    dispatcher: Dispatcher, health: HealthRegistry, exc: BaseException
) -> None:
    replica = dispatcher.table.replicas()[0]
    health.mark(replica.id, State.HALF_OPEN)
    assert health.available(replica.id)

    with pytest.raises(type(exc)), dispatcher.calling(replica):
        raise exc

    assert health.in_flight(replica.id) == 0
    assert health.available(replica.id)


# --- Dispatcher.with_failover -------------------------------------------------------------------

POOL = ("http://10.0.0.1:1", "http://10.0.0.2:1", "http://10.0.0.3:1")


@pytest.fixture
def pool(metrics: Metrics) -> Dispatcher:
    """A chat model served by three replicas, all UP."""
    config = OffloadConfig(
        models=(ModelConfig(name="pool", task="chat", engines=tuple(EngineConfig(url=u) for u in POOL)),)
    )
    table = RouteTable.from_config(config)
    health = HealthRegistry()
    for replica in table.replicas():
        health.mark(replica.id, State.UP)
    return Dispatcher(table, health, metrics, retry_after=RETRY_AFTER, max_retries=2)


async def failover(
    dispatcher: Dispatcher, record: RequestRecord, outcomes: dict[str, BaseException | str]
) -> tuple[str, list[str]]:
    """Run with_failover where each replica (by URL) answers or raises as told."""
    tried: list[str] = []

    async def attempt(replica: Replica) -> str:
        tried.append(replica.base_url)
        outcome = outcomes[replica.base_url]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    route, choice = dispatcher.resolve("pool", "chat", None, record)
    result, _ = await dispatcher.with_failover(route, choice.version, record, attempt)
    return result, tried


async def test_failover_tries_another_replica_when_one_is_unreachable(
    pool: Dispatcher, record: RequestRecord
) -> None:
    pool.health.begin("pool-1")  # so the least-loaded choice is pool-0 first, then pool-2
    pool.health.begin("pool-1")
    outcomes: dict[str, BaseException | str] = {
        POOL[0]: EngineConnectError("unreachable"),
        POOL[1]: "one",
        POOL[2]: "two",
    }

    result, tried = await failover(pool, record, outcomes)

    assert tried == [POOL[0], POOL[2]]
    assert result == "two"
    assert record.retries == 1
    assert pool.health.state("pool-0") is State.DOWN


@pytest.mark.parametrize(
    "error",
    [EngineStatusError(400, "bad request"), EngineTimeoutError("slow")],
    ids=["client-error", "timeout"],
)
async def test_failover_does_not_retry_what_another_replica_would_not_fix(
    pool: Dispatcher, record: RequestRecord, error: GatewayError
) -> None:
    outcomes: dict[str, BaseException | str] = dict.fromkeys(POOL, error)

    with pytest.raises(type(error)):
        await failover(pool, record, outcomes)

    assert record.retries == 0


async def test_failover_stops_after_the_retry_budget(pool: Dispatcher, record: RequestRecord) -> None:
    outcomes: dict[str, BaseException | str] = {url: EngineStatusError(503, "busy") for url in POOL}

    with pytest.raises(EngineStatusError):
        await failover(pool, record, outcomes)

    assert record.retries == 2  # max_retries: three replicas tried in all


async def test_failover_never_tries_a_replica_twice(pool: Dispatcher, record: RequestRecord) -> None:
    outcomes: dict[str, BaseException | str] = {url: EngineConnectError("unreachable") for url in POOL}

    with pytest.raises(EngineUnavailableError) as info:
        await failover(pool, record, outcomes)

    assert info.value.retry_after == RETRY_AFTER
    assert all(pool.health.state(f"pool-{i}") is State.DOWN for i in range(3))
    assert all(pool.health.in_flight(f"pool-{i}") == 0 for i in range(3))
