"""API keys at the HTTP surface, driven by the official OpenAI SDK in process: 401 without a valid key,
a model the key may not use answered exactly as an unknown one, /v1/models filtered, /admin for admin
keys only, probes open, usage by key name, and a revoked key refused after a reload."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from litestar.testing import AsyncTestClient

from gateway.api.front import FrontDoor
from gateway.app import create_app
from gateway.config import load_config, parse_config
from gateway.keys import hash_key
from gateway.reloader import ConfigReloader
from gateway.settings import HealthSettings, LogSettings, ReloadSettings, Settings
from tests.unit.api.test_app_relay import Engine, engine  # noqa: F401  (the engine stand-in fixture)
from tests.unit.samples import exposition_total

ADMIN = "ofl-test-admin-key"
CHAT_ONLY = "ofl-test-chat-only"
EMBED_ONLY = "ofl-test-embed-only"
EXPIRED = "ofl-test-expired"


def config_text(url: str, keys: str = "") -> str:
    return f"""
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
    aliases: {{stable: v1}}
auth:
  keys:
    - {{name: ops, hash: "{hash_key(ADMIN)}", admin: true}}
    - {{name: chat-team, hash: "{hash_key(CHAT_ONLY)}", models: [chat]}}
    - {{name: embed-team, hash: "{hash_key(EMBED_ONLY)}", models: [embed]}}
    - {{name: old, hash: "{hash_key(EXPIRED)}", expires: "2001-01-01T00:00:00Z"}}
{keys}"""


def settings(config: Path | None = None) -> Settings:
    return Settings(
        config=config,
        health=HealthSettings(probe_interval=600, scrape_interval=0),
        reload=ReloadSettings(watch_interval=0),
        log=LogSettings(access=False),
    )


@pytest.fixture(scope="module")
async def client(engine: tuple[Engine, str]) -> AsyncIterator[AsyncTestClient[FrontDoor]]:  # noqa: F811
    _, url = engine
    async with AsyncTestClient(app=create_app(settings(), parse_config(config_text(url)))) as client:
        yield client


def sdk(client: AsyncTestClient[FrontDoor], key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{client.base_url}/v1", api_key=key, http_client=client, max_retries=0
    )


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("key", ["ofl-not-a-key", EXPIRED, "unused"])
async def test_a_wrong_or_expired_key_is_a_401_the_sdk_raises_as_authentication_error(
    client: AsyncTestClient[FrontDoor], key: str
) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        await sdk(client, key).chat.completions.create(model="chat", messages=HI)  # type: ignore[arg-type]

    assert caught.value.status_code == 401
    body: Any = caught.value.body
    assert body["code"] == "invalid_api_key" and body["type"] == "authentication_error"
    assert key not in str(body)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/v1/models", "/v1/nowhere"])
async def test_no_key_at_all_is_a_401_on_every_api_path(
    client: AsyncTestClient[FrontDoor], path: str
) -> None:
    response = await client.post(path, json={"model": "chat", "messages": HI})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["x-request-id"]


async def test_a_valid_key_is_served_and_its_name_counted_by_model(
    client: AsyncTestClient[FrontDoor],
) -> None:
    answer = await sdk(client, CHAT_ONLY).chat.completions.create(model="chat", messages=HI)  # type: ignore[arg-type]

    assert answer.choices[0].message.content == "Paris"
    metrics = (await client.get("/metrics")).text
    assert (exposition_total(metrics, "offload_key_requests_total", key="chat-team", model="chat") or 0) >= 1
    tokens = exposition_total(metrics, "offload_key_tokens_total", key="chat-team", kind="completion")
    assert (tokens or 0) >= 1
    assert CHAT_ONLY not in metrics


@pytest.mark.parametrize("header", ["api-key", "x-api-key"])
async def test_the_api_key_and_x_api_key_headers_are_accepted_too(
    client: AsyncTestClient[FrontDoor], header: str
) -> None:
    response = await client.get("/v1/models", headers={header: CHAT_ONLY})

    assert response.status_code == 200


@pytest.mark.parametrize("model", ["vchat", "vchat:v1", "vchat:stable", "embed"])
async def test_a_model_the_key_may_not_use_is_answered_as_an_unknown_model(
    client: AsyncTestClient[FrontDoor], model: str
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk(client, CHAT_ONLY).chat.completions.create(model=model, messages=HI)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError) as unknown:
        await sdk(client, CHAT_ONLY).chat.completions.create(model="no-such-model", messages=HI)  # type: ignore[arg-type]

    body: Any = caught.value.body
    assert body["code"] == "model_not_found"
    assert body["message"] == f"The model '{model}' does not exist. Available chat completions models: chat."
    assert body == {**unknown.value.body, "message": body["message"]}  # type: ignore[dict-item]


async def test_models_lists_only_what_the_key_may_use(client: AsyncTestClient[FrontDoor]) -> None:
    chat_team = [m.id async for m in sdk(client, CHAT_ONLY).models.list()]
    ops = [m.id async for m in sdk(client, ADMIN).models.list()]

    assert chat_team == ["chat"]
    assert set(ops) == {"chat", "embed", "vchat", "vchat:v1", "vchat:stable"}
    hidden = await client.get("/v1/models/vchat", headers={"Authorization": f"Bearer {CHAT_ONLY}"})
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "model_not_found"


async def test_embeddings_follow_the_same_rules(client: AsyncTestClient[FrontDoor]) -> None:
    vectors = await sdk(client, EMBED_ONLY).embeddings.create(model="embed", input=["hello"])
    assert len(vectors.data) == 1
    with pytest.raises(openai.NotFoundError):
        await sdk(client, CHAT_ONLY).embeddings.create(model="embed", input=["hello"])


@pytest.mark.parametrize(("key", "status"), [(None, 401), ("ofl-nope", 401), (CHAT_ONLY, 403), (ADMIN, 404)])
async def test_admin_routes_need_an_admin_key(
    client: AsyncTestClient[FrontDoor], key: str | None, status: int
) -> None:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}

    response = await client.get("/admin/engines", headers=headers)

    # an admin key gets through to the route: 404 here, as this gateway runs no engines itself
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
async def test_probes_and_metrics_stay_open(client: AsyncTestClient[FrontDoor], path: str) -> None:
    assert (await client.get(path)).status_code == 200


async def test_metrics_can_be_reserved_for_admin_keys(engine: tuple[Engine, str]) -> None:  # noqa: F811
    _, url = engine
    config = parse_config(config_text(url, "  protect_metrics: true\n"))
    async with AsyncTestClient(app=create_app(settings(), config)) as client:
        closed = await client.get("/metrics")
        opened = await client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"})

    assert closed.status_code == 401 and opened.status_code == 200


async def test_a_key_revoked_in_the_keys_file_is_refused_after_the_reload(
    engine: tuple[Engine, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    _, url = engine
    keys = tmp_path / "secret" / "keys.yaml"
    keys.parent.mkdir()
    keys.write_text(f'keys:\n  - {{name: temp, hash: "{hash_key("ofl-temporary")}"}}\n')
    path = tmp_path / "offload.yaml"
    path.write_text(config_text(url, "  keys_file: secret/keys.yaml\n"))
    app = create_app(settings(path), load_config(path))
    async with AsyncTestClient(app=app) as client:
        before = await client.get("/v1/models", headers={"Authorization": "Bearer ofl-temporary"})
        keys.write_text("keys: []\n")
        reloader = ConfigReloader(path, _keys_of(app))
        assert await reloader.reload()
        after = await client.get("/v1/models", headers={"Authorization": "Bearer ofl-temporary"})
        still = await client.get("/v1/models", headers={"Authorization": f"Bearer {ADMIN}"})

    assert (before.status_code, after.status_code, still.status_code) == (200, 401, 200)


def _keys_of(app: FrontDoor) -> Any:
    """The app's key ring (white box: a reload applied to it alone)."""
    return app._keys


LIMITED = "ofl-test-limited"


async def test_a_key_over_its_rpm_gets_429_and_the_sdk_retry_succeeds_once_the_window_allows(
    engine: tuple[Engine, str],  # noqa: F811
) -> None:
    _, url = engine
    keys = f'    - {{name: limited, hash: "{hash_key(LIMITED)}", rpm: 2}}\n'
    config = parse_config(config_text(url, keys) + "limits: {window_seconds: 2}\n")
    async with AsyncTestClient(app=create_app(settings(), config)) as client:
        raw = await sdk(client, LIMITED).chat.completions.with_raw_response.create(model="chat", messages=HI)  # type: ignore[arg-type]
        first = raw.headers
        await sdk(client, LIMITED).chat.completions.create(model="chat", messages=HI)  # type: ignore[arg-type]
        refused = await client.post(
            "/v1/chat/completions",
            json={"model": "chat", "messages": HI},
            headers={"Authorization": f"Bearer {LIMITED}"},
        )
        # the SDK's own retry (its defaults: 2 retries, honouring Retry-After) gets through
        patient = openai.AsyncOpenAI(base_url=f"{client.base_url}/v1", api_key=LIMITED, http_client=client)
        answer = await patient.chat.completions.create(model="chat", messages=HI)  # type: ignore[arg-type]
        metrics = (await client.get("/metrics")).text

    assert first["x-ratelimit-limit-requests"] == "2" and first["x-ratelimit-remaining-requests"] == "1"
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 2
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert answer.choices[0].message.content == "Paris"
    assert (exposition_total(metrics, "offload_key_requests_total", key="limited") or 0) >= 4
