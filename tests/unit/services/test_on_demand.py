"""Engines started on the first request (``on_demand``): the routing side of it (the chat stream's
keep-alive while an engine loads is in test_chat.py)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import EngineUnavailableError
from gateway.metrics import Metrics
from gateway.record import RequestRecord
from gateway.routing.breaker import Breakers, State
from gateway.routing.table import Replica, RouteTable
from tests.unit.conftest import CHAT_URL
from tests.unit.fakes import FakeEngines, Wiring, wire

WAIT = 123.0


def stopped(
    table: RouteTable, metrics: Metrics, engines: FakeEngines | None, max_waiting: int = 256
) -> Wiring:
    """The routing pieces with the chat replica down (its engine stopped)."""
    breakers = Breakers()
    breakers.mark("chat-0", State.DOWN)
    return wire(
        table,
        metrics,
        breakers=breakers,
        engines=engines,
        retry_after=4,
        on_demand_wait=WAIT,
        on_demand_max_waiting=max_waiting,
    )


async def choose(wiring: Wiring, exclude: frozenset[str] = frozenset()) -> str:
    record = RequestRecord(request_id="r")
    route, choice = wiring.router.resolve("chat", "chat", None)
    pick = await wiring.failover.pick(route, choice.version, record, exclude)
    assert record.replica == pick.replica.id
    return pick.replica.id


async def test_a_stopped_on_demand_engine_is_started_for_the_request(
    table: RouteTable, metrics: Metrics
) -> None:
    engines = FakeEngines({CHAT_URL})
    wiring = stopped(table, metrics, engines)

    assert await choose(wiring) == "chat-0"

    assert engines.started == [CHAT_URL]
    assert engines.timeouts == [WAIT]  # bounded by settings.on_demand_wait
    assert wiring.breakers.state("chat-0") is State.UP


async def test_a_healthy_replica_is_chosen_without_starting_anything(
    table: RouteTable, metrics: Metrics
) -> None:
    engines = FakeEngines({CHAT_URL})
    wiring = stopped(table, metrics, engines)
    wiring.breakers.mark("chat-0", State.UP)

    assert await choose(wiring) == "chat-0"
    assert engines.started == []


async def test_an_engine_that_does_not_load_in_time_is_a_503(table: RouteTable, metrics: Metrics) -> None:
    wiring = stopped(table, metrics, FakeEngines({CHAT_URL}, starts=False))

    with pytest.raises(EngineUnavailableError) as info:
        await choose(wiring)

    assert info.value.retry_after == 4
    assert "did not load in time" in info.value.message
    assert "127.0.0.1" not in info.value.message
    assert wiring.breakers.state("chat-0") is State.DOWN


async def test_without_engine_control_a_down_replica_is_a_503(table: RouteTable, metrics: Metrics) -> None:
    wiring = stopped(table, metrics, None)
    assert wiring.on_demand is None

    with pytest.raises(EngineUnavailableError, match="no engine ready") as info:
        await choose(wiring)
    assert info.value.retry_after == 4


async def test_an_engine_that_cannot_be_started_is_a_503(table: RouteTable, metrics: Metrics) -> None:
    engines = FakeEngines(set())

    with pytest.raises(EngineUnavailableError, match="no engine ready"):
        await choose(stopped(table, metrics, engines))
    assert engines.started == []


async def test_an_excluded_replica_is_not_started(table: RouteTable, metrics: Metrics) -> None:
    engines = FakeEngines({CHAT_URL})

    with pytest.raises(EngineUnavailableError, match="no engine ready"):
        await choose(stopped(table, metrics, engines), exclude=frozenset({"chat-0"}))
    assert engines.started == []


async def test_waiting_requests_are_bounded(table: RouteTable, metrics: Metrics) -> None:
    gate = asyncio.Event()
    engines = FakeEngines({CHAT_URL}, gate=gate)
    wiring = stopped(table, metrics, engines, max_waiting=1)
    first = asyncio.ensure_future(choose(wiring))
    await asyncio.wait_for(engines.loading.wait(), timeout=2)

    with pytest.raises(EngineUnavailableError, match="Too many requests are waiting") as info:
        await choose(wiring)
    assert info.value.retry_after == 4
    gate.set()

    assert await asyncio.wait_for(first, timeout=2) == "chat-0"
    assert engines.started == [CHAT_URL]


async def test_a_wait_that_ends_frees_its_place(table: RouteTable, metrics: Metrics) -> None:
    engines = FakeEngines({CHAT_URL}, starts=False)
    wiring = stopped(table, metrics, engines, max_waiting=1)

    for _ in range(2):
        with pytest.raises(EngineUnavailableError, match="did not load in time"):
            await choose(wiring)

    assert engines.started == [CHAT_URL, CHAT_URL]


async def test_a_cancelled_wait_frees_its_place(table: RouteTable, metrics: Metrics) -> None:
    engines = FakeEngines({CHAT_URL}, gate=asyncio.Event())
    wiring = stopped(table, metrics, engines, max_waiting=1)
    waiting = asyncio.ensure_future(choose(wiring))
    await asyncio.wait_for(engines.loading.wait(), timeout=2)

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert engines.cancelled == 1
    engines.starts, engines.gate = False, None

    with pytest.raises(EngineUnavailableError, match="did not load in time"):
        await choose(wiring)  # not "too many waiting"


async def test_needs_start_only_when_nothing_serves_and_an_engine_can_start(
    table: RouteTable, metrics: Metrics
) -> None:
    engines = FakeEngines({CHAT_URL})
    wiring = stopped(table, metrics, engines)
    route, _ = wiring.router.route("chat", "chat")
    version = route.versions[""]
    assert wiring.on_demand is not None

    assert wiring.on_demand.needs_start(route, version) is True
    assert wiring.failover.needs_start(route, version) is True
    wiring.breakers.mark("chat-0", State.UP)
    assert wiring.failover.needs_start(route, version) is False
    wiring.breakers.mark("chat-0", State.DOWN)
    engines.startable.clear()
    assert wiring.failover.needs_start(route, version) is False
    assert stopped(table, metrics, None).failover.needs_start(route, version) is False


async def test_run_starts_the_engine_then_calls_it(table: RouteTable, metrics: Metrics) -> None:
    engines = FakeEngines({CHAT_URL})
    wiring = stopped(table, metrics, engines)
    record = RequestRecord(request_id="r")
    route, choice = wiring.router.resolve("chat", "chat", None)

    async def attempt(replica: Replica) -> str:
        assert engines.started == [CHAT_URL]
        assert engines.active[CHAT_URL] == 1  # the engine control knows a request is on it
        return replica.id

    result, _ = await wiring.failover.run(route, choice.version, record, attempt)

    assert result == "chat-0"
    assert engines.active[CHAT_URL] == 0
