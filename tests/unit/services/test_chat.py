from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.metrics import Metrics
from gateway.protocol.chat import ChatCompletionRequest
from gateway.routing.health import HealthRegistry, State
from gateway.record import RequestRecord
from gateway.services.chat import ChatService, ChatStream
from gateway.services.dispatch import Dispatcher
from gateway.errors import (
    EngineError,
    EngineStatusError,
    EngineTimeoutError,
    EngineUnavailableError,
    GatewayError,
    ModelNotFoundError,
)
from gateway.services.shadow import ShadowSender
from gateway.upstream import UpstreamReply
from gateway.errors import EngineConnectError
from tests.unit.conftest import CHAT_URL
from tests.unit.fakes import FakeEventStream, FakeUpstream, chunk, usage_chunk
from tests.unit.samples import metric_total

MESSAGES = [{"role": "user", "content": "hi"}]


def body(**fields: Any) -> bytes:
    return orjson.dumps({"model": "chat", "messages": MESSAGES, **fields})


def service(dispatcher: Dispatcher, upstream: FakeUpstream, metrics: Metrics) -> ChatService:
    shadows = ShadowSender(dispatcher, upstream, metrics)  # type: ignore[arg-type]
    return ChatService(dispatcher, upstream, metrics, shadows)  # type: ignore[arg-type]


async def complete(chat: ChatService, record: RequestRecord, raw: bytes) -> dict[str, Any]:
    data, request = chat.prepare(raw, record)
    answer: dict[str, Any] = orjson.loads(await chat.complete(data, request, record, {}))
    return answer


async def open_stream(
    chat: ChatService, record: RequestRecord, **fields: Any
) -> tuple[ChatStream, dict[str, Any], ChatCompletionRequest]:
    data, request = chat.prepare(body(stream=True, **fields), record)
    return await chat.open_stream(data, request, record, {}), data, request


async def collect(stream: ChatStream) -> list[dict[str, Any]]:
    try:
        return [orjson.loads(payload) async for payload in stream]
    finally:
        await stream.aclose()


# --- prepare -------------------------------------------------------------------------------------


def test_prepare_notes_model_and_stream_on_the_record(
    dispatcher: Dispatcher, metrics: Metrics, record: RequestRecord
) -> None:
    chat = service(dispatcher, FakeUpstream(), metrics)

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
    dispatcher: Dispatcher, metrics: Metrics, record: RequestRecord
) -> None:
    upstream = FakeUpstream(reply=completion())

    answer = await complete(service(dispatcher, upstream, metrics), record, body(top_k=40))

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
    dispatcher: Dispatcher, health: HealthRegistry, metrics: Metrics, record: RequestRecord
) -> None:
    await complete(service(dispatcher, FakeUpstream(reply=completion()), metrics), record, body())

    assert health.in_flight("chat-0") == 0


@pytest.mark.parametrize("finish", ["abort", "error"])
async def test_complete_does_not_pass_an_engine_abort_as_an_answer(
    dispatcher: Dispatcher, metrics: Metrics, record: RequestRecord, finish: str
) -> None:
    chat = service(dispatcher, FakeUpstream(reply=completion(finish=finish)), metrics)

    with pytest.raises(GatewayError) as info:
        await complete(chat, record, body())
    assert info.value.status >= 500


@pytest.mark.parametrize("finish", ["abort", "error"])
async def test_complete_reports_an_engine_abort_as_an_engine_error(
    dispatcher: Dispatcher, metrics: Metrics, record: RequestRecord, finish: str
) -> None:
    chat = service(dispatcher, FakeUpstream(reply=completion(finish=finish)), metrics)

    with pytest.raises(EngineError) as info:
        await complete(chat, record, body())
    assert info.value.status == 502


async def test_complete_rejects_an_unreadable_engine_answer_as_an_engine_error(
    dispatcher: Dispatcher, metrics: Metrics, record: RequestRecord
) -> None:
    chat = service(dispatcher, FakeUpstream(reply=UpstreamReply(200, b"{truncated")), metrics)

    with pytest.raises(EngineError) as info:
        await complete(chat, record, body())
    assert info.value.status == 502


async def test_complete_relays_an_engine_4xx_as_a_client_error(
    dispatcher: Dispatcher, metrics: Metrics, record: RequestRecord
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
        await complete(service(dispatcher, upstream, metrics), record, body())
    assert info.value.status == 400
    assert "maximum context length" in info.value.message
    assert len(upstream.calls) == 1  # a client error is not retried


async def test_complete_marks_an_unreachable_engine_down(
    dispatcher: Dispatcher, health: HealthRegistry, metrics: Metrics, record: RequestRecord
) -> None:
    chat = service(dispatcher, FakeUpstream(error=EngineConnectError("the engine is unreachable")), metrics)

    with pytest.raises(EngineUnavailableError) as info:
        await complete(chat, record, body())

    assert info.value.retry_after is not None
    assert "10.1.2.3" not in info.value.message
    assert health.state("chat-0") is State.DOWN
    assert health.in_flight("chat-0") == 0


async def test_complete_for_an_unknown_model_never_calls_the_engine(
    dispatcher: Dispatcher, metrics: Metrics, record: RequestRecord
) -> None:
    upstream = FakeUpstream(reply=completion())

    with pytest.raises(ModelNotFoundError):
        await complete(
            service(dispatcher, upstream, metrics),
            record,
            orjson.dumps({"model": "other", "messages": MESSAGES}),
        )
    assert upstream.calls == []


# --- streaming: what is asked of the engine ------------------------------------------------------


async def test_stream_always_asks_the_engine_for_usage_and_keeps_other_stream_options(
    dispatcher: Dispatcher, metrics: Metrics, record: RequestRecord
) -> None:
    upstream = FakeUpstream(stream=FakeEventStream([]))
    chat = service(dispatcher, upstream, metrics)

    stream, _, _ = await open_stream(chat, record, stream_options={"continuous_usage_stats": False})
    await stream.aclose()

    assert upstream.sent["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}
    assert upstream.sent["model"] == "engine-chat"


async def test_stream_open_error_status_raises_before_the_first_byte(
    dispatcher: Dispatcher, health: HealthRegistry, metrics: Metrics, record: RequestRecord
) -> None:
    reply = UpstreamReply(
        400, b'{"error":{"message":"bad","type":"BadRequestError","param":null,"code":400}}'
    )
    chat = service(dispatcher, FakeUpstream(reply=reply), metrics)

    with pytest.raises(EngineStatusError) as info:
        await open_stream(chat, record)

    assert info.value.status == 400
    assert health.in_flight("chat-0") == 0


async def test_stream_open_timeout_propagates_and_frees_the_replica(
    dispatcher: Dispatcher, health: HealthRegistry, metrics: Metrics, record: RequestRecord
) -> None:
    chat = service(dispatcher, FakeUpstream(error=EngineTimeoutError("slow")), metrics)

    with pytest.raises(EngineTimeoutError):
        await open_stream(chat, record)

    assert health.in_flight("chat-0") == 0
    assert health.state("chat-0") is State.UP


# --- streaming: the relay ------------------------------------------------------------------------


async def test_usage_chunk_is_dropped_when_the_client_did_not_ask_but_still_counted(
    dispatcher: Dispatcher, metrics: Metrics, record: RequestRecord
) -> None:
    events = [chunk("Hel"), chunk("lo"), chunk(finish="stop"), usage_chunk(9, 2)]
    chat = service(dispatcher, FakeUpstream(stream=FakeEventStream(events)), metrics)

    stream, _, _ = await open_stream(chat, record)
    received = await collect(stream)

    assert len(received) == 3
    assert all(event["choices"] for event in received)
    assert not any("usage" in event for event in received)
    assert (record.prompt_tokens, record.completion_tokens) == (9, 2)


async def test_usage_chunk_is_kept_when_the_client_asked(
    dispatcher: Dispatcher, metrics: Metrics, record: RequestRecord
) -> None:
    events = [chunk("Hi"), chunk(finish="stop"), usage_chunk(9, 2)]
    chat = service(dispatcher, FakeUpstream(stream=FakeEventStream(events)), metrics)

    stream, _, _ = await open_stream(chat, record, stream_options={"include_usage": True})
    received = await collect(stream)

    assert len(received) == 3
    assert received[-1]["choices"] == []
    assert received[-1]["usage"]["prompt_tokens"] == 9
    assert (record.prompt_tokens, record.completion_tokens) == (9, 2)


async def test_every_relayed_chunk_carries_the_public_model_name(
    dispatcher: Dispatcher, metrics: Metrics, record: RequestRecord
) -> None:
    events = [chunk("a"), chunk("b", model="chat"), chunk(finish="stop"), usage_chunk(1, 2)]
    chat = service(dispatcher, FakeUpstream(stream=FakeEventStream(events)), metrics)

    stream, _, _ = await open_stream(chat, record, stream_options={"include_usage": True})
    received = await collect(stream)

    assert [event["model"] for event in received] == ["chat"] * 4
    assert [e["choices"][0]["delta"].get("content") for e in received[:2]] == ["a", "b"]


async def test_relay_notes_time_to_first_token(
    dispatcher: Dispatcher, metrics: Metrics, record: RequestRecord
) -> None:
    chat = service(
        dispatcher, FakeUpstream(stream=FakeEventStream([chunk("a"), chunk(finish="stop")])), metrics
    )

    stream, _, _ = await open_stream(chat, record)
    await collect(stream)

    assert record.ttft_s is not None and record.ttft_s >= 0
    assert metric_total(metrics, "offload_time_to_first_token_seconds_count", model="chat") == 1


@pytest.mark.parametrize("finish", ["abort", "error"])
async def test_engine_abort_becomes_an_in_band_error_and_ends_the_stream(
    dispatcher: Dispatcher, metrics: Metrics, record: RequestRecord, finish: str
) -> None:
    events = [chunk("a"), chunk(finish=finish), chunk("never sent"), usage_chunk(1, 1)]
    upstream_stream = FakeEventStream(events)
    chat = service(dispatcher, FakeUpstream(stream=upstream_stream), metrics)

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
    dispatcher: Dispatcher, health: HealthRegistry, metrics: Metrics, record: RequestRecord
) -> None:
    events = [chunk("a"), EngineError("the engine connection broke while streaming"), chunk("never sent")]
    chat = service(dispatcher, FakeUpstream(stream=FakeEventStream(events)), metrics)

    stream, _, _ = await open_stream(chat, record)
    received = await collect(stream)

    assert len(received) == 2
    assert received[1]["error"]["message"] == "the engine connection broke while streaming"
    assert received[1]["error"]["code"] == "engine_error"
    assert record.error_type == "engine_error"
    assert health.snapshot("chat-0").failures == 1  # a broken stream counts against the replica


async def test_engine_error_event_becomes_a_generic_in_band_error(
    dispatcher: Dispatcher, metrics: Metrics, record: RequestRecord
) -> None:
    engine_event = {
        "error": {"message": "worker crashed at 10.9.9.9", "type": "InternalServerError", "code": 500}
    }
    chat = service(
        dispatcher, FakeUpstream(stream=FakeEventStream([chunk("a"), engine_event, chunk("b")])), metrics
    )

    stream, _, _ = await open_stream(chat, record)
    received = await collect(stream)

    assert len(received) == 2
    assert received[1]["error"]["type"] == "server_error"
    assert "10.9.9.9" not in received[1]["error"]["message"]


async def test_non_object_payloads_are_skipped(
    dispatcher: Dispatcher, metrics: Metrics, record: RequestRecord
) -> None:
    events = [b"[1, 2]", chunk("a"), b'"text"', chunk(finish="stop")]
    chat = service(dispatcher, FakeUpstream(stream=FakeEventStream(events)), metrics)

    stream, _, _ = await open_stream(chat, record)
    received = await collect(stream)

    assert len(received) == 2


async def test_malformed_engine_payload_becomes_an_in_band_error(
    dispatcher: Dispatcher, metrics: Metrics, record: RequestRecord
) -> None:
    chat = service(dispatcher, FakeUpstream(stream=FakeEventStream([chunk("a"), b"{not json"])), metrics)

    stream, _, _ = await open_stream(chat, record)
    received = await collect(stream)

    assert received[-1]["error"]["type"] == "server_error"


@pytest.mark.parametrize(
    "failure",
    [chunk(finish="abort"), {"error": {"message": "boom", "type": "InternalServerError", "code": 500}}],
    ids=["abort", "error-event"],
)
async def test_a_stream_that_fails_in_band_is_recorded_as_an_error(
    dispatcher: Dispatcher, metrics: Metrics, record: RequestRecord, failure: dict[str, Any]
) -> None:
    chat = service(dispatcher, FakeUpstream(stream=FakeEventStream([chunk("a"), failure])), metrics)

    stream, _, _ = await open_stream(chat, record)
    await collect(stream)

    assert record.error_type is not None


# --- streaming: closing --------------------------------------------------------------------------


async def test_replica_counts_in_flight_until_the_stream_is_closed(
    dispatcher: Dispatcher, health: HealthRegistry, metrics: Metrics, record: RequestRecord
) -> None:
    chat = service(
        dispatcher, FakeUpstream(stream=FakeEventStream([chunk("a"), chunk(finish="stop")])), metrics
    )

    stream, _, _ = await open_stream(chat, record)
    assert health.in_flight("chat-0") == 1
    async for _ in stream:
        assert health.in_flight("chat-0") == 1
    await stream.aclose()

    assert health.in_flight("chat-0") == 0


async def test_aclose_closes_the_upstream_even_if_iteration_never_started(
    dispatcher: Dispatcher, health: HealthRegistry, metrics: Metrics, record: RequestRecord
) -> None:
    upstream_stream = FakeEventStream([chunk("a")])
    chat = service(dispatcher, FakeUpstream(stream=upstream_stream), metrics)

    stream, _, _ = await open_stream(chat, record)
    await stream.aclose()

    assert upstream_stream.started is False
    assert upstream_stream.close_calls >= 1
    assert health.in_flight("chat-0") == 0


async def test_aclose_is_idempotent_and_releases_the_replica_once(
    dispatcher: Dispatcher, health: HealthRegistry, metrics: Metrics, record: RequestRecord
) -> None:
    chat = service(dispatcher, FakeUpstream(stream=FakeEventStream([chunk("a")])), metrics)
    stream, _, _ = await open_stream(chat, record)
    health.begin("chat-0")  # another request on the same replica

    await stream.aclose()
    await stream.aclose()

    assert health.in_flight("chat-0") == 1


async def test_aclose_mid_stream_closes_the_upstream_and_stops_relaying(
    dispatcher: Dispatcher, health: HealthRegistry, metrics: Metrics, record: RequestRecord
) -> None:
    upstream_stream = FakeEventStream([chunk("a"), chunk("b"), chunk("c")])
    chat = service(dispatcher, FakeUpstream(stream=upstream_stream), metrics)
    stream, _, _ = await open_stream(chat, record)

    iterator = aiter(stream)
    first = await anext(iterator)
    await stream.aclose()

    assert orjson.loads(first)["choices"][0]["delta"]["content"] == "a"
    assert upstream_stream.close_calls >= 1
    assert health.in_flight("chat-0") == 0
    with pytest.raises(StopAsyncIteration):
        await anext(iterator)


async def test_aclose_while_the_engine_is_silent_cancels_the_pending_read(
    dispatcher: Dispatcher, metrics: Metrics, record: RequestRecord
) -> None:
    upstream_stream = FakeEventStream([chunk("a"), None])
    chat = service(dispatcher, FakeUpstream(stream=upstream_stream), metrics)
    stream, _, _ = await open_stream(chat, record)
    iterator = aiter(stream)
    await anext(iterator)
    reader = asyncio.ensure_future(anext(iterator))
    await asyncio.sleep(0.01)

    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await stream.aclose()

    assert upstream_stream.cancelled is True
    assert upstream_stream.close_calls >= 1
