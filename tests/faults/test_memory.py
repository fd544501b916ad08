"""The gateway under memory pressure of its own: 50 large bodies at once, up to the body limit
(``OFFLOAD_SERVER__MAX_BODY_BYTES``, 1 MiB here) and past it, declared or chunked. Its memory must
stay bounded (``VmRSS`` of the gateway process, sampled throughout), every request must get an answer
that says what happened (200, 413, or 429/503 from a full admission queue), and it must never crash:
it serves normally afterwards.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from engines.sim import Knobs, SimConfig
from tests.faults.conftest import Cell
from tests.faults.harness import PeakRSS, Sim, in_flight, post, serve_sim, start_gateway
from tests.integration.servers import GatewayProcess, eventually

GROUP = "memory"
LIMIT = 1024 * 1024
UPLOADS = 50
SLOTS = 4  # max_in_flight: the engine takes 4 at once,
QUEUE = 8  # and 8 more wait: the rest are refused at once (503), as a saturated model is


@dataclass
class Setup:
    gw: GatewayProcess
    sim: Sim


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    # A long context, so that a 1 MiB prompt is a valid request; 0.3 s each, so that slots fill.
    config = SimConfig(
        model="sim", max_model_len=10**8, kv_cache_tokens=10**9, knobs=Knobs(ttft=0.3, output_tokens=4)
    )
    with serve_sim(config) as sim:
        models = [
            {
                "name": "chat",
                "task": "chat",
                "max_in_flight": SLOTS,
                "engine": {"url": sim.base_url, "served_name": "sim"},
            }
        ]
        env = {"OFFLOAD_SERVER__MAX_BODY_BYTES": str(LIMIT)}
        admission = {"queue_size": QUEUE, "queue_timeout": 20}
        gw = start_gateway(tmp_path_factory.mktemp("memory"), models, env, admission=admission)
        try:
            yield Setup(gw, sim)
        finally:
            gw.stop()


def request_of(size: int) -> bytes:
    """A chat request body of exactly ``size`` bytes (one long user message)."""
    empty = orjson.dumps({"model": "chat", "messages": [{"role": "user", "content": ""}]})
    return orjson.dumps(
        {"model": "chat", "messages": [{"role": "user", "content": "x" * (size - len(empty))}]}
    )


async def _pieces(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 64 * 1024):
        yield body[start : start + 64 * 1024]


async def upload_all(gw: GatewayProcess, bodies: list[tuple[bytes, bool]]) -> Counter[str]:
    """Send every body at once (``True``: chunked, no length declared); what each got."""
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=60, limits=limits) as client:

        async def one(body: bytes, chunked: bool) -> str:
            content: Any = _pieces(body) if chunked else body
            headers = {"content-type": "application/json"}
            try:
                r = await client.post("/v1/chat/completions", content=content, headers=headers)
            except httpx.TransportError as exc:  # a refusal before the whole body was sent
                return f"closed ({type(exc).__name__})"
            return str(r.status_code)

        return Counter(await asyncio.gather(*(one(body, chunked) for body, chunked in bodies)))


def _counts(got: Counter[str]) -> str:
    return ", ".join(f"{n} x {what}" for what, n in sorted(got.items()))


def _after(setup: Setup) -> None:
    """Alive, idle and serving."""
    gw = setup.gw
    assert gw.proc is not None and gw.proc.poll() is None, "the gateway died"
    assert httpx.get(gw.base_url + "/health", timeout=5).status_code == 200
    reply = post(gw, {"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status == 200, reply.body
    eventually(lambda: _idle(setup), timeout=10)


def _idle(setup: Setup) -> None:
    assert in_flight(setup.gw, "chat") == 0
    assert (setup.sim.running, setup.sim.waiting) == (0, 0)


def test_fifty_bodies_at_the_limit_at_once(setup: Setup, cell: Cell) -> None:
    cell.cell = "bodies_at_the_limit_x50"
    body = request_of(LIMIT)  # exactly the limit: accepted
    assert setup.gw.proc is not None
    with PeakRSS(setup.gw.proc.pid) as rss:
        got = asyncio.run(upload_all(setup.gw, [(body, i % 2 == 1) for i in range(UPLOADS)]))
    cell.saw(
        f"{_counts(got)} (JSON and chunked alike); gateway RSS +{rss.growth_mib:.0f} MiB "
        f"at the peak ({rss.before // 1024} MiB before); serving normally after",
    )
    assert set(got) <= {"200", "503", "429"}, got
    assert got["200"] >= SLOTS + QUEUE  # what the slots and the queue hold is served
    assert rss.growth_mib < UPLOADS * LIMIT / 2**20 * 3, "more than 3x the bodies in flight"
    _after(setup)


def test_fifty_bodies_past_the_limit_at_once(setup: Setup, cell: Cell) -> None:
    cell.cell = "bodies_past_the_limit_x50"
    body = request_of(2 * LIMIT)
    before = setup.sim.snapshot()
    assert setup.gw.proc is not None
    with PeakRSS(setup.gw.proc.pid) as rss:
        got = asyncio.run(upload_all(setup.gw, [(body, i % 2 == 1) for i in range(UPLOADS)]))
    cell.saw(
        f"{_counts(got)} (half declared 2 MiB, half chunked); gateway RSS "
        f"+{rss.growth_mib:.0f} MiB at the peak; serving normally after",
    )
    assert "200" not in got and got["413"] >= UPLOADS // 2, got
    assert set(got) - {"413"} <= {k for k in got if k.startswith("closed")}
    assert rss.growth_mib < UPLOADS * LIMIT / 2**20 * 3
    assert setup.sim.snapshot() == before  # none reached the engine
    _after(setup)
