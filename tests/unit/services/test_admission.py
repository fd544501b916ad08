"""The fair queue in front of a model version: slots, weighted order, held slots, bounds."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.config import AdmissionConfig, EngineConfig, LocalEngine, ModelConfig, OffloadConfig
from gateway.errors import EngineUnavailableError, RateLimitError
from gateway.metrics import Metrics
from gateway.record import RequestRecord
from gateway.routing.breaker import Breakers, State
from gateway.routing.table import RouteTable, Version
from gateway.services.admission import Admission, Gate
from gateway.services.caps import Caps
from gateway.services.chat import ChatService, ChatStream
from gateway.services.shadow import ShadowSender
from gateway.upstream import KEEPALIVE, UpstreamReply
from tests.unit.conftest import CHAT_URL
from tests.unit.fakes import FakeEventStream, FakeUpstream, chunk, wire
from tests.unit.samples import metric_total

MESSAGES = [{"role": "user", "content": "hi"}]


def gate(capacity: int, metrics: Metrics | None = None, **settings: float) -> Gate:
    config = AdmissionConfig(**{"hold": 0, **settings})  # type: ignore[arg-type]
    return Gate(("chat", "-"), capacity, config, metrics or Metrics())


async def queue(g: Gate, key: str, weight: float = 1.0) -> asyncio.Task[None]:
    """A request of ``key`` waiting for a slot (it is queued when this returns)."""
    assert not g.try_enter(key, weight)
    task = asyncio.create_task(g.wait(key, weight))
    await asyncio.sleep(0)  # the task runs up to its wait
    return task


async def granted(tasks: list[tuple[str, asyncio.Task[None]]]) -> list[str]:
    """The keys of the tasks that got a slot, once the loop has run them."""
    for _ in range(3):
        await asyncio.sleep(0)
    return [key for key, task in tasks if task.done() and task.exception() is None]


async def test_slots_are_taken_at_once_up_to_capacity_then_requests_wait() -> None:
    g = gate(2)
    assert g.try_enter("a", 1) and g.try_enter("b", 1)
    assert not g.try_enter("a", 1)
    waiting = await queue(g, "a")
    assert not waiting.done()

    g.leave("b")
    await waiting
    assert (g.in_flight, g.queued) == (2, 0)


async def test_a_freed_slot_goes_to_the_waiting_key_with_the_fewest_slots() -> None:
    g = gate(4)
    for _ in range(4):
        assert g.try_enter("flood", 1)
    tasks = [("flood", await queue(g, "flood")) for _ in range(5)]
    tasks += [("b", await queue(g, "b")) for _ in range(2)]  # queued last, served first

    g.leave("flood")
    assert await granted(tasks) == ["b"]
    g.leave("flood")
    assert await granted(tasks) == ["b", "b"]
    g.leave("flood")
    assert await granted(tasks) == ["flood", "b", "b"]  # b has nothing left waiting
    for _, task in tasks:
        task.cancel()


async def test_slots_are_shared_by_weight_when_every_key_has_work_waiting() -> None:
    g = gate(4)
    for _ in range(4):
        assert g.try_enter("light", 1)
    tasks = [(key, await queue(g, key, w)) for key, w in (("heavy", 3), ("light", 1)) for _ in range(8)]
    left = {"heavy": 0, "light": 4}  # requests of each key that ended (light's four held slots first)

    def holding() -> dict[str, int]:
        done = {"heavy": 0, "light": 4}
        for key, task in tasks:
            done[key] += task.done()
        return {key: done[key] - left[key] for key in done}

    for _ in range(4):
        g.leave("light")
    await granted(tasks)
    assert holding() == {"heavy": 3, "light": 1}
    for key in ("heavy", "light", "heavy", "heavy", "light", "heavy"):  # requests end; others go in
        g.leave(key)
        left[key] += 1
        await granted(tasks)
        assert holding() == {"heavy": 3, "light": 1}
    for _, task in tasks:
        task.cancel()


async def test_a_key_alone_uses_every_slot() -> None:
    g = gate(3)
    assert all(g.try_enter("only", 0.1) for _ in range(3))
    assert not g.try_enter("only", 0.1)


async def test_a_slot_freed_below_a_keys_share_is_held_for_its_next_request() -> None:
    g = gate(2, hold=30)
    assert g.try_enter("flood", 1) and g.try_enter("b", 1)
    flood = await queue(g, "flood")

    g.leave("b")  # b (share 1, holding 1) frees its slot while flood waits: kept for b
    await asyncio.sleep(0)
    assert not flood.done() and g.held == 1
    assert g.try_enter("b", 1)  # b's next request takes it at once, ahead of the queue
    assert (g.held, g.in_flight, g.queued) == (0, 2, 1)
    flood.cancel()


async def test_a_held_slot_that_is_not_taken_goes_to_the_queue() -> None:
    g = gate(2, hold=0.01)
    assert g.try_enter("flood", 1) and g.try_enter("b", 1)
    flood = await queue(g, "flood")
    g.leave("b")
    async with asyncio.timeout(5):
        await flood  # the hold ran out
    assert (g.held, g.in_flight) == (0, 2)


async def test_a_key_over_its_share_gets_no_held_slot() -> None:
    g = gate(2, hold=30)
    assert g.try_enter("flood", 1) and g.try_enter("flood", 1)
    b = await queue(g, "b")
    g.leave("flood")
    await b  # flood held all slots: the freed one goes straight to b
    assert g.held == 0


async def test_a_wait_past_the_deadline_is_refused_503_when_the_model_is_saturated() -> None:
    metrics = Metrics()
    g = gate(1, metrics, queue_timeout=0.01)
    assert g.try_enter("a", 1)
    with pytest.raises(EngineUnavailableError, match="saturated") as raised:
        await g.wait("a", 1)
    assert raised.value.retry_after is not None and raised.value.retry_after >= 1
    assert (g.queued, g.in_flight) == (0, 1)
    assert metric_total(metrics, "offload_admission_refused_total", reason="timeout") == 1


async def test_a_wait_past_the_deadline_is_refused_429_for_a_key_over_its_share() -> None:
    metrics = Metrics()
    g = gate(3, metrics, queue_timeout=0.01)
    assert g.try_enter("flood", 1) and g.try_enter("flood", 1) and g.try_enter("b", 1)
    with pytest.raises(RateLimitError, match="share"):
        await g.wait("flood", 1)  # flood holds 2 of 3 slots, its share is 1.5
    assert metric_total(metrics, "offload_admission_refused_total", reason="over_share") == 1


async def test_a_full_queue_pushes_out_the_newest_request_of_the_key_furthest_over_its_share() -> None:
    g = gate(1, queue_size=2)
    assert g.try_enter("flood", 1)
    first, newest = await queue(g, "flood"), await queue(g, "flood")
    b = await queue(g, "b")  # the queue is full: flood's newest waiter makes room

    with pytest.raises(RateLimitError):
        await newest
    assert not first.done() and not b.done() and g.queued == 2
    with pytest.raises(RateLimitError):
        await g.wait("flood", 1)  # flood itself is the key furthest over: refused outright
    for task in (first, b):
        task.cancel()


async def test_a_cancelled_wait_leaves_nothing_behind() -> None:
    g = gate(1)
    assert g.try_enter("a", 1)
    gone = await queue(g, "b")
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert g.queued == 0
    g.leave("a")
    assert (g.in_flight, g.queued) == (0, 0)
    assert g.try_enter("c", 1)


async def test_a_wait_cancelled_after_its_grant_hands_the_slot_on() -> None:
    g = gate(1)
    assert g.try_enter("a", 1)
    cancelled, next_one = await queue(g, "b"), await queue(g, "c")
    g.leave("a")  # grants b's future; b's task has not run yet
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    async with asyncio.timeout(5):
        await next_one
    assert (g.in_flight, g.queued) == (1, 0)


async def test_more_capacity_lets_waiting_requests_in() -> None:
    g = gate(1)
    assert g.try_enter("a", 1)
    waiting = await queue(g, "a")
    g.resize(2)
    async with asyncio.timeout(5):
        await waiting


def _version(model: ModelConfig) -> Version:
    return RouteTable.from_config(OffloadConfig(models=(model,))).get(model.name).versions[""]  # type: ignore[union-attr]


def test_the_gate_of_a_version_has_its_replicas_times_their_limit() -> None:
    admission = Admission(AdmissionConfig(), Metrics())
    urls = tuple(EngineConfig(url=f"http://127.0.0.1:{p}") for p in (9, 19))
    limited = _version(ModelConfig(name="m", task="chat", engines=urls, max_in_flight=3))
    gate = admission.gate(limited)
    assert gate is not None and gate.capacity == 6
    assert admission.gate(limited) is gate

    assert admission.gate(_version(ModelConfig(name="u", task="chat", engines=urls))) is None


def test_a_local_engines_batch_size_is_its_default_limit() -> None:
    def local(**kw: int) -> ModelConfig:
        return ModelConfig(
            name="m", task="chat", engine=EngineConfig(local=LocalEngine(model="m", port=1, **kw))
        )

    assert _version(local(max_num_seqs=8)).max_in_flight == 8
    assert _version(local()).max_in_flight == 128  # vLLM's default on CPU


# --- the chat service behind a gate ----------------------------------------------------------------


def queued_chat(metrics: Metrics, upstream: FakeUpstream, timeout: float = 30.0) -> tuple[ChatService, Gate]:
    """A chat service whose one replica takes one request at a time."""
    engine = EngineConfig(url=CHAT_URL, served_name="engine-chat")
    model = ModelConfig(name="chat", task="chat", engine=engine, max_in_flight=1)
    table = RouteTable.from_config(OffloadConfig(models=(model,)))
    breakers = Breakers()
    breakers.mark("chat-0", State.UP)
    w = wire(table, metrics, breakers=breakers)
    admission = Admission(AdmissionConfig(queue_timeout=timeout, hold=0), metrics)
    shadows = ShadowSender(w.router, upstream, metrics)  # type: ignore[arg-type]
    chat = ChatService(w.router, w.failover, w.leases, upstream, metrics, shadows, Caps(), admission)  # type: ignore[arg-type]
    version = table.get("chat").versions[""]  # type: ignore[union-attr]
    gate = admission.gate(version)
    assert gate is not None
    return chat, gate


async def start(chat: ChatService, keepalive: float = 30.0) -> ChatStream:
    record = RequestRecord(request_id="r")
    data, request = chat.prepare(
        orjson.dumps({"model": "chat", "messages": MESSAGES, "stream": True}), record
    )
    return await chat.open_stream(data, request, record, {}, keepalive)


async def test_a_stream_that_waits_for_a_slot_pings_then_streams_once_admitted(metrics: Metrics) -> None:
    upstream = FakeUpstream(stream=FakeEventStream([chunk("a"), chunk(finish="stop")]))
    chat, gate = queued_chat(metrics, upstream)
    first = await start(chat)
    assert not first.waiting and gate.in_flight == 1

    second = await start(chat, keepalive=0.01)
    assert second.waiting
    events = aiter(second)
    async with asyncio.timeout(5):
        assert await anext(events) == KEEPALIVE  # waiting: pings, nothing sent to the engine
        assert len(upstream.calls) == 1
        await first.aclose()
        payloads = [p async for p in events if p]
    assert [orjson.loads(p)["choices"][0]["delta"].get("content") for p in payloads] == ["a", None]
    await second.aclose()
    assert (gate.in_flight, gate.queued) == (0, 0)


async def test_a_stream_refused_before_its_first_ping_raises_the_refusal(metrics: Metrics) -> None:
    upstream = FakeUpstream(stream=FakeEventStream([chunk("a")]))
    chat, gate = queued_chat(metrics, upstream, timeout=0.01)
    first = await start(chat)

    second = await start(chat)
    with pytest.raises(EngineUnavailableError, match="saturated"):
        async for _ in second:
            pass
    await second.aclose()
    await first.aclose()
    assert (gate.in_flight, gate.queued, len(upstream.calls)) == (0, 0, 1)


async def test_a_completion_waits_for_a_slot_and_frees_it(metrics: Metrics) -> None:
    answer = {"model": "engine-chat", "choices": [{"index": 0, "finish_reason": "stop"}], "usage": {}}
    upstream = FakeUpstream(reply=UpstreamReply(200, orjson.dumps(answer)))
    chat, gate = queued_chat(metrics, upstream)
    assert gate.try_enter("other", 1)  # another request holds the one slot
    record = RequestRecord(request_id="c")
    data, request = chat.prepare(orjson.dumps({"model": "chat", "messages": MESSAGES}), record)

    waiting = asyncio.create_task(chat.complete(data, request, record, {}))
    await asyncio.sleep(0)
    assert gate.queued == 1 and not upstream.calls
    gate.leave("other")
    async with asyncio.timeout(5):
        assert orjson.loads(await waiting)["model"] == "chat"
    assert (gate.in_flight, gate.queued) == (0, 0)
