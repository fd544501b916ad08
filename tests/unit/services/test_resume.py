"""Resuming a stream broken mid-answer on another replica of its version (gateway/services/resume.py),
through the chat service, with scripted engine streams."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.config import EngineConfig, ModelConfig, OffloadConfig
from gateway.errors import EngineError
from gateway.metrics import Metrics
from gateway.record import RequestRecord
from gateway.routing.breaker import Breakers, State
from gateway.routing.table import RouteTable
from gateway.services.caps import Caps
from gateway.services.chat import ChatService
from gateway.services.resume import Resumer, Splice
from gateway.services.shadow import ShadowSender
from tests.unit.fakes import FakeEventStream, FakeUpstream, Wiring, chunk, usage_chunk, wire
from tests.unit.samples import metric_total

ONE, TWO, THREE = "http://127.0.0.1:9", "http://127.0.0.1:19", "http://127.0.0.1:29"
MESSAGES = [{"role": "user", "content": "count"}]
BREAK = EngineError("the engine connection broke while streaming")


def role_chunk() -> dict[str, Any]:
    event = chunk("")
    event["choices"][0]["delta"]["role"] = "assistant"
    event["id"], event["created"] = "chatcmpl-other", 1800000000
    return event


def service(
    metrics: Metrics,
    upstream: FakeUpstream,
    urls: tuple[str, ...] = (ONE, TWO),
    max_resumes: int = 2,
    **model: Any,
) -> tuple[ChatService, Wiring]:
    engines = tuple(EngineConfig(url=u, served_name="engine-chat") for u in urls)
    table = RouteTable.from_config(
        OffloadConfig(models=(ModelConfig(name="chat", task="chat", engines=engines, **model),))
    )
    breakers = Breakers()
    for replica in table.replicas():
        breakers.mark(replica.id, State.UP)
    w = wire(table, metrics, breakers=breakers)
    resumer = Resumer(w.router, upstream, w.leases, metrics, max_resumes, 600.0)  # type: ignore[arg-type]
    shadows = ShadowSender(w.router, upstream, metrics)  # type: ignore[arg-type]
    chat = ChatService(w.router, w.failover, w.leases, upstream, metrics, shadows, Caps(), None, resumer)  # type: ignore[arg-type]
    return chat, w


async def run(chat: ChatService, record: RequestRecord, **fields: Any) -> list[dict[str, Any]]:
    body = orjson.dumps({"model": "chat", "messages": MESSAGES, "stream": True, **fields})
    data, request = chat.prepare(body, record)
    stream = await chat.open_stream(data, request, record, {}, 30.0)
    try:
        return [orjson.loads(p) async for p in stream if p]
    finally:
        await stream.aclose()


def text(payloads: list[dict[str, Any]]) -> str:
    return "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p.get("choices"))


async def test_a_stream_broken_mid_answer_goes_on_from_another_replica_as_one_stream() -> None:
    metrics = Metrics()
    first = FakeEventStream(
        [role_chunk() | {"id": "chatcmpl-1", "created": 1700000000}, chunk("one "), chunk("two "), BREAK]
    )
    rest = FakeEventStream([role_chunk(), chunk("three"), chunk(finish="stop"), usage_chunk(12, 2)])
    upstream = FakeUpstream(per_url={ONE: first, TWO: rest})
    chat, w = service(metrics, upstream, policy="round_robin")
    record = RequestRecord(request_id="r")

    payloads = await run(chat, record, max_tokens=10, seed=7, stream_options={"include_usage": True})

    assert text(payloads) == "one two three"
    assert {(p["id"], p["created"], p["model"]) for p in payloads} == {("chatcmpl-1", 1700000000, "chat")}
    roles = [p for p in payloads if p["choices"] and "role" in p["choices"][0]["delta"]]
    assert len(roles) == 1  # the continuation's own role chunk is dropped
    finishes = [p["choices"][0]["finish_reason"] for p in payloads if p["choices"]]
    assert [f for f in finishes if f] == ["stop"]
    assert not any("error" in p for p in payloads)
    # usage as the client saw it: the 2 relayed tokens moved from the continuation's prompt
    assert payloads[-1]["usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
    assert (record.prompt_tokens, record.completion_tokens, record.resumes) == (10, 4, 1)

    (_, _, sent), (url, _, again) = upstream.calls
    assert url == TWO
    assert again["messages"] == [*MESSAGES, {"role": "assistant", "content": "one two "}]
    assert (again["continue_final_message"], again["add_generation_prompt"]) == (True, False)
    assert (again["max_tokens"], again["seed"]) == (8, 7)
    assert {
        k: v
        for k, v in again.items()
        if k not in ("messages", "max_tokens", "continue_final_message", "add_generation_prompt")
    } == {k: v for k, v in sent.items() if k not in ("messages", "max_tokens")}
    assert metric_total(metrics, "offload_stream_resumes_total", outcome="resumed") == 1
    assert metric_total(metrics, "offload_stream_resume_gap_seconds_count") == 1
    assert w.loads.in_flight("chat-0") == 0 and w.loads.in_flight("chat-1") == 0


async def test_a_stream_whose_replica_a_probe_takes_down_goes_on_from_another_at_once() -> None:
    metrics = Metrics()
    # The first engine goes silent with the connection open (a host gone without a reset): without
    # the probe, the stream would wait out the idle timeout.
    first = FakeEventStream([role_chunk() | {"id": "chatcmpl-1"}, chunk("one "), None])
    rest = FakeEventStream([role_chunk(), chunk("two"), chunk(finish="stop")])
    upstream = FakeUpstream(per_url={ONE: first, TWO: rest})
    chat, w = service(metrics, upstream, policy="round_robin")
    record = RequestRecord(request_id="r")
    body = orjson.dumps({"model": "chat", "messages": MESSAGES, "stream": True})
    data, request = chat.prepare(body, record)
    stream = await chat.open_stream(data, request, record, {}, 30.0)
    received: list[dict[str, Any]] = []

    async def read() -> None:
        async for payload in stream:
            if payload:
                received.append(orjson.loads(payload))

    reader = asyncio.create_task(read())
    try:
        await asyncio.wait_for(first.silent.wait(), 2)
        w.breakers.probe_failed(w.router.table.replicas()[0].id, refused=True, consecutive=1)
        await asyncio.wait_for(reader, 2)
    finally:
        await stream.aclose()

    assert text(received) == "one two" and not any("error" in p for p in received)
    assert [url for url, _, _ in upstream.calls] == [ONE, TWO]
    assert record.resumes == 1


async def test_a_stream_that_cannot_be_resumed_ends_in_band_as_before() -> None:
    metrics = Metrics()
    upstream = FakeUpstream(per_url={ONE: FakeEventStream([chunk("one "), BREAK])})
    chat, _ = service(metrics, upstream, urls=(ONE,))  # one replica: resume is off by default
    payloads = await run(chat, RequestRecord(request_id="r"))

    assert text(payloads) == "one "
    assert payloads[-1]["error"]["code"] == "engine_error"
    assert len(upstream.calls) == 1


@pytest.mark.parametrize(
    ("fields", "outcome"),
    [({"n": 2}, None), ({"logprobs": True}, None), ({"max_tokens": 1}, "nothing_left")],
)
async def test_requests_whose_continuation_cannot_be_exact_are_not_resumed(
    fields: dict[str, Any], outcome: str | None
) -> None:
    metrics = Metrics()
    upstream = FakeUpstream(
        per_url={ONE: FakeEventStream([chunk("one"), BREAK]), TWO: FakeEventStream([chunk("x")])}
    )
    chat, _ = service(metrics, upstream, policy="round_robin")
    payloads = await run(chat, RequestRecord(request_id="r"), **fields)

    assert payloads[-1]["error"]["code"] == "engine_error"
    assert len(upstream.calls) == 1
    if outcome is not None:
        assert metric_total(metrics, "offload_stream_resumes_total", outcome=outcome) == 1


async def test_a_stream_breaking_again_is_resumed_up_to_the_limit_then_ends_in_band() -> None:
    metrics = Metrics()
    upstream = FakeUpstream(
        per_url={
            ONE: FakeEventStream([chunk("a"), BREAK]),
            TWO: FakeEventStream([chunk("b"), BREAK]),
            THREE: FakeEventStream([chunk("c"), BREAK]),
        }
    )
    chat, _ = service(metrics, upstream, urls=(ONE, TWO, THREE), max_resumes=2, policy="round_robin")
    record = RequestRecord(request_id="r")
    payloads = await run(chat, record)

    letters = {ONE: "a", TWO: "b", THREE: "c"}
    order = [letters[c[0]] for c in upstream.calls]
    assert sorted(order) == ["a", "b", "c"]  # every replica once, whichever the router chose next
    assert text(payloads) == "".join(order)
    assert payloads[-1]["error"]["code"] == "engine_error"
    assert upstream.calls[2][2]["messages"][-1] == {"role": "assistant", "content": "".join(order[:2])}
    assert record.resumes == 2
    assert metric_total(metrics, "offload_stream_resumes_total", outcome="out_of_resumes") == 1


async def test_a_replica_that_refuses_the_continuation_ends_the_stream_in_band() -> None:
    from gateway.upstream import UpstreamReply

    metrics = Metrics()
    refusal = UpstreamReply(400, b'{"error": {"message": "continue_final_message not supported"}}')
    upstream = FakeUpstream(per_url={ONE: FakeEventStream([chunk("a"), BREAK]), TWO: refusal})
    chat, _ = service(metrics, upstream, policy="round_robin")
    payloads = await run(chat, RequestRecord(request_id="r"))

    assert payloads[-1]["error"]["code"] == "engine_error"
    assert metric_total(metrics, "offload_stream_resumes_total", outcome="refused") == 1


async def test_resume_can_be_turned_off_for_a_model() -> None:
    upstream = FakeUpstream(
        per_url={ONE: FakeEventStream([chunk("a"), BREAK]), TWO: FakeEventStream([chunk("b")])}
    )
    chat, _ = service(Metrics(), upstream, policy="round_robin", resume=False)
    payloads = await run(chat, RequestRecord(request_id="r"))

    assert payloads[-1]["error"]["code"] == "engine_error" and len(upstream.calls) == 1


def test_a_tool_call_makes_a_splice_inexact() -> None:
    splice = Splice()
    event = chunk()
    event["choices"][0]["delta"] = {"tool_calls": [{"index": 0, "function": {"name": "f"}}]}
    splice.note(event, event["choices"][0])
    assert not splice.exact
