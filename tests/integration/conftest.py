"""Session fixtures: two real vLLM CPU engines (started once) and a gateway in front of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from engines.process import EngineProcess
from engines.supervisor import Supervisor
from gateway.config import EngineConfig, LocalEngine, ModelConfig, OffloadConfig
from gateway.local_engines import engine_specs
from gateway.settings import Settings
from tests.integration.servers import GatewayProcess, free_port

CHAT = "smollm2"
CHAT_V2 = "smollm2-v2"  # a second SmolLM2 engine: version v2 / a second replica in routing tests
EMBED = "minilm"
_HERE = Path(__file__).parent


class Engines:
    """The running engines of the test session."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.by_name: dict[str, EngineProcess] = {e.spec.name: e for e in supervisor.engines}

    def url(self, name: str) -> str:
        return self.by_name[name].spec.base_url

    def canary_models(self) -> list[dict]:
        """SmolLM2 as the canary of deploy/examples/canary.yaml (v1 90% and v2 10% on the session's
        two SmolLM2 engines, aliases ``stable`` and ``latest``) and ``minilm``."""
        return [
            {
                "name": CHAT,
                "task": "chat",
                "versions": {
                    "v1": {"weight": 90, "engines": [{"url": self.url(CHAT)}]},
                    # The second engine serves its model as smollm2-v2: the name sent to it must say so.
                    "v2": {"weight": 10, "engines": [{"url": self.url(CHAT_V2), "served_name": CHAT_V2}]},
                },
                "aliases": {"stable": "v1", "latest": "v2"},
            },
            {"name": EMBED, "task": "embeddings", "engine": {"url": self.url(EMBED)}},
        ]

    def gateway_models(self) -> list[dict]:
        """Config entries routing to these engines by URL (the gateway does not own them)."""
        return [
            {"name": CHAT, "task": "chat", "engine": {"url": self.url(CHAT)}},
            {"name": EMBED, "task": "embeddings", "engine": {"url": self.url(EMBED)}},
        ]


@pytest.fixture(scope="session")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    """Real vLLM engines for the packaged models, on free ports (prepared models are reused)."""
    config = OffloadConfig(
        models=(
            ModelConfig(
                name=CHAT,
                task="chat",
                engine=EngineConfig(
                    local=LocalEngine(model=CHAT, port=free_port(), dtype="float32", max_model_len=4096)
                ),
            ),
            ModelConfig(
                name=EMBED,
                task="embeddings",
                engine=EngineConfig(local=LocalEngine(model=EMBED, port=free_port())),
            ),
            ModelConfig(
                name=CHAT_V2,
                task="chat",
                engine=EngineConfig(
                    local=LocalEngine(model=CHAT, port=free_port(), dtype="float32", max_model_len=4096)
                ),
            ),
        )
    )
    logs = tmp_path_factory.mktemp("engine-logs")
    models_dir = Settings().models_dir
    supervisor = Supervisor(engine_specs(config, models_dir), models_dir, logs)
    try:
        supervisor.prepare_models()
        supervisor.start_all()
        supervisor.wait_all()
        yield Engines(supervisor)
    finally:
        supervisor.stop_all()


@pytest.fixture(scope="session")
def gateway(engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The gateway in front of the session's engines, on a real loopback port."""
    gw = GatewayProcess(tmp_path_factory.mktemp("gateway"), engines.gateway_models()).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def client(gateway: GatewayProcess) -> OpenAI:
    """The official OpenAI SDK pointed at the gateway (no retries: tests see each answer)."""
    return OpenAI(base_url=gateway.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: it must see the marks added here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``engines`` every test here that uses the real engines, through the ``engines`` fixture
    or one built on it (``gateway``, ``client``, module fixtures), so that ``-m "not engines"`` runs
    the fast suite. A test that starts engines some other way carries ``@pytest.mark.engines`` itself.

    Tests that kill engines (``destructive``) run last, so the others see healthy engines.
    """
    for item in items:
        if "engines" in getattr(item, "fixturenames", ()) and item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.engines)
    items.sort(key=lambda item: bool(item.get_closest_marker("destructive")))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "destructive: kills and restarts engines; runs last")
