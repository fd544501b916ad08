"""The playground and docs pages as files: served without a key while ``/v1`` and ``/admin`` still
need one, ``/`` redirecting to the playground, and nothing in them loaded from outside the gateway."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from gateway.api.front import FrontDoor
from gateway.api.playground import SWAGGER_UI
from gateway.app import create_app
from gateway.config import AuthConfig, EngineConfig, KeyConfig, ModelConfig, OffloadConfig
from gateway.keys import hash_key
from gateway.settings import HealthSettings, LogSettings, Settings
from tests.unit.fakes import closed_port

STATIC = Path(__file__).parents[3] / "gateway" / "api" / "static"
PAGES = [
    "/playground",
    "/playground/main.js",
    "/playground/api.js",
    "/playground/chat.js",
    "/playground/embeddings.js",
    "/playground/playground.css",
    "/playground/favicon.svg",
    "/docs",
    "/docs/docs.js",
    "/docs/docs.css",
    SWAGGER_UI + "/swagger-ui-bundle.js",
    SWAGGER_UI + "/swagger-ui.css",
]


@pytest.fixture(scope="module")
async def keyed() -> AsyncIterator[AsyncTestClient[FrontDoor]]:
    """A gateway with an API key configured (its engine is a closed port: no route is served)."""
    config = OffloadConfig(
        models=(
            ModelConfig(
                name="chat", task="chat", engine=EngineConfig(url=f"http://127.0.0.1:{closed_port()}")
            ),
        ),
        auth=AuthConfig(keys=(KeyConfig(name="team", hash=hash_key("ofl-playground-unit")),)),
    )
    settings = Settings(
        health=HealthSettings(probe_interval=600, probe_timeout=1), log=LogSettings(access=False)
    )
    async with AsyncTestClient(app=create_app(settings, config)) as client:
        yield client


async def test_root_redirects_to_the_playground(keyed: AsyncTestClient[FrontDoor]) -> None:
    response = await keyed.get("/", follow_redirects=False)

    assert response.status_code == 302
    assert response.headers["location"] == "/playground"


@pytest.mark.parametrize("path", PAGES)
async def test_pages_and_their_files_are_served_without_a_key(
    keyed: AsyncTestClient[FrontDoor], path: str
) -> None:
    response = await keyed.get(path)

    assert response.status_code == 200, response.text
    assert response.content


async def test_the_api_the_pages_call_and_admin_still_need_a_key(keyed: AsyncTestClient[FrontDoor]) -> None:
    assert (await keyed.get("/v1/models")).status_code == 401
    assert (await keyed.get("/admin/engines")).status_code == 401


async def test_an_unknown_page_file_is_an_openai_style_404(keyed: AsyncTestClient[FrontDoor]) -> None:
    response = await keyed.get("/playground/missing.js")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("page", ["playground/index.html", "docs/index.html"])
def test_each_page_tells_the_browser_to_load_nothing_from_elsewhere(page: str) -> None:
    html = (STATIC / page).read_text()
    policy = re.search(r'http-equiv="Content-Security-Policy"\s+content="([^"]+)"', html)

    assert policy is not None and "default-src 'self'" in policy.group(1)
    assert not re.search(r"(src|href)=\"(https?:)?//", html)


def test_no_file_of_the_pages_names_an_outside_address() -> None:
    files = [p for p in STATIC.rglob("*") if p.is_file() and p.suffix in (".html", ".js", ".css")]

    assert files
    for path in files:
        assert not re.search(r"https?://", path.read_text()), path
