from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.config import parse_config
from gateway.errors import EngineConnectError
from gateway.metrics import Metrics
from gateway.record import RequestRecord
from gateway.routing.breaker import Breakers, State
from gateway.routing.router import Router
from gateway.routing.table import Route, RouteTable
from gateway.services.caps import Caps
from gateway.services.chat import ChatService
from gateway.services.shadow import ShadowSender
from gateway.upstream import UpstreamReply
from tests.unit.fakes import FakeUpstream, Wiring, wire
from tests.unit.samples import metric_total

V1 = "http://127.0.0.1:8001"
V2 = "http://127.0.0.2:8002"
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


def up(config: str, metrics: Metrics) -> Wiring:
    table = RouteTable.from_config(parse_config(config))
    breakers = Breakers()
    for replica in table.replicas():
        breakers.mark(replica.id, State.UP)
    return wire(table, metrics, breakers=breakers)


@pytest.fixture
def wiring(metrics: Metrics) -> Wiring:
    """chat v1 (primary) and v2 (shadowed at 100%), all UP."""
    return up(CONFIG, metrics)


@pytest.fixture
def router(wiring: Wiring) -> Router:
    return wiring.router


def route_of(router: Router) -> Route:
    route = router.table.get("chat")
    assert route is not None
    return route


async def settle(sender: ShadowSender) -> None:
    await asyncio.gather(*list(sender._tasks))


async def test_a_copy_goes_to_the_shadow_version_as_a_plain_request(router: Router, metrics: Metrics) -> None:
    upstream = FakeUpstream(reply=ANSWER)
    sender = ShadowSender(router, upstream, metrics)  # type: ignore[arg-type]
    route = route_of(router)

    sender.send(route, [route.versions["v2"]], "/v1/chat/completions", dict(DATA))
    await settle(sender)

    base_url, path, sent = upstream.calls[0]
    assert (base_url, path) == (V2, "/v1/chat/completions")
    assert sent["model"] == "chat-two"
    assert sent["stream"] is False
    assert "stream_options" not in sent
    assert sent["top_k"] == 3
    assert metric_total(metrics, "offload_shadow_requests_total", version="v2", outcome="ok") == 1


async def test_the_callers_data_is_not_changed_by_the_copy(router: Router, metrics: Metrics) -> None:
    sender = ShadowSender(router, FakeUpstream(reply=ANSWER), metrics)  # type: ignore[arg-type]
    data = dict(DATA)
    route = route_of(router)

    sender.send(route, [route.versions["v2"]], "/v1/chat/completions", data)
    await settle(sender)

    assert data == DATA


async def test_a_shadow_without_a_healthy_replica_is_skipped(router: Router, metrics: Metrics) -> None:
    upstream = FakeUpstream(reply=ANSWER)
    sender = ShadowSender(router, upstream, metrics)  # type: ignore[arg-type]
    router.breakers.mark("chat-v2-0", State.DOWN)
    route = route_of(router)

    sender.send(route, [route.versions["v2"]], "/v1/chat/completions", dict(DATA))
    await settle(sender)

    assert upstream.calls == []
    assert metric_total(metrics, "offload_shadow_requests_total", version="v2", outcome="skipped") == 1


async def test_copies_beyond_the_limit_are_skipped(router: Router, metrics: Metrics) -> None:
    upstream = FakeUpstream(reply=ANSWER)
    sender = ShadowSender(router, upstream, metrics, limit=0)  # type: ignore[arg-type]
    route = route_of(router)

    sender.send(route, [route.versions["v2"]], "/v1/chat/completions", dict(DATA))

    assert sender._tasks == set()
    assert metric_total(metrics, "offload_shadow_requests_total", outcome="skipped") == 1


async def test_a_failing_shadow_is_counted_and_never_raises(router: Router, metrics: Metrics) -> None:
    sender = ShadowSender(router, FakeUpstream(error=EngineConnectError("down")), metrics)  # type: ignore[arg-type]
    route = route_of(router)

    sender.send(route, [route.versions["v2"]], "/v1/chat/completions", dict(DATA))
    await settle(sender)

    assert (
        metric_total(metrics, "offload_shadow_requests_total", version="v2", outcome="engine_unavailable")
        == 1
    )


async def test_close_cancels_copies_still_running(router: Router, metrics: Metrics) -> None:
    started = asyncio.Event()

    class Hanging(FakeUpstream):
        async def post_json(self, base_url: str, path: str, body: bytes) -> UpstreamReply:
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("not cancelled")

    sender = ShadowSender(router, Hanging(), metrics)  # type: ignore[arg-type]
    route = route_of(router)
    sender.send(route, [route.versions["v2"]], "/v1/chat/completions", dict(DATA))
    await started.wait()

    await asyncio.wait_for(sender.close(), timeout=2)

    assert all(task.done() for task in sender._tasks)


async def test_chat_answers_from_the_primary_and_shadows_the_request(
    wiring: Wiring, metrics: Metrics
) -> None:
    upstream = FakeUpstream(reply=ANSWER)
    router = wiring.router
    shadows = ShadowSender(router, upstream, metrics)  # type: ignore[arg-type]
    chat = ChatService(router, wiring.failover, wiring.leases, upstream, metrics, shadows, Caps())  # type: ignore[arg-type]
    record = RequestRecord(request_id="req-shadow", route="/v1/chat/completions")
    data, request = chat.prepare(orjson.dumps({"model": "chat", "messages": DATA["messages"]}), record)

    answer = orjson.loads(await chat.complete(data, request, record, {}))
    await settle(shadows)

    assert answer["model"] == "chat:v1"
    assert record.public_model == "chat:v1"
    assert sorted(url for url, _, _ in upstream.calls) == [V1, V2]


async def test_a_copy_goes_to_the_least_loaded_healthy_replica_of_the_shadow_version(
    metrics: Metrics,
) -> None:
    busy, idle = "http://127.0.0.2:8002", "http://127.0.0.3:8002"
    config = CONFIG.replace(
        f'{{url: "{V2}", served_name: chat-two}}', f'{{url: "{busy}"}}, {{url: "{idle}"}}'
    )
    wiring = up(config, metrics)
    wiring.loads.begin("chat-v2-0")
    upstream = FakeUpstream(reply=ANSWER)
    sender = ShadowSender(wiring.router, upstream, metrics)  # type: ignore[arg-type]
    route = route_of(wiring.router)

    sender.send(route, [route.versions["v2"]], "/v1/chat/completions", dict(DATA))
    await settle(sender)
    wiring.breakers.mark("chat-v2-1", State.DOWN)
    sender.send(route, [route.versions["v2"]], "/v1/chat/completions", dict(DATA))
    await settle(sender)

    assert [url for url, _, _ in upstream.calls] == [idle, busy]
    assert metric_total(metrics, "offload_shadow_requests_total", replica="chat-v2-1", outcome="ok") == 1
    assert metric_total(metrics, "offload_shadow_requests_total", replica="chat-v2-0", outcome="ok") == 1
