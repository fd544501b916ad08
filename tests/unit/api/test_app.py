"""The HTTP surface, in process: Litestar's test client against create_app with unreachable engines."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from gateway.api.front import FrontDoor
from gateway.app import create_app
from gateway.config import EngineConfig, ModelConfig, OffloadConfig
from gateway.drain import Drain
from gateway.routing.breaker import State
from gateway.routing.router import Router
from gateway.settings import HealthSettings, LogSettings, ServerSettings, Settings
from tests.unit.fakes import FakeEngines, closed_port
from tests.unit.samples import exposition_total

RETRY_AFTER = 9
MAX_BODY = 2048
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def port() -> int:
    return closed_port()


@pytest.fixture(scope="module")
def app(port: int) -> FrontDoor:
    settings = Settings(
        server=ServerSettings(max_body_bytes=MAX_BODY),
        # A long interval: only the start-up probe runs during these tests.
        health=HealthSettings(probe_interval=600, probe_timeout=1, retry_after_seconds=RETRY_AFTER),
        log=LogSettings(access=False),
    )
    config = OffloadConfig(
        models=(
            ModelConfig(name="chat", task="chat", engine=EngineConfig(url=f"http://127.0.0.1:{port}")),
            ModelConfig(
                name="embed", task="embeddings", engine=EngineConfig(url=f"http://127.0.0.1:{port}/v1")
            ),
        )
    )
    return create_app(settings, config)


@pytest.fixture(scope="module")
async def client(app: FrontDoor) -> AsyncIterator[AsyncTestClient[FrontDoor]]:
    async with AsyncTestClient(app=app) as client:
        yield client


def app_router(app: FrontDoor) -> Router:
    """The app's router (white box: the only way to fake an engine coming up)."""
    assert isinstance(app.app, Litestar)
    router = app.app.dependencies["router"].dependency()
    assert isinstance(router, Router)
    return router


def assert_openai_error(body: dict[str, Any], type_: str, code: str | None) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == type_
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


# --- operations ----------------------------------------------------------------------------------


async def test_health_is_200_while_the_process_serves(client: AsyncTestClient[FrontDoor]) -> None:
    response = await client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_is_503_naming_models_without_a_healthy_engine(
    client: AsyncTestClient[FrontDoor],
) -> None:
    response = await client.get("/ready")

    assert response.status_code == 503
    assert response.json() == {"status": "not_ready", "models": {"chat": False, "embed": False}}


async def test_startup_probe_marks_an_engine_on_a_closed_port_down(
    client: AsyncTestClient[FrontDoor], app: FrontDoor
) -> None:
    router = app_router(app)

    assert router.breakers.state("chat-0") is State.DOWN
    assert router.breakers.state("embed-0") is State.DOWN


async def test_ready_is_200_and_degraded_while_some_model_can_be_served(
    client: AsyncTestClient[FrontDoor], app: FrontDoor
) -> None:
    router = app_router(app)
    try:
        router.breakers.mark("chat-0", State.UP)
        partly = await client.get("/ready")
        partly_all = await client.get("/ready", params={"all": "true"})
        router.breakers.mark("embed-0", State.UP)
        ready = await client.get("/ready")
        ready_all = await client.get("/ready", params={"all": "true"})
    finally:
        router.breakers.mark("chat-0", State.DOWN)
        router.breakers.mark("embed-0", State.DOWN)

    assert partly.status_code == 200
    assert partly.json() == {"status": "degraded", "models": {"chat": True, "embed": False}}
    assert partly_all.status_code == 503  # ?all=true: every model must be servable
    assert ready_all.status_code == 200 and ready_all.json()["status"] == "ready"
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "models": {"chat": True, "embed": True}}


async def test_models_list_has_the_openai_shape(client: AsyncTestClient[FrontDoor]) -> None:
    response = await client.get("/v1/models")

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["chat", "embed"]
    for card in body["data"]:
        assert card["object"] == "model"
        assert card["owned_by"] == "offload"
        assert isinstance(card["created"], int) and card["created"] > 0


async def test_one_model_is_retrievable_and_an_unknown_one_is_404(client: AsyncTestClient[FrontDoor]) -> None:
    found = await client.get("/v1/models/embed")
    missing = await client.get("/v1/models/gpt-4")

    assert found.status_code == 200
    assert found.json()["id"] == "embed"
    assert missing.status_code == 404
    assert_openai_error(missing.json(), "invalid_request_error", "model_not_found")


# --- request errors ------------------------------------------------------------------------------


async def test_malformed_json_is_a_400_in_openai_shape(client: AsyncTestClient[FrontDoor]) -> None:
    response = await client.post(
        "/v1/chat/completions", content=b'{"model": "chat",', headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert_openai_error(response.json(), "invalid_request_error", "invalid_json")


async def test_schema_violation_is_a_400_naming_the_field(client: AsyncTestClient[FrontDoor]) -> None:
    response = await client.post("/v1/chat/completions", json={**CHAT, "temperature": 5})

    assert response.status_code == 400
    assert_openai_error(response.json(), "invalid_request_error", "invalid_request")
    assert response.json()["error"]["param"] == "temperature"


async def test_unknown_model_is_a_404_model_not_found(client: AsyncTestClient[FrontDoor]) -> None:
    response = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4"})

    assert response.status_code == 404
    assert_openai_error(response.json(), "invalid_request_error", "model_not_found")
    assert response.json()["error"]["param"] == "model"


async def test_embedding_with_a_chat_model_is_a_400(client: AsyncTestClient[FrontDoor]) -> None:
    response = await client.post("/v1/embeddings", json={"model": "chat", "input": "x"})

    assert response.status_code == 400
    assert_openai_error(response.json(), "invalid_request_error", "invalid_request")


async def test_empty_embedding_input_is_a_400(client: AsyncTestClient[FrontDoor]) -> None:
    response = await client.post("/v1/embeddings", json={"model": "embed", "input": []})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"


async def test_unknown_route_is_a_404_in_openai_shape(client: AsyncTestClient[FrontDoor]) -> None:
    response = await client.get("/v1/completions/nothing-here")

    assert response.status_code == 404
    assert_openai_error(response.json(), "invalid_request_error", "not_found")


async def test_wrong_method_is_a_405_in_openai_shape(client: AsyncTestClient[FrontDoor]) -> None:
    response = await client.get("/v1/chat/completions")

    assert response.status_code == 405
    assert_openai_error(response.json(), "invalid_request_error", "method_not_allowed")


async def test_body_over_the_limit_is_a_413(client: AsyncTestClient[FrontDoor]) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * (MAX_BODY * 2)}]}

    response = await client.post("/v1/chat/completions", json=big)

    assert response.status_code == 413
    assert_openai_error(response.json(), "invalid_request_error", "request_too_large")


async def test_body_just_under_the_limit_is_read(client: AsyncTestClient[FrontDoor]) -> None:
    filler = "x" * (MAX_BODY - 200)
    body = orjson.dumps({**CHAT, "model": "gpt-4", "messages": [{"role": "user", "content": filler}]})
    assert len(body) < MAX_BODY

    response = await client.post("/v1/chat/completions", content=body)

    assert response.status_code == 404  # read and routed, not rejected for size


# --- engines that cannot serve --------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_without_a_healthy_engine_is_503_with_retry_after(
    client: AsyncTestClient[FrontDoor], port: int, stream: bool
) -> None:
    response = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})

    assert response.status_code == 503
    assert response.headers["retry-after"] == str(RETRY_AFTER)
    assert response.headers["content-type"].startswith("application/json")
    assert_openai_error(response.json(), "server_error", "engine_unavailable")
    assert "127.0.0.1" not in response.text
    assert str(port) not in response.text


@pytest.mark.parametrize(
    ("path", "payload", "replica"),
    [
        ("/v1/chat/completions", CHAT, "chat-0"),
        ("/v1/chat/completions", {**CHAT, "stream": True}, "chat-0"),
        ("/v1/embeddings", {"model": "embed", "input": "x"}, "embed-0"),
    ],
)
async def test_engine_believed_up_but_unreachable_is_503_and_marked_down(
    client: AsyncTestClient[FrontDoor],
    app: FrontDoor,
    port: int,
    path: str,
    payload: dict[str, Any],
    replica: str,
) -> None:
    router = app_router(app)
    router.breakers.mark(replica, State.UP)

    response = await client.post(path, json=payload)

    assert response.status_code == 503
    assert response.headers["retry-after"] == str(RETRY_AFTER)
    assert_openai_error(response.json(), "server_error", "engine_unavailable")
    assert "127.0.0.1" not in response.text
    assert str(port) not in response.text
    assert router.breakers.state(replica) is State.DOWN
    assert router.loads.in_flight(replica) == 0


# --- request ids and metrics ---------------------------------------------------------------------


async def test_request_id_is_echoed_when_sent(client: AsyncTestClient[FrontDoor]) -> None:
    response = await client.get("/v1/models", headers={"X-Request-Id": "trace-abc-123"})

    assert response.headers["x-request-id"] == "trace-abc-123"


async def test_request_id_is_generated_when_not_sent(client: AsyncTestClient[FrontDoor]) -> None:
    first = await client.get("/v1/models")
    second = await client.get("/v1/models")

    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_request_id_is_echoed_on_errors_too(client: AsyncTestClient[FrontDoor]) -> None:
    response = await client.post("/v1/chat/completions", content=b"{", headers={"X-Request-Id": "err-1"})

    assert response.status_code == 400
    assert response.headers["x-request-id"] == "err-1"


async def test_overlong_request_id_is_truncated(client: AsyncTestClient[FrontDoor]) -> None:
    response = await client.get("/v1/models", headers={"X-Request-Id": "a" * 500})

    assert response.headers["x-request-id"] == "a" * 128


async def test_metrics_count_requests_by_configured_model_only(client: AsyncTestClient[FrontDoor]) -> None:
    endpoint = "/v1/chat/completions"

    async def counts() -> tuple[float, float]:
        text = (await client.get("/metrics")).text
        served = exposition_total(
            text, "offload_requests_total", endpoint=endpoint, model="chat", status="503"
        )
        unknown = exposition_total(
            text, "offload_requests_total", endpoint=endpoint, model="unknown", status="404"
        )
        return served or 0.0, unknown or 0.0

    before = await counts()
    await client.post(endpoint, json=CHAT)
    await client.post(endpoint, json={**CHAT, "model": "client-made-up-name"})
    after = await counts()
    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    assert "client-made-up-name" not in response.text
    assert exposition_total(response.text, "offload_requests_in_flight", model="chat") == 0


async def test_probes_and_scrapes_are_not_counted_as_requests(client: AsyncTestClient[FrontDoor]) -> None:
    await client.get("/health")
    await client.get("/ready")

    text = (await client.get("/metrics")).text

    assert 'endpoint="/health"' not in text
    assert 'endpoint="/ready"' not in text
    assert 'endpoint="/metrics"' not in text


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/nothing-here"), ("GET", "/v1/chat/completions")])
async def test_request_id_is_echoed_on_routing_errors(
    client: AsyncTestClient[FrontDoor], method: str, path: str
) -> None:
    response = await client.request(method, path, headers={"X-Request-Id": "route-err"})

    assert response.status_code in (404, 405)
    assert response.headers.get("x-request-id") == "route-err"


async def test_a_model_name_with_a_slash_is_retrievable(port: int) -> None:
    config = OffloadConfig(
        models=(
            ModelConfig(name="Org/chat-1", task="chat", engine=EngineConfig(url=f"http://127.0.0.1:{port}")),
        )
    )
    app = create_app(
        Settings(health=HealthSettings(probe_interval=600), log=LogSettings(access=False)), config
    )

    async with AsyncTestClient(app=app) as client:
        response = await client.get("/v1/models/Org/chat-1")

    assert response.status_code == 200
    assert response.json()["id"] == "Org/chat-1"


async def test_paths_clients_make_up_do_not_become_metric_labels(client: AsyncTestClient[FrontDoor]) -> None:
    await client.get("/v1/made-up-path-1234")
    await client.get("/v1/models/made-up-model-5678")

    text = (await client.get("/metrics")).text

    assert "made-up-path-1234" not in text and "made-up-model-5678" not in text
    assert (exposition_total(text, "offload_requests_total", endpoint="other", status="404") or 0) >= 1
    assert (
        exposition_total(text, "offload_requests_total", endpoint="/v1/models/{model}", status="404") or 0
    ) >= 1


# --- with local engines (offload run): the engine control is injected into the routes ------------


class RecordingControl(FakeEngines):
    """An engine control whose one engine, ``chat``, is stopped and can be started on demand."""

    def __init__(self, url: str) -> None:
        super().__init__({url})
        self.acts: list[tuple[str, str]] = []

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": "chat", "state": "stopped" if self.startable else "ready"}]

    async def act(self, name: str, action: str) -> None:
        if name != "chat":
            raise KeyError(name)
        self.acts.append((name, action))

    def log_tail(self, name: str, lines: int) -> list[str]:
        if name != "chat":
            raise KeyError(name)
        return ["line"] * min(lines, 3)


async def test_the_engine_routes_and_readiness_use_the_injected_engine_control(port: int) -> None:
    settings = Settings(
        health=HealthSettings(probe_interval=600, probe_timeout=1), log=LogSettings(access=False)
    )
    url = f"http://127.0.0.1:{port}"
    config = OffloadConfig(models=(ModelConfig(name="chat", task="chat", engine=EngineConfig(url=url)),))
    control = RecordingControl(url)
    async with AsyncTestClient(app=create_app(settings, config, engines=control)) as client:
        listed = await client.get("/admin/engines")
        acted = await client.post("/admin/engines/chat/restart")
        unknown = await client.post("/admin/engines/nope/start")
        logs = await client.get("/admin/engines/chat/logs", params={"lines": 2})
        ready = await client.get("/ready", params={"all": "true"})

    assert listed.status_code == 200 and listed.json()["data"] == [{"name": "chat", "state": "stopped"}]
    assert acted.status_code == 200 and control.acts == [("chat", "restart")]
    assert unknown.status_code == 404
    assert logs.json()["lines"] == ["line", "line"]
    # a stopped on-demand engine is routable: the first request starts it
    assert ready.status_code == 200 and ready.json()["models"] == {"chat": True}


async def test_without_local_engines_the_engine_routes_are_404(client: AsyncTestClient[FrontDoor]) -> None:
    response = await client.get("/admin/engines")

    assert response.status_code == 404
    assert_openai_error(response.json(), "invalid_request_error", "not_found")


async def test_ready_is_503_draining_once_the_drain_begins_while_health_stays_200(port: int) -> None:
    drain = Drain()
    settings = Settings(
        health=HealthSettings(probe_interval=600, probe_timeout=1), log=LogSettings(access=False)
    )
    config = OffloadConfig(
        models=(ModelConfig(name="chat", task="chat", engine=EngineConfig(url=f"http://127.0.0.1:{port}")),)
    )
    async with AsyncTestClient(app=create_app(settings, config, drain=drain)) as client:
        before = await client.get("/ready")
        drain.begin()
        after = await client.get("/ready")
        alive = await client.get("/health")

    assert before.json()["status"] != "draining"
    assert after.status_code == 503 and after.json() == {"status": "draining", "models": {"chat": False}}
    assert alive.status_code == 200


def test_drain_expiry_interrupts_only_the_streams_it_tracks() -> None:
    async def scenario() -> tuple[bool, bool, int]:
        drain = Drain()
        tracked = asyncio.create_task(asyncio.sleep(30))
        other = asyncio.create_task(asyncio.sleep(30))
        drain.track(tracked)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        drain.expire()
        await asyncio.gather(tracked, return_exceptions=True)
        result = (tracked.cancelled(), other.cancelled(), drain.open_streams)
        other.cancel()
        return result

    assert asyncio.run(scenario()) == (True, False, 1)
