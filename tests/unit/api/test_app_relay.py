"""The HTTP surface in process, in front of a small engine stand-in on a loopback port."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from litestar import Litestar
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.config import parse_config
from gateway.settings import HealthSettings, LogSettings, Settings
from tests.unit.fakes import chunk, usage_chunk

MESSAGES = [{"role": "user", "content": "hi"}]


class Engine:
    """Answers like vLLM's OpenAI server, and remembers what it was sent."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def health(self, _: web.Request) -> web.Response:
        return web.Response()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(body)
        model = body["model"]
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "Paris"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in (chunk("Par", model=model), chunk("is", model=model), chunk(finish="stop", model=model)):
            await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(b"data: " + orjson.dumps(usage_chunk(5, 2, model=model)) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(body)
        return web.json_response(
            {
                "object": "list",
                "model": body["model"],
                "data": [{"object": "embedding", "index": 0, "embedding": "AACAPw=="}],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )


@pytest.fixture(scope="module")
def engine() -> Iterator[tuple[Engine, str]]:
    """The stand-in serves from its own thread and loop: Litestar's test client runs the app in a
    portal thread and blocks the test's loop while a request is in flight."""
    stand_in = Engine()
    app = web.Application()
    app.router.add_get("/health", stand_in.health)
    app.router.add_post("/v1/chat/completions", stand_in.chat)
    app.router.add_post("/v1/embeddings", stand_in.embeddings)
    runner = web.AppRunner(app, access_log=None)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="engine-stand-in", daemon=True)
    thread.start()
    assert ready.wait(5), "the engine stand-in did not start"
    try:
        yield stand_in, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture(scope="module")
async def client(engine: tuple[Engine, str]) -> AsyncIterator[AsyncTestClient[Litestar]]:
    _, url = engine
    config = parse_config(f"""
models:
  - name: chat
    task: chat
    engine: {{url: "{url}/v1", served_name: engine-chat}}
  - name: embed
    task: embeddings
    engine: {{url: "{url}"}}
  - name: vchat
    task: chat
    versions:
      v1: {{weight: 1, engines: [{{url: "{url}", served_name: vchat-one}}]}}
      v2: {{weight: 0, engines: [{{url: "{url}", served_name: vchat-two}}]}}
    aliases: {{stable: v1, next: v2}}
""")
    settings = Settings(
        health=HealthSettings(probe_interval=600, scrape_interval=0), log=LogSettings(access=False)
    )
    async with AsyncTestClient(app=create_app(settings, config)) as client:
        yield client


def sse_payloads(text: str) -> list[str]:
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith(("data: ", ":")) for e in events), events
    return [e.removeprefix("data: ") for e in events if e.startswith("data: ")]


async def test_ready_is_200_when_every_engine_answers(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/ready")

    assert response.status_code == 200
    assert response.json()["models"] == {"chat": True, "embed": True, "vchat": True}


async def test_chat_completion_is_relayed_under_the_public_name(
    client: AsyncTestClient[Litestar], engine: tuple[Engine, str]
) -> None:
    response = await client.post(
        "/v1/chat/completions", json={"model": "chat", "messages": MESSAGES, "top_k": 2}
    )

    assert response.status_code == 200
    assert response.json()["model"] == "chat"
    assert response.json()["choices"][0]["message"]["content"] == "Paris"
    assert response.headers["x-offload-model"] == "chat"
    assert response.headers["x-offload-replica"] == "chat-0"
    assert engine[0].received[-1]["model"] == "engine-chat"
    assert engine[0].received[-1]["top_k"] == 2


@pytest.mark.parametrize("include_usage", [False, True])
async def test_chat_stream_is_framed_as_sse_and_ends_with_done(
    client: AsyncTestClient[Litestar], engine: tuple[Engine, str], include_usage: bool
) -> None:
    payload: dict[str, Any] = {"model": "chat", "messages": MESSAGES, "stream": True}
    if include_usage:
        payload["stream_options"] = {"include_usage": True}

    response = await client.post("/v1/chat/completions", json=payload)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    events = [orjson.loads(p) for p in payloads[:-1]]
    assert {e["model"] for e in events} == {"chat"}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]) == "Paris"
    usage = [e for e in events if not e["choices"]]
    assert len(usage) == (1 if include_usage else 0)
    assert engine[0].received[-1]["stream_options"]["include_usage"] is True  # always asked, for accounting


async def test_embeddings_are_relayed_unchanged_apart_from_the_model(
    client: AsyncTestClient[Litestar], engine: tuple[Engine, str]
) -> None:
    response = await client.post(
        "/v1/embeddings", json={"model": "embed", "input": ["a"], "encoding_format": "base64"}
    )

    assert response.status_code == 200
    assert response.json()["model"] == "embed"
    assert response.json()["data"][0]["embedding"] == "AACAPw=="
    assert engine[0].received[-1]["encoding_format"] == "base64"


@pytest.mark.parametrize(
    ("requested", "served", "public"),
    [
        ("vchat", "vchat-one", "vchat:v1"),
        ("vchat:v2", "vchat-two", "vchat:v2"),
        ("vchat:stable", "vchat-one", "vchat:v1"),
    ],
)
async def test_versions_are_chosen_by_weight_pin_or_alias_and_reported(
    client: AsyncTestClient[Litestar], engine: tuple[Engine, str], requested: str, served: str, public: str
) -> None:
    response = await client.post("/v1/chat/completions", json={"model": requested, "messages": MESSAGES})

    assert response.status_code == 200
    assert engine[0].received[-1]["model"] == served
    assert response.json()["model"] == public
    assert response.headers["x-offload-model"] == public
    assert response.headers["x-offload-version"] == public.split(":")[1]


async def test_an_unknown_version_is_404_naming_the_available_ones(client: AsyncTestClient[Litestar]) -> None:
    response = await client.post("/v1/chat/completions", json={"model": "vchat:v9", "messages": MESSAGES})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert "vchat:v1" in response.json()["error"]["message"]


async def test_models_list_shows_versions_and_aliases_of_versioned_models(
    client: AsyncTestClient[Litestar],
) -> None:
    cards = {card["id"]: card for card in (await client.get("/v1/models")).json()["data"]}

    assert list(cards) == ["chat", "embed", "vchat", "vchat:v1", "vchat:v2", "vchat:stable", "vchat:next"]
    assert cards["vchat"]["versions"] == ["vchat:v1", "vchat:v2"]
    assert cards["vchat"]["aliases"] == {"vchat:stable": "vchat:v1", "vchat:next": "vchat:v2"}
    assert cards["vchat:v2"]["parent"] == "vchat"
    assert cards["vchat:stable"]["alias_of"] == "vchat:v1"
    assert set(cards["chat"]) == {"id", "object", "created", "owned_by"}


async def test_a_version_or_alias_is_retrievable(client: AsyncTestClient[Litestar]) -> None:
    version = await client.get("/v1/models/vchat:v2")
    alias = await client.get("/v1/models/vchat:stable")

    assert (version.status_code, version.json()["parent"]) == (200, "vchat")
    assert (alias.status_code, alias.json()["alias_of"]) == (200, "vchat:v1")


async def test_too_many_embedding_inputs_are_a_400_that_never_reaches_the_engine(
    client: AsyncTestClient[Litestar], engine: tuple[Engine, str]
) -> None:
    stand_in, _ = engine
    before = len(stand_in.received)

    response = await client.post("/v1/embeddings", json={"model": "embed", "input": ["x"] * 2049})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"
    assert len(stand_in.received) == before
