"""Engines started on the first request (``on_demand``): the dispatcher's side of it."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.metrics import Metrics
from gateway.routing.health import HealthRegistry, State
from gateway.routing.table import RouteTable
from gateway.record import RequestRecord
from gateway.services.chat import ChatService, ChatStream
from gateway.services.dispatch import Dispatcher
from gateway.errors import EngineUnavailableError
from gateway.services.shadow import ShadowSender
from tests.unit.conftest import CHAT_URL
from tests.unit.fakes import FakeUpstream


class FakeEngines:
    """An EngineControl whose engines start (or not) as told."""

    def __init__(self, startable: set[str], starts: bool = True, gate: asyncio.Event | None = None) -> None:
        self.startable = startable
        self.starts = starts
        self.gate = gate
        self.started: list[str] = []
        self.active: dict[str, int] = {}

    def can_start(self, base_url: str) -> bool:
        return base_url in self.startable

    async def ensure_running(self, base_url: str, timeout: float) -> bool:
        self.started.append(base_url)
        if self.gate is not None:
            await self.gate.wait()
        if self.starts:
            self.startable.discard(base_url)
        return self.starts

    def begin(self, base_url: str) -> None:
        self.active[base_url] = self.active.get(base_url, 0) + 1

    def end(self, base_url: str) -> None:
        self.active[base_url] -= 1

    def describe(self) -> list[dict[str, Any]]:
        return []

    async def act(self, name: str, action: str) -> None:
        raise KeyError(name)

    def log_tail(self, name: str, lines: int) -> list[str]:
        raise KeyError(name)


def stopped(table: RouteTable, metrics: Metrics, engines: FakeEngines | None, **kwargs: Any) -> Dispatcher:
    """A dispatcher whose chat replica is down (its engine stopped)."""
    health = HealthRegistry()
    health.mark("chat-0", State.DOWN)
    return Dispatcher(table, health, metrics, retry_after=4, engines=engines, **kwargs)  # type: ignore[arg-type]


async def choose(dispatcher: Dispatcher) -> str:
    record = RequestRecord(request_id="r")
    route, choice = dispatcher.resolve("chat", "chat", None, record)
    _, replica = await dispatcher.choose_or_start(route, choice.version, record)
    return replica.id


async def test_a_stopped_on_demand_engine_is_started_for_the_request(
    table: RouteTable, metrics: Metrics
) -> None:
    engines = FakeEngines({CHAT_URL})
    dispatcher = stopped(table, metrics, engines)

    assert await choose(dispatcher) == "chat-0"

    assert engines.started == [CHAT_URL]
    assert dispatcher.health.state("chat-0") is State.UP


async def test_an_engine_that_does_not_load_in_time_is_a_503(table: RouteTable, metrics: Metrics) -> None:
    dispatcher = stopped(table, metrics, FakeEngines({CHAT_URL}, starts=False))

    with pytest.raises(EngineUnavailableError) as info:
        await choose(dispatcher)

    assert info.value.retry_after == 4
    assert "did not load in time" in info.value.message
    assert dispatcher.health.state("chat-0") is State.DOWN


async def test_without_engine_control_a_down_replica_is_a_503(table: RouteTable, metrics: Metrics) -> None:
    with pytest.raises(EngineUnavailableError, match="no engine ready"):
        await choose(stopped(table, metrics, None))


async def test_an_engine_that_cannot_be_started_is_a_503(table: RouteTable, metrics: Metrics) -> None:
    engines = FakeEngines(set())

    with pytest.raises(EngineUnavailableError, match="no engine ready"):
        await choose(stopped(table, metrics, engines))
    assert engines.started == []


async def test_waiting_requests_are_bounded(table: RouteTable, metrics: Metrics) -> None:
    gate = asyncio.Event()
    dispatcher = stopped(table, metrics, FakeEngines({CHAT_URL}, gate=gate), on_demand_max_waiting=1)
    first = asyncio.ensure_future(choose(dispatcher))
    await asyncio.sleep(0.01)

    with pytest.raises(EngineUnavailableError, match="Too many requests are waiting"):
        await choose(dispatcher)
    gate.set()

    assert await first == "chat-0"


async def test_needs_start_only_when_nothing_serves_and_an_engine_can_start(
    table: RouteTable, metrics: Metrics
) -> None:
    engines = FakeEngines({CHAT_URL})
    dispatcher = stopped(table, metrics, engines)
    route, _ = dispatcher.route("chat", "chat")
    version = route.versions[""]

    assert dispatcher.needs_start(route, version) is True
    dispatcher.health.mark("chat-0", State.UP)
    assert dispatcher.needs_start(route, version) is False
    assert stopped(table, metrics, None).needs_start(route, version) is False


async def test_calls_and_streams_are_reported_to_the_engine_control(
    table: RouteTable, metrics: Metrics
) -> None:
    engines = FakeEngines(set())
    dispatcher = stopped(table, metrics, engines)
    replica = table.replicas()[0]

    with dispatcher.calling(replica):
        assert engines.active[CHAT_URL] == 1
    release = dispatcher.hold(replica)
    assert engines.active[CHAT_URL] == 1
    release()

    assert engines.active[CHAT_URL] == 0
    assert dispatcher.health.in_flight("chat-0") == 0


async def test_a_lazy_stream_that_cannot_load_sends_the_error_in_band(
    table: RouteTable, metrics: Metrics
) -> None:
    dispatcher = stopped(table, metrics, FakeEngines({CHAT_URL}, starts=False))
    upstream = FakeUpstream()
    chat = ChatService(dispatcher, upstream, metrics, ShadowSender(dispatcher, upstream, metrics))  # type: ignore[arg-type]
    record = RequestRecord(request_id="r")
    data, request = chat.prepare(
        orjson.dumps({"model": "chat", "messages": [{"role": "user", "content": "x"}], "stream": True}),
        record,
    )

    opened = await chat.open_stream(data, request, record, {})
    assert not isinstance(opened, ChatStream), "expected a lazy stream for an engine that must load"
    payloads = [orjson.loads(p) async for p in opened]

    assert len(payloads) == 1
    assert payloads[0]["error"]["code"] == "engine_unavailable"
    assert record.error_type == "engine_unavailable"
    assert upstream.calls == []
