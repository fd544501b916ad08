from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from gateway.errors import (
    EngineConnectError,
    EngineError,
    EngineStatusError,
    EngineTimeoutError,
    EngineUnavailableError,
    GatewayError,
    ModelNotFoundError,
)
from gateway.metrics import Metrics
from gateway.protocol.chat import ChatCompletionRequest
from gateway.record import RequestRecord
from gateway.routing.breaker import Breakers, State
from gateway.routing.load import Loads
from gateway.routing.router import Router
from gateway.routing.table import RouteTable
from gateway.services.caps import Caps
from gateway.services.chat import ChatService, ChatStream
from gateway.services.failover import Failover
from gateway.services.leases import Leases
from gateway.services.shadow import ShadowSender
from gateway.upstream import KEEPALIVE, UpstreamReply
from tests.unit.conftest import CHAT_URL
from tests.unit.fakes import (
    FakeEngines,
    FakeEventStream,
    FakeUpstream,
    Item,
    Wiring,
    chunk,
    usage_chunk,
    wire,
)
from tests.unit.samples import metric_total

MESSAGES = [{"role": "user", "content": "hi"}]
QUIET = 30.0  # keep-alive interval of streams that are not about keep-alives

Service = Callable[[FakeUpstream], ChatService]


def body(**fields: Any) -> bytes:
    return orjson.dumps({"model": "chat", "messages": MESSAGES, **fields})


def build(
    router: Router, failover: Failover, leases: Leases, upstream: FakeUpstream, metrics: Metrics
) -> ChatService:
    shadows = ShadowSender(router, upstream, metrics)  # type: ignore[arg-type]
    return ChatService(router, failover, leases, upstream, metrics, shadows, Caps())  # type: ignore[arg-type]


@pytest.fixture
def service(router: Router, failover: Failover, leases: Leases, metrics: Metrics) -> Service:
    """A chat service over the shared routing pieces, answering from the given upstream."""
    return lambda upstream: build(router, failover, leases, upstream, metrics)


async def complete(chat: ChatService, record: RequestRecord, raw: bytes) -> dict[str, Any]:
    data, request = chat.prepare(raw, record)
    answer: dict[str, Any] = orjson.loads(await chat.complete(data, request, record, {}))
    return answer


async def open_stream(
    chat: ChatService, record: RequestRecord, keepalive: float = QUIET, **fields: Any
) -> tuple[ChatStream, dict[str, Any], ChatCompletionRequest]:
    data, request = chat.prepare(body(stream=True, **fields), record)
    return await chat.open_stream(data, request, record, {}, keepalive), data, request


async def collect(stream: ChatStream) -> list[dict[str, Any]]:
    try:
        return [orjson.loads(payload) async for payload in stream]
    finally:
        await stream.aclose()


# --- prepare -------------------------------------------------------------------------------------


def test_prepare_notes_model_and_stream_on_the_record(service: Service, record: RequestRecord) -> None:
    chat = service(FakeUpstream())

    data, request = chat.prepare(body(stream=True, top_k=3), record)

    assert record.model == "chat"
    assert record.stream is True
    assert data["top_k"] == 3
    assert request.stream is True


# --- non-streaming -------------------------------------------------------------------------------


def completion(finish: str | None = "stop", model: str = "engine-chat") -> UpstreamReply:
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": finish}
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
    }
    return UpstreamReply(200, orjson.dumps(answer))


async def test_complete_sends_the_served_name_and_answers_with_the_public_name(
    service: Service, record: RequestRecord
) -> None:
    upstream = FakeUpstream(reply=completion())

    answer = await complete(service(upstream), record, body(top_k=40))

    base_url, path, sent = upstream.calls[0]
    assert base_url == CHAT_URL
    assert path == "/v1/chat/completions"
    assert sent["model"] == "engine-chat"
    assert sent["top_k"] == 40  # extras reach the engine
    assert "stream_options" not in sent
    assert answer["model"] == "chat"
    assert answer["choices"][0]["message"]["content"] == "Paris"
    assert (record.prompt_tokens, record.completion_tokens) == (11, 3)
    assert record.replica == "chat-0"
    assert record.public_model == "chat"


async def test_complete_releases_the_in_flight_count(
    service: Service, loads: Loads, record: RequestRecord
) -> None:
    await complete(service(FakeUpstream(reply=completion())), record, body())

    assert loads.in_flight("chat-0") == 0


@pytest.mark.parametrize("finish", ["abort", "error"])
async def test_complete_does_not_pass_an_engine_abort_as_an_answer(
    service: Service, record: RequestRecord, finish: str
) -> None:
    chat = service(FakeUpstream(reply=completion(finish=finish)))

    with pytest.raises(GatewayError) as info:
        await complete(chat, record, body())
    assert info.value.status >= 500


@pytest.mark.parametrize("finish", ["abort", "error"])
async def test_complete_reports_an_engine_abort_as_an_engine_error(
    service: Service, record: RequestRecord, finish: str
) -> None:
    chat = service(FakeUpstream(reply=completion(finish=finish)))

    with pytest.raises(EngineError) as info:
        await complete(chat, record, body())
    assert info.value.status == 502


async def test_complete_rejects_an_unreadable_engine_answer_as_an_engine_error(
    service: Service, record: RequestRecord
) -> None:
    chat = service(FakeUpstream(reply=UpstreamReply(200, b"{truncated")))

    with pytest.raises(EngineError) as info:
        await complete(chat, record, body())
    assert info.value.status == 502


async def test_complete_relays_an_engine_4xx_as_a_client_error(
    service: Service, record: RequestRecord
) -> None:
    engine_body = orjson.dumps(
        {
            "error": {
                "message": "This model's maximum context length is 4096",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
        }
    )
    upstream = FakeUpstream(reply=UpstreamReply(400, engine_body))

    with pytest.raises(EngineStatusError) as info:
        await complete(service(upstream), record, body())
    assert info.value.status == 400
    assert "maximum context length" in info.value.message
    assert len(upstream.calls) == 1  # a client error is not retried


async def test_complete_marks_an_unreachable_engine_down(
    service: Service, breakers: Breakers, loads: Loads, record: RequestRecord
) -> None:
    chat = service(FakeUpstream(error=EngineConnectError("the engine is unreachable")))

    with pytest.raises(EngineUnavailableError) as info:
        await complete(chat, record, body())

    assert info.value.retry_after is not None
    assert "127.0.0.1" not in info.value.message
    assert breakers.state("chat-0") is State.DOWN
    assert loads.in_flight("chat-0") == 0


async def test_complete_for_an_unknown_model_never_calls_the_engine(
    service: Service, record: RequestRecord
) -> None:
    upstream = FakeUpstream(reply=completion())

    with pytest.raises(ModelNotFoundError):
        await complete(
            service(upstream),
            record,
            orjson.dumps({"model": "other", "messages": MESSAGES}),
        )
    assert upstream.calls == []


# --- streaming: what is asked of the engine ------------------------------------------------------


async def test_stream_always_asks_the_engine_for_usage_and_keeps_other_stream_options(
    service: Service, record: RequestRecord
) -> None:
    upstream = FakeUpstream(stream=FakeEventStream([]))
    chat = service(upstream)

    stream, _, _ = await open_stream(chat, record, stream_options={"continuous_usage_stats": False})
    await stream.aclose()

    assert upstream.sent["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}
    assert upstream.sent["model"] == "engine-chat"


async def test_stream_open_error_status_raises_before_the_first_byte(
    service: Service, loads: Loads, record: RequestRecord
) -> None:
    reply = UpstreamReply(
        400, b'{"error":{"message":"bad","type":"BadRequestError","param":null,"code":400}}'
    )
    chat = service(FakeUpstream(reply=reply))

    with pytest.raises(EngineStatusError) as info:
        await open_stream(chat, record)

    assert info.value.status == 400
    assert loads.in_flight("chat-0") == 0


async def test_stream_open_timeout_propagates_and_frees_the_replica(
    service: Service, breakers: Breakers, loads: Loads, record: RequestRecord
) -> None:
    chat = service(FakeUpstream(error=EngineTimeoutError("slow")))

    with pytest.raises(EngineTimeoutError):
        await open_stream(chat, record)

    assert loads.in_flight("chat-0") == 0
    assert breakers.state("chat-0") is State.UP


# --- streaming: the relay ------------------------------------------------------------------------


async def test_usage_chunk_is_dropped_when_the_client_did_not_ask_but_still_counted(
    service: Service, record: RequestRecord
) -> None:
    events = [chunk("Hel"), chunk("lo"), chunk(finish="stop"), usage_chunk(9, 2)]
    chat = service(FakeUpstream(stream=FakeEventStream(events)))

    stream, _, _ = await open_stream(chat, record)
    received = await collect(stream)

    assert len(received) == 3
    assert all(event["choices"] for event in received)
    assert not any("usage" in event for event in received)
    assert (record.prompt_tokens, record.completion_tokens) == (9, 2)


async def test_usage_chunk_is_kept_when_the_client_asked(service: Service, record: RequestRecord) -> None:
    events = [chunk("Hi"), chunk(finish="stop"), usage_chunk(9, 2)]
    chat = service(FakeUpstream(stream=FakeEventStream(events)))

    stream, _, _ = await open_stream(chat, record, stream_options={"include_usage": True})
    received = await collect(stream)

    assert len(received) == 3
    assert received[-1]["choices"] == []
    assert received[-1]["usage"]["prompt_tokens"] == 9
    assert (record.prompt_tokens, record.completion_tokens) == (9, 2)


async def test_every_relayed_chunk_carries_the_public_model_name(
    service: Service, record: RequestRecord
) -> None:
    events = [chunk("a"), chunk("b", model="chat"), chunk(finish="stop"), usage_chunk(1, 2)]
    chat = service(FakeUpstream(stream=FakeEventStream(events)))

    stream, _, _ = await open_stream(chat, record, stream_options={"include_usage": True})
    received = await collect(stream)

    assert [event["model"] for event in received] == ["chat"] * 4
    assert [e["choices"][0]["delta"].get("content") for e in received[:2]] == ["a", "b"]


async def test_relay_notes_time_to_first_token(
    service: Service, metrics: Metrics, record: RequestRecord
) -> None:
    chat = service(FakeUpstream(stream=FakeEventStream([chunk("a"), chunk(finish="stop")])))

    stream, _, _ = await open_stream(chat, record)
    await collect(stream)

    assert record.ttft_s is not None and record.ttft_s >= 0
    assert metric_total(metrics, "offload_time_to_first_token_seconds_count", model="chat") == 1


@pytest.mark.parametrize("finish", ["abort", "error"])
async def test_engine_abort_becomes_an_in_band_error_and_ends_the_stream(
    service: Service, record: RequestRecord, finish: str
) -> None:
    events = [chunk("a"), chunk(finish=finish), chunk("never sent"), usage_chunk(1, 1)]
    upstream_stream = FakeEventStream(events)
    chat = service(FakeUpstream(stream=upstream_stream))

    stream, _, _ = await open_stream(chat, record)
    received = await collect(stream)

    assert len(received) == 2
    assert received[0]["choices"][0]["delta"]["content"] == "a"
    error = received[1]["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"
    assert error["code"] == "engine_error"
    assert upstream_stream.close_calls >= 1


async def test_engine_error_raised_mid_stream_becomes_an_in_band_error(
    service: Service, breakers: Breakers, record: RequestRecord
) -> None:
    events: list[Item] = [
        chunk("a"),
        EngineError("the engine connection broke while streaming"),
        chunk("never sent"),
    ]
    chat = service(FakeUpstream(stream=FakeEventStream(events)))

    stream, _, _ = await open_stream(chat, record)
    received = await collect(stream)

    assert len(received) == 2
    assert received[1]["error"]["message"] == "the engine connection broke while streaming"
    assert received[1]["error"]["code"] == "engine_error"
    assert record.error_type == "engine_error"
    assert breakers.snapshot("chat-0").failures == 1  # a broken stream counts against the replica


async def test_engine_error_event_becomes_a_generic_in_band_error(
    service: Service, record: RequestRecord
) -> None:
    engine_event = {
        "error": {"message": "worker crashed at 127.0.0.9", "type": "InternalServerError", "code": 500}
    }
    chat = service(FakeUpstream(stream=FakeEventStream([chunk("a"), engine_event, chunk("b")])))

    stream, _, _ = await open_stream(chat, record)
    received = await collect(stream)

    assert len(received) == 2
    assert received[1]["error"]["type"] == "server_error"
    assert "127.0.0.9" not in received[1]["error"]["message"]


async def test_non_object_payloads_are_skipped(service: Service, record: RequestRecord) -> None:
    events: list[Item] = [b"[1, 2]", chunk("a"), b'"text"', chunk(finish="stop")]
    chat = service(FakeUpstream(stream=FakeEventStream(events)))

    stream, _, _ = await open_stream(chat, record)
    received = await collect(stream)

    assert len(received) == 2


async def test_malformed_engine_payload_becomes_an_in_band_error(
    service: Service, record: RequestRecord
) -> None:
    chat = service(FakeUpstream(stream=FakeEventStream([chunk("a"), b"{not json"])))

    stream, _, _ = await open_stream(chat, record)
    received = await collect(stream)

    assert received[-1]["error"]["type"] == "server_error"


async def test_the_events_of_one_engine_read_leave_as_one_batch(
    service: Service, record: RequestRecord
) -> None:
    read = [chunk("a"), chunk("b"), chunk(finish="stop"), usage_chunk(3, 3)]
    chat = service(FakeUpstream(stream=FakeEventStream([chunk(), read])))

    stream, _, _ = await open_stream(chat, record)
    try:
        batches = [[orjson.loads(p) for p in batch] async for batch in stream.batches()]
    finally:
        await stream.aclose()

    # the usage chunk the client did not ask for is dropped from the read, the rest stays together
    assert [len(batch) for batch in batches] == [1, 3]
    assert [c["choices"][0]["delta"].get("content") for c in batches[1][:2]] == ["a", "b"]
    assert record.completion_tokens == 3


async def test_a_bad_event_inside_a_read_still_delivers_the_events_before_it(
    service: Service, record: RequestRecord
) -> None:
    chat = service(FakeUpstream(stream=FakeEventStream([[chunk("a"), chunk("b"), b"{not json", chunk("c")]])))

    stream, _, _ = await open_stream(chat, record)
    received = await collect(stream)

    assert [c["choices"][0]["delta"]["content"] for c in received[:2]] == ["a", "b"]
    assert received[2]["error"]["type"] == "server_error" and len(received) == 3


@pytest.mark.parametrize(
    "failure",
    [chunk(finish="abort"), {"error": {"message": "boom", "type": "InternalServerError", "code": 500}}],
    ids=["abort", "error-event"],
)
async def test_a_stream_that_fails_in_band_is_recorded_as_an_error(
    service: Service, record: RequestRecord, failure: dict[str, Any]
) -> None:
    chat = service(FakeUpstream(stream=FakeEventStream([chunk("a"), failure])))

    stream, _, _ = await open_stream(chat, record)
    await collect(stream)

    assert record.error_type is not None


# --- streaming: closing --------------------------------------------------------------------------


async def test_replica_counts_in_flight_until_the_stream_is_closed(
    service: Service, loads: Loads, record: RequestRecord
) -> None:
    chat = service(FakeUpstream(stream=FakeEventStream([chunk("a"), chunk(finish="stop")])))

    stream, _, _ = await open_stream(chat, record)
    assert loads.in_flight("chat-0") == 1
    async for _ in stream:
        assert loads.in_flight("chat-0") == 1
    await stream.aclose()

    assert loads.in_flight("chat-0") == 0


async def test_aclose_closes_the_upstream_even_if_iteration_never_started(
    service: Service, loads: Loads, record: RequestRecord
) -> None:
    upstream_stream = FakeEventStream([chunk("a")])
    chat = service(FakeUpstream(stream=upstream_stream))

    stream, _, _ = await open_stream(chat, record)
    await stream.aclose()

    assert upstream_stream.started is False
    assert upstream_stream.close_calls >= 1
    assert loads.in_flight("chat-0") == 0


async def test_aclose_is_idempotent_and_releases_the_replica_once(
    service: Service, loads: Loads, record: RequestRecord
) -> None:
    chat = service(FakeUpstream(stream=FakeEventStream([chunk("a")])))
    stream, _, _ = await open_stream(chat, record)
    loads.begin("chat-0")  # another request on the same replica

    await stream.aclose()
    await stream.aclose()

    assert loads.in_flight("chat-0") == 1


async def test_aclose_mid_stream_closes_the_upstream_and_stops_relaying(
    service: Service, loads: Loads, record: RequestRecord
) -> None:
    upstream_stream = FakeEventStream([chunk("a"), chunk("b"), chunk("c")])
    chat = service(FakeUpstream(stream=upstream_stream))
    stream, _, _ = await open_stream(chat, record)

    iterator = aiter(stream)
    first = await anext(iterator)
    await stream.aclose()

    assert orjson.loads(first)["choices"][0]["delta"]["content"] == "a"
    assert upstream_stream.close_calls >= 1
    assert loads.in_flight("chat-0") == 0
    with pytest.raises(StopAsyncIteration):
        await anext(iterator)


async def test_aclose_while_the_engine_is_silent_cancels_the_pending_read(
    service: Service, record: RequestRecord
) -> None:
    upstream_stream = FakeEventStream([chunk("a"), None])
    chat = service(FakeUpstream(stream=upstream_stream))
    stream, _, _ = await open_stream(chat, record)
    iterator = aiter(stream)
    await anext(iterator)
    reader = asyncio.ensure_future(anext(iterator))
    await asyncio.wait_for(upstream_stream.silent.wait(), timeout=2)

    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await stream.aclose()

    assert upstream_stream.cancelled is True
    assert upstream_stream.close_calls >= 1


async def test_engine_keepalive_markers_are_passed_to_the_transport(
    service: Service, record: RequestRecord
) -> None:
    events: list[Item] = [chunk("a"), KEEPALIVE, chunk(finish="stop")]
    chat = service(FakeUpstream(stream=FakeEventStream(events)))

    stream, _, _ = await open_stream(chat, record)
    try:
        received = [payload async for payload in stream]
    finally:
        await stream.aclose()

    assert len(received) == 3
    assert received[1] == KEEPALIVE


# --- streaming: an engine loaded on demand -------------------------------------------------------


class HangingOpen(FakeUpstream):
    """An engine that accepts the connection but never starts its answer."""

    def __init__(self) -> None:
        super().__init__()
        self.opening = asyncio.Event()
        self.cancelled = False

    async def open_stream(self, base_url: str, path: str, body: bytes) -> UpstreamReply | FakeEventStream:
        self.calls.append((base_url, path, orjson.loads(body)))
        self.opening.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("not cancelled")


def on_demand(
    table: RouteTable, metrics: Metrics, engines: FakeEngines, upstream: FakeUpstream, max_waiting: int = 256
) -> tuple[ChatService, Wiring]:
    """A chat service whose only engine is stopped and can be started on demand."""
    breakers = Breakers()
    breakers.mark("chat-0", State.DOWN)
    w = wire(table, metrics, breakers=breakers, engines=engines, on_demand_max_waiting=max_waiting)
    return build(w.router, w.failover, w.leases, upstream, metrics), w


def released(w: Wiring, engines: FakeEngines) -> bool:
    """Nothing is held on the engine any more."""
    return w.loads.in_flight("chat-0") == 0 and not any(engines.active.values())


async def test_a_stream_whose_engine_must_load_sends_keepalives_then_the_engines_payloads(
    table: RouteTable, metrics: Metrics, record: RequestRecord
) -> None:
    gate = asyncio.Event()
    engines = FakeEngines({CHAT_URL}, gate=gate)
    upstream = FakeUpstream(stream=FakeEventStream([chunk("a"), chunk("b"), chunk(finish="stop")]))
    chat, w = on_demand(table, metrics, engines, upstream)

    stream, _, _ = await open_stream(chat, record, keepalive=0.01)
    assert engines.started == [], "the stream comes back at once and loads while iterated"
    iterator = aiter(stream)
    try:
        async with asyncio.timeout(5):
            assert await anext(iterator) == KEEPALIVE
            assert await anext(iterator) == KEEPALIVE
            assert engines.started == [CHAT_URL]
            assert upstream.calls == []  # nothing is asked of the engine before it has loaded
            gate.set()
            payload = KEEPALIVE
            while payload == KEEPALIVE:  # a keep-alive may still be due while the stream opens
                payload = await anext(iterator)
            assert w.loads.in_flight("chat-0") == 1
            assert engines.active[CHAT_URL] == 1
            rest = [p async for p in iterator]
    finally:
        await stream.aclose()

    received = [orjson.loads(payload)] + [orjson.loads(p) for p in rest]
    assert KEEPALIVE not in rest
    assert [e["choices"][0]["delta"].get("content") for e in received] == ["a", "b", None]
    assert all(e["model"] == "chat" for e in received)
    assert upstream.sent["model"] == "engine-chat"
    assert upstream.sent["stream_options"] == {"include_usage": True}
    assert (record.replica, record.public_model) == ("chat-0", "chat")
    assert record.ttft_s is not None
    assert w.breakers.state("chat-0") is State.UP
    assert released(w, engines)


async def test_a_stream_whose_engine_does_not_load_before_a_ping_raises_its_error(
    table: RouteTable, metrics: Metrics, record: RequestRecord
) -> None:
    # Nothing was sent yet: the error is raised, so the client gets a real 503, not a 200 stream.
    engines = FakeEngines({CHAT_URL}, starts=False)
    upstream = FakeUpstream()
    chat, w = on_demand(table, metrics, engines, upstream)

    stream, _, _ = await open_stream(chat, record)
    assert stream.waiting
    with pytest.raises(EngineUnavailableError, match="did not load in time"):
        await collect(stream)
    await stream.aclose()

    assert upstream.calls == []
    assert released(w, engines)


async def test_a_load_that_fails_after_keepalives_ends_with_one_in_band_error(
    table: RouteTable, metrics: Metrics, record: RequestRecord
) -> None:
    gate = asyncio.Event()
    engines = FakeEngines({CHAT_URL}, starts=False, gate=gate)
    chat, w = on_demand(table, metrics, engines, FakeUpstream())

    stream, _, _ = await open_stream(chat, record, keepalive=0.01)
    iterator = aiter(stream)
    try:
        async with asyncio.timeout(5):
            assert await anext(iterator) == KEEPALIVE
            gate.set()
            rest = [p async for p in iterator]
    finally:
        await stream.aclose()

    errors = [orjson.loads(p) for p in rest if p != KEEPALIVE]
    assert rest[-1] != KEEPALIVE
    assert len(errors) == 1
    assert errors[0]["error"]["code"] == "engine_unavailable"
    assert released(w, engines)


async def test_an_engine_that_loads_quickly_but_rejects_the_request_raises_its_error(
    table: RouteTable, metrics: Metrics, record: RequestRecord
) -> None:
    # Loaded before the first keep-alive: nothing was sent, so the engine's 400 is the answer's status.
    engines = FakeEngines({CHAT_URL})
    reply = UpstreamReply(
        400, b'{"error":{"message":"too long","type":"BadRequestError","param":null,"code":400}}'
    )
    chat, w = on_demand(table, metrics, engines, FakeUpstream(reply=reply))

    stream, _, _ = await open_stream(chat, record)
    with pytest.raises(EngineStatusError) as raised:
        await collect(stream)
    await stream.aclose()

    assert (raised.value.status, raised.value.message, raised.value.code) == (
        400,
        "too long",
        "invalid_request",
    )
    assert w.breakers.state("chat-0") is State.UP  # the engine works; the request was wrong
    assert released(w, engines)


async def test_aclose_before_iterating_a_stream_that_must_load_starts_nothing(
    table: RouteTable, metrics: Metrics, record: RequestRecord
) -> None:
    engines = FakeEngines({CHAT_URL})
    upstream = FakeUpstream(stream=FakeEventStream([chunk("a")]))
    chat, w = on_demand(table, metrics, engines, upstream)

    stream, _, _ = await open_stream(chat, record)
    await stream.aclose()
    await stream.aclose()

    assert [p async for p in stream] == []
    assert engines.started == []
    assert upstream.calls == []
    assert released(w, engines)


async def test_aclose_while_the_engine_loads_cancels_the_load(
    table: RouteTable, metrics: Metrics, record: RequestRecord
) -> None:
    engines = FakeEngines({CHAT_URL}, gate=asyncio.Event())
    upstream = FakeUpstream(stream=FakeEventStream([chunk("a")]))
    chat, w = on_demand(table, metrics, engines, upstream, max_waiting=1)

    stream, _, _ = await open_stream(chat, record, keepalive=0.01)
    assert await asyncio.wait_for(anext(aiter(stream)), timeout=5) == KEEPALIVE
    assert engines.started == [CHAT_URL]
    await asyncio.wait_for(stream.aclose(), timeout=5)

    assert engines.cancelled == 1
    assert upstream.calls == []
    assert w.breakers.state("chat-0") is State.DOWN
    assert released(w, engines)
    # The request no longer counts as waiting for the load: another one may wait.
    engines.gate = None
    route, choice = w.router.resolve("chat", "chat", None)
    pick = await w.failover.pick(route, choice.version, RequestRecord(request_id="next"))
    assert pick.replica.id == "chat-0"


async def test_aclose_while_the_engine_stream_opens_releases_everything(
    table: RouteTable, metrics: Metrics, record: RequestRecord
) -> None:
    engines = FakeEngines({CHAT_URL})
    upstream = HangingOpen()
    chat, w = on_demand(table, metrics, engines, upstream)

    stream, _, _ = await open_stream(chat, record, keepalive=0.01)
    assert await asyncio.wait_for(anext(aiter(stream)), timeout=5) == KEEPALIVE
    await asyncio.wait_for(upstream.opening.wait(), timeout=5)
    assert w.loads.in_flight("chat-0") == 1
    await asyncio.wait_for(stream.aclose(), timeout=5)

    assert upstream.cancelled is True
    assert released(w, engines)
    assert w.breakers.state("chat-0") is State.UP  # a cancelled call says nothing against the engine
    assert w.breakers.snapshot("chat-0").failures == 0


async def test_a_client_that_leaves_while_the_engine_loads_cancels_the_load(
    table: RouteTable, metrics: Metrics, record: RequestRecord
) -> None:
    engines = FakeEngines({CHAT_URL}, gate=asyncio.Event())
    upstream = FakeUpstream(stream=FakeEventStream([chunk("a")]))
    chat, w = on_demand(table, metrics, engines, upstream)
    stream, _, _ = await open_stream(chat, record)
    reader = asyncio.ensure_future(anext(aiter(stream)))
    await asyncio.wait_for(engines.loading.wait(), timeout=5)

    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await stream.aclose()

    assert engines.cancelled == 1
    assert upstream.calls == []
    assert released(w, engines)
