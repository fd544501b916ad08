"""The router: requested model -> route, version and replica, over the breakers and loads (pure)."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.errors import EngineUnavailableError, InvalidRequestError, ModelNotFoundError
from gateway.routing.breaker import Breakers, State
from gateway.routing.load import Loads
from gateway.routing.router import Pick, Router
from gateway.routing.table import Route, RouteTable
from gateway.routing.versions import choose_version
from tests.unit.conftest import RETRY_AFTER

# --- route ----------------------------------------------------------------------------------------


def test_route_of_an_unknown_model_names_the_available_models_of_that_task(router: Router) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        router.route("gpt-4", "chat")

    assert info.value.status == 404
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"
    assert "'gpt-4'" in info.value.message
    assert info.value.message.endswith("Available chat completions models: chat.")


def test_route_of_an_unknown_embeddings_model_lists_embeddings_models(router: Router) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        router.route("nope", "embeddings")

    assert info.value.message.endswith("embeddings models: embed.")


def test_route_for_the_wrong_task_is_an_invalid_request(router: Router) -> None:
    with pytest.raises(InvalidRequestError) as info:
        router.route("embed", "chat")

    assert info.value.status == 400
    assert info.value.param == "model"
    assert "chat completions" in info.value.message


def test_route_returns_the_configured_route_and_the_version_selector(router: Router) -> None:
    route, selector = router.route("chat", "chat")
    pinned_route, pinned = router.route("chat:v2", "chat")

    assert (route.model, route.task, selector) == ("chat", "chat", None)
    assert (pinned_route.model, pinned) == ("chat", "v2")


# --- resolve --------------------------------------------------------------------------------------


def test_resolve_returns_the_route_and_the_version(router: Router) -> None:
    route, choice = router.resolve("chat", "chat", None)

    assert route.model == "chat"
    assert choice.version.public_id == "chat"
    assert choice.version.replicas == route.replicas


def test_resolve_of_an_unknown_version_is_model_not_found(router: Router) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        router.resolve("chat:v9", "chat", None)

    assert info.value.param == "model"
    assert "v9" in info.value.message


TWO_VERSIONS = """
models:
  - name: chat
    task: chat
    session_header: X-Conversation
    versions:
      v1: {weight: 1, fallback: v2, engines: [{url: "http://127.0.0.1:11"}, {url: "http://127.0.0.1:12"}]}
      v2: {weight: 1, engines: [{url: "http://127.0.0.1:21"}]}
"""


@pytest.fixture
def versioned() -> tuple[Router, Route]:
    """chat v1 (two replicas, falls back to v2) and v2 (one replica), all UP, split 50/50."""
    table = RouteTable.from_config(parse_config(TWO_VERSIONS))
    breakers = Breakers()
    for replica in table.replicas():
        breakers.mark(replica.id, State.UP)
    route = table.get("chat")
    assert route is not None
    return Router(table, breakers, Loads(), retry_after=RETRY_AFTER), route


def test_resolve_takes_the_session_from_the_routes_header_over_the_user(
    versioned: tuple[Router, Route],
) -> None:
    router, route = versioned
    sessions = [f"s{i}" for i in range(40)]

    for session in sessions:
        _, by_header = router.resolve("chat", "chat", "someone", {"x-conversation": session})
        _, by_user = router.resolve("chat", "chat", session, {"x-other": "ignored"})
        expected = choose_version(route, None, session).version
        assert (by_header.version, by_header.reason) == (expected, "sticky")
        assert by_user.version is expected
    assert {router.resolve("chat", "chat", s)[1].version.name for s in sessions} == {"v1", "v2"}


def test_resolve_honours_pins(versioned: tuple[Router, Route]) -> None:
    router, _ = versioned

    _, choice = router.resolve("chat:v2", "chat", "s", {"x-conversation": "s"})

    assert (choice.version.name, choice.reason) == ("v2", "pinned")


# --- choose ---------------------------------------------------------------------------------------


def test_choose_without_a_healthy_replica_is_unavailable_with_retry_after(
    router: Router, breakers: Breakers
) -> None:
    breakers.mark("chat-0", State.DOWN)
    route, choice = router.resolve("chat", "chat", None)

    with pytest.raises(EngineUnavailableError) as info:
        router.choose(route, choice.version)

    assert info.value.status == 503
    assert info.value.retry_after == RETRY_AFTER
    assert "'chat'" in info.value.message
    assert "127.0.0.1" not in info.value.message


def test_choose_never_sends_traffic_to_an_unprobed_replica(table: RouteTable) -> None:
    router = Router(table, Breakers(), Loads(), retry_after=1)
    route, choice = router.resolve("chat", "chat", None)

    with pytest.raises(EngineUnavailableError):
        router.choose(route, choice.version)


def test_choose_returns_the_replica_and_its_version(router: Router) -> None:
    route, choice = router.resolve("chat", "chat", None)

    pick = router.choose(route, choice.version)

    assert isinstance(pick, Pick)
    assert pick.replica.id == "chat-0"
    assert pick.replica.served_name == "engine-chat"
    assert pick.version is choice.version
    assert pick.fallback is False


def test_choose_prefers_the_least_loaded_replica(versioned: tuple[Router, Route]) -> None:
    router, route = versioned
    router.loads.begin("chat-v1-0")

    assert router.choose(route, route.versions["v1"]).replica.id == "chat-v1-1"


def test_choose_skips_excluded_replicas(versioned: tuple[Router, Route]) -> None:
    router, route = versioned

    pick = router.choose(route, route.versions["v1"], exclude=frozenset({"chat-v1-0"}))

    assert (pick.replica.id, pick.fallback) == ("chat-v1-1", False)


def test_choose_falls_back_when_the_version_has_no_replica_left(versioned: tuple[Router, Route]) -> None:
    router, route = versioned
    router.breakers.mark("chat-v1-0", State.DOWN)

    pick = router.choose(route, route.versions["v1"], exclude=frozenset({"chat-v1-1"}))

    assert pick.version is route.versions["v2"]
    assert (pick.replica.id, pick.fallback) == ("chat-v2-0", True)


def test_choose_names_the_requested_version_when_even_the_fallback_is_down(
    versioned: tuple[Router, Route],
) -> None:
    router, route = versioned
    for replica in route.replicas:
        router.breakers.mark(replica.id, State.DOWN)

    with pytest.raises(EngineUnavailableError, match="'chat:v1'"):
        router.choose(route, route.versions["v1"])


def test_choose_lets_one_trial_through_a_half_open_replica(router: Router, breakers: Breakers) -> None:
    breakers.mark("chat-0", State.HALF_OPEN)
    route, choice = router.resolve("chat", "chat", None)

    assert router.choose(route, choice.version).replica.id == "chat-0"
    breakers.admit("chat-0")  # the trial is under way
    with pytest.raises(EngineUnavailableError):
        router.choose(route, choice.version)


def test_choose_is_pure(router: Router, breakers: Breakers, loads: Loads) -> None:
    route, choice = router.resolve("chat", "chat", None)

    router.choose(route, choice.version)

    assert loads.in_flight("chat-0") == 0
    assert breakers.state("chat-0") is State.UP


# --- any_healthy, least_loaded --------------------------------------------------------------------


def test_any_healthy_follows_the_fallback_chain(versioned: tuple[Router, Route]) -> None:
    router, route = versioned
    v1, v2 = route.versions["v1"], route.versions["v2"]
    router.breakers.mark("chat-v1-0", State.DOWN)
    router.breakers.mark("chat-v1-1", State.DOWN)

    assert router.any_healthy(route, v1) is True  # through v2
    router.breakers.mark("chat-v2-0", State.UNKNOWN)
    assert router.any_healthy(route, v1) is False
    assert router.any_healthy(route, v2) is False


def test_least_loaded_is_the_healthy_replica_with_the_least_load(versioned: tuple[Router, Route]) -> None:
    router, route = versioned
    v1 = route.versions["v1"]

    router.loads.begin("chat-v1-0")
    assert router.least_loaded(v1) is v1.replicas[1]
    router.loads.engine_load("chat-v1-1", waiting=3, running=0, kv_usage=0)
    assert router.least_loaded(v1) is v1.replicas[0]
    router.breakers.mark("chat-v1-0", State.DOWN)
    assert router.least_loaded(v1) is v1.replicas[1]
    router.breakers.mark("chat-v1-1", State.DOWN)
    assert router.least_loaded(v1) is None


# --- replace_table --------------------------------------------------------------------------------


def test_replace_table_swaps_the_table_and_forgets_replicas_no_longer_configured(
    versioned: tuple[Router, Route],
) -> None:
    router, _ = versioned
    router.loads.begin("chat-v1-0")
    router.loads.begin("chat-v2-0")
    smaller = RouteTable.from_config(
        parse_config(TWO_VERSIONS.replace(', {url: "http://127.0.0.1:12"}', "").replace("v2", "v3"))
    )

    router.replace_table(smaller)

    assert router.table is smaller
    assert [r.id for r in router.table.replicas()] == ["chat-v1-0", "chat-v3-0"]
    assert router.breakers.state("chat-v1-0") is State.UP  # kept: still configured
    assert router.loads.in_flight("chat-v1-0") == 1
    assert router.breakers.state("chat-v2-0") is State.UNKNOWN  # forgotten
    assert router.loads.in_flight("chat-v2-0") == 0
    assert router.breakers.state("chat-v3-0") is State.UNKNOWN  # new: not routed to before a probe
    with pytest.raises(ModelNotFoundError):
        router.resolve("chat:v2", "chat", None)


def test_replace_table_starts_the_policies_over() -> None:
    text = """
models:
  - name: chat
    task: chat
    policy: round_robin
    engines: [{url: "http://127.0.0.1:11"}, {url: "http://127.0.0.1:12"}]
"""
    rr = RouteTable.from_config(parse_config(text))
    breakers = Breakers()
    for replica in rr.replicas():
        breakers.mark(replica.id, State.UP)
    router = Router(rr, breakers, Loads(), retry_after=1)
    route, choice = router.resolve("chat", "chat", None)
    assert router.choose(route, choice.version).replica.id == "chat-0"

    router.replace_table(RouteTable.from_config(parse_config(text)))
    route, choice = router.resolve("chat", "chat", None)

    assert router.choose(route, choice.version).replica.id == "chat-0"
