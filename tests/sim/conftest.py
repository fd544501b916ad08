"""Fixtures: the engine simulator under real uvicorn on a free loopback port, in a thread."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import httpx
import openai
import pytest
import uvicorn
from starlette.applications import Starlette

from engines.sim import Knobs, SimConfig, create_sim_app
from engines.sim.engine import SimEngine
from tests.integration.servers import serve_in_thread


@dataclass
class RunningSim:
    """A simulator serving on loopback."""

    base_url: str
    app: Starlette

    @property
    def engine(self) -> SimEngine:
        return self.app.state.sim.engine

    def client(self, timeout: float | openai.Timeout = 10.0) -> openai.OpenAI:
        """The official SDK pointed at this simulator, without retries."""
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key="x", max_retries=0, timeout=timeout)

    def metric(self, name: str) -> float:
        """One sample of ``GET /metrics`` (e.g. ``vllm:num_requests_running``)."""
        text = httpx.get(self.base_url + "/metrics", timeout=5).text
        match = re.search(rf"^{re.escape(name)}{{[^}}]*}} (\S+)$", text, re.MULTILINE)
        assert match, f"{name} not in /metrics"
        return float(match.group(1))

    def wait_for_metric(self, name: str, value: float, within: float = 3.0) -> float:
        """Poll a metric until it equals ``value`` or ``within`` seconds pass; returns the last value."""
        deadline = time.monotonic() + within
        current = self.metric(name)
        while current != value and time.monotonic() < deadline:
            time.sleep(0.02)
            current = self.metric(name)
        return current


@contextmanager
def serve_sim(config: SimConfig) -> Iterator[RunningSim]:
    """Run ``create_sim_app(config)`` under uvicorn in a thread on a free 127.0.0.1 port."""
    app = create_sim_app(config)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=1)
    )
    with serve_in_thread(server) as port:
        yield RunningSim(f"http://127.0.0.1:{port}", app)


DEFAULT = SimConfig(model="sim", aliases=("sim-alias",), embedding_dims=32, knobs=Knobs(output_tokens=8))


@pytest.fixture(scope="session")
def sim() -> Iterator[RunningSim]:
    """A shared simulator with default knobs (no delays, 8 output tokens, 32-dim embeddings)."""
    with serve_sim(DEFAULT) as running:
        yield running


@pytest.fixture
def start_sim() -> Iterator[Callable[[SimConfig], RunningSim]]:
    """Start simulators with their own configuration; all stop at the end of the test."""
    with ExitStack() as stack:
        yield lambda config: stack.enter_context(serve_sim(config))
