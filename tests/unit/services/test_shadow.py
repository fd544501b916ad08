from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.config import parse_config
from gateway.metrics import Metrics
from gateway.routing.health import HealthRegistry, State
from gateway.routing.table import Route, RouteTable
from gateway.record import RequestRecord
from gateway.services.chat import ChatService
from gateway.services.dispatch import Dispatcher
from gateway.services.shadow import ShadowSender
from gateway.upstream import UpstreamReply
from gateway.errors import EngineConnectError
from tests.unit.fakes import FakeUpstream
from tests.unit.samples import metric_total

V1 = "http://10.0.1.1:8000"
V2 = "http://10.0.2.1:8000"
CONFIG = f"""
models:
  - name: chat
    task: chat
    versions:
      v1: {{weight: 1, engines: [{{url: "{V1}", served_name: chat-one}}]}}
      v2: {{weight: 0, shadow: 100, engines: [{{url: "{V2}", served_name: chat-two}}]}}
"""
DATA = {
    "model": "chat",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "stream_options": {"include_usage": True},
    "top_k": 3,
}
ANSWER = UpstreamReply(
    200,
    orjson.dumps(
        {
            "model": "x",
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}
            ],
        }
    ),
)


@pytest.fixture
def dispatcher(metrics: Metrics) -> Dispatcher:
    table = RouteTable.from_config(parse_config(CONFIG))
    health = HealthRegistry()
    for replica in table.replicas():
        health.mark(replica.id, State.UP)
    return Dispatcher(table, health, metrics, retry_after=1)


def route_of(dispatcher: Dispatcher) -> Route:
    route = dispatcher.table.get("chat")
    assert route is not None
    return route


async def settle(sender: ShadowSender) -> None:
    await asyncio.gather(*list(sender._tasks))


async def test_a_copy_goes_to_the_shadow_version_as_a_plain_request(
    dispatcher: Dispatcher, metrics: Metrics
) -> None:
    upstream = FakeUpstream(reply=ANSWER)
    sender = ShadowSender(dispatcher, upstream, metrics)  # type: ignore[arg-type]
    route = route_of(dispatcher)

    sender.send(route, [route.versions["v2"]], "/v1/chat/completions", dict(DATA))
    await settle(sender)

    base_url, path, sent = upstream.calls[0]
    assert (base_url, path) == (V2, "/v1/chat/completions")
    assert sent["model"] == "chat-two"
    assert sent["stream"] is False
    assert "stream_options" not in sent
    assert sent["top_k"] == 3
    assert metric_total(metrics, "offload_shadow_requests_total", version="v2", outcome="ok") == 1


async def test_the_callers_data_is_not_changed_by_the_copy(dispatcher: Dispatcher, metrics: Metrics) -> None:
    sender = ShadowSender(dispatcher, FakeUpstream(reply=ANSWER), metrics)  # type: ignore[arg-type]
    data = dict(DATA)
    route = route_of(dispatcher)

    sender.send(route, [route.versions["v2"]], "/v1/chat/completions", data)
    await settle(sender)

    assert data == DATA


async def test_a_shadow_without_a_healthy_replica_is_skipped(
    dispatcher: Dispatcher, metrics: Metrics
) -> None:
    upstream = FakeUpstream(reply=ANSWER)
    sender = ShadowSender(dispatcher, upstream, metrics)  # type: ignore[arg-type]
    dispatcher.health.mark("chat-v2-0", State.DOWN)
    route = route_of(dispatcher)

    sender.send(route, [route.versions["v2"]], "/v1/chat/completions", dict(DATA))
    await settle(sender)

    assert upstream.calls == []
    assert metric_total(metrics, "offload_shadow_requests_total", version="v2", outcome="skipped") == 1


async def test_copies_beyond_the_limit_are_skipped(dispatcher: Dispatcher, metrics: Metrics) -> None:
    upstream = FakeUpstream(reply=ANSWER)
    sender = ShadowSender(dispatcher, upstream, metrics, limit=0)  # type: ignore[arg-type]
    route = route_of(dispatcher)

    sender.send(route, [route.versions["v2"]], "/v1/chat/completions", dict(DATA))

    assert sender._tasks == set()
    assert metric_total(metrics, "offload_shadow_requests_total", outcome="skipped") == 1


async def test_a_failing_shadow_is_counted_and_never_raises(dispatcher: Dispatcher, metrics: Metrics) -> None:
    sender = ShadowSender(dispatcher, FakeUpstream(error=EngineConnectError("down")), metrics)  # type: ignore[arg-type]
    route = route_of(dispatcher)

    sender.send(route, [route.versions["v2"]], "/v1/chat/completions", dict(DATA))
    await settle(sender)

    assert (
        metric_total(metrics, "offload_shadow_requests_total", version="v2", outcome="engine_unavailable")
        == 1
    )


async def test_close_cancels_copies_still_running(dispatcher: Dispatcher, metrics: Metrics) -> None:
    started = asyncio.Event()

    class Hanging(FakeUpstream):
        async def post_json(self, base_url: str, path: str, body: bytes) -> UpstreamReply:
            started.set()
            await asyncio.sleep(30)
            raise AssertionError("not cancelled")

    sender = ShadowSender(dispatcher, Hanging(), metrics)  # type: ignore[arg-type]
    route = route_of(dispatcher)
    sender.send(route, [route.versions["v2"]], "/v1/chat/completions", dict(DATA))
    await started.wait()

    await asyncio.wait_for(sender.close(), timeout=2)

    assert all(task.done() for task in sender._tasks)


async def test_chat_answers_from_the_primary_and_shadows_the_request(
    dispatcher: Dispatcher, metrics: Metrics
) -> None:
    upstream = FakeUpstream(reply=ANSWER)
    shadows = ShadowSender(dispatcher, upstream, metrics)  # type: ignore[arg-type]
    chat = ChatService(dispatcher, upstream, metrics, shadows)  # type: ignore[arg-type]
    record = RequestRecord(request_id="req-shadow", route="/v1/chat/completions")
    data, request = chat.prepare(orjson.dumps({"model": "chat", "messages": DATA["messages"]}), record)

    answer = orjson.loads(await chat.complete(data, request, record, {}))
    await settle(shadows)

    assert answer["model"] == "chat:v1"
    assert record.public_model == "chat:v1"
    assert sorted(url for url, _, _ in upstream.calls) == [V1, V2]
