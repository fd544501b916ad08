"""A real gateway process (``offload serve``) in front of the engine simulator, for hostile inputs.

The gateway logs in the console format (the default outside containers): the format in which a raw
control character from a client would reach an operator's terminal unescaped.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.servers import GatewayProcess, wait_until
from tests.sim.conftest import DEFAULT, RunningSim, serve_sim

HEADER_TIMEOUT = 1.0
"""The gateway's ``OFFLOAD_SERVER__HEADER_TIMEOUT`` here, in seconds."""


@pytest.fixture(scope="package")
def engine() -> Iterator[RunningSim]:
    """The simulator (served name ``sim``, 8 output tokens, 32-dimension embeddings)."""
    with serve_sim(DEFAULT) as running:
        yield running


@pytest.fixture(scope="package")
def gateway(engine: RunningSim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The gateway serving ``chat`` and ``embed`` from the simulator, default limits (8 MiB bodies,
    32 KiB headers), a one-second request-head timeout, console logs."""
    models = [
        {"name": "chat", "task": "chat", "engine": {"url": engine.base_url, "served_name": "sim"}},
        {"name": "embed", "task": "embeddings", "engine": {"url": engine.base_url, "served_name": "sim"}},
    ]
    env = {"OFFLOAD_SERVER__HEADER_TIMEOUT": str(HEADER_TIMEOUT), "OFFLOAD_LOG__FORMAT": "console"}
    gw = GatewayProcess(tmp_path_factory.mktemp("hostile"), models, env).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="package")
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.base_url, timeout=30) as client:
        yield client


@pytest.fixture(autouse=True)
def still_serving(gateway: GatewayProcess) -> Iterator[None]:
    """After every hostile input: the gateway is alive, answers /health, and logged no unhandled error."""
    mark = gateway.log_mark()
    yield
    assert gateway.proc is not None and gateway.proc.poll() is None, "the gateway exited"

    def healthy() -> bool:
        try:
            return httpx.get(gateway.base_url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 10, what="the gateway to answer /health")
    log = gateway.log(mark)
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]
