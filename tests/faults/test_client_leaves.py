"""Client leaves: at each point of a request's life the client hangs up (a plain socket closed, 20
tries per cell) and the engine's request must end within a second (p99), the gateway keep nothing
running (``offload_requests_in_flight`` back to 0, no connection to the engine left open) and the
engine's counters come back to idle with every request counted as aborted.

A real gateway process; engines in this process: the simulator (``ttft`` large for "before the first
token", a long answer for "mid-stream") and, for "before the engine's headers", a raw engine that
reads the request and never answers (the simulator sends a stream's headers at once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from engines.sim import Knobs, SimConfig
from tests.faults.conftest import Cell
from tests.faults.harness import (
    FaultEngine,
    RawRequest,
    Sim,
    established_to,
    events_in,
    headers_in,
    in_flight,
    metric,
    p99,
    serve_sim,
    settle,
    start_gateway,
)
from tests.integration.servers import GatewayProcess, eventually

GROUP = "client_leaves"
TRIES = 20
ABORT_LIMIT_S = 1.0
MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass
class Setup:
    gw: GatewayProcess
    sim: Sim
    held: FaultEngine


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with serve_sim(SimConfig(model="sim", knobs=Knobs(output_tokens=4))) as sim, FaultEngine("hold") as held:
        models = [
            {"name": "chat", "task": "chat", "engine": {"url": sim.base_url, "served_name": "sim"}},
            {"name": "held", "task": "chat", "engine": {"url": held.base_url, "served_name": "sim"}},
            {
                "name": "queued",
                "task": "chat",
                "max_in_flight": 1,
                "engine": {"url": sim.base_url, "served_name": "sim"},
            },
        ]
        gw = start_gateway(tmp_path_factory.mktemp("leaves"), models)
        try:
            yield Setup(gw, sim, held)
        finally:
            gw.stop()


@dataclass(frozen=True)
class Point:
    """Where in the request's life the client leaves."""

    model: str
    body: dict[str, Any]
    reached: Callable[[RawRequest], bytes]
    """Reads from the gateway until the client is at that point."""


POINTS = {
    "before_engine_headers": Point("held", {"stream": True}, lambda r: r.received),
    "after_headers_before_first_token": Point(
        "chat", {"stream": True, "sim": {"ttft": 60}}, lambda r: r.read_until(headers_in)
    ),
    "mid_stream": Point(
        "chat",
        {"stream": True, "max_tokens": 2000, "sim": {"itl": 0.02, "output_tokens": 2000}},
        lambda r: r.read_until(lambda got: events_in(got) >= 3),
    ),
    "during_non_streaming_answer": Point("chat", {"sim": {"ttft": 60}}, lambda r: r.received),
}


@pytest.mark.parametrize("where", list(POINTS), ids=list(POINTS))
def test_the_engine_request_ends_within_a_second_of_the_client_leaving(
    setup: Setup, cell: Cell, where: str
) -> None:
    point = POINTS[where]
    gw = setup.gw
    engine = setup.held if point.model == "held" else setup.sim
    port = setup.held.port if point.model == "held" else setup.sim.port
    assert gw.proc is not None
    pid = gw.proc.pid
    before = engine.snapshot()
    left = metric(gw, "offload_request_errors_total", model=point.model, type="client_disconnected")
    body = {"model": point.model, "messages": MESSAGES, **point.body}

    aborts = []
    for _ in range(TRIES):
        ended = len(engine.ended)
        request = RawRequest(gw.port, body)
        try:
            point.reached(request)
            settle(lambda: engine.running == 1, "the engine to run the request")
        finally:
            closed = request.close()
        settle(lambda ended=ended: len(engine.ended) > ended, "the engine's request to end")
        aborts.append(engine.ended[ended] - closed)

    worst = p99(aborts)
    cell.saw(f"engine request aborted {TRIES}/{TRIES}, max {max(aborts) * 1000:.0f} ms", abort_p99_s=worst)
    assert worst <= ABORT_LIMIT_S, sorted(aborts)

    # The engine: idle, every request counted as aborted, none as finished.
    assert (engine.running, engine.waiting) == (0, 0)
    finished = engine.snapshot() - before
    assert dict(finished) == {"abort": TRIES}
    # The gateway: nothing in flight, each request counted as a client that left, and no
    # connection to the engine left open beyond its idle pool.
    eventually(lambda: _idle(gw, point.model), timeout=5)
    assert (
        metric(gw, "offload_request_errors_total", model=point.model, type="client_disconnected") - left
        == TRIES
    )
    # Seen by the engine and by the gateway's sockets: what is left is the idle pool of the health
    # probes, one per replica on this engine, plus one that a probe opened while a request held the
    # pooled connection (idle until the engine's keep-alive closes it). A leak would be one per try.
    replicas = 1 if point.model == "held" else 2  # (the simulator serves "chat" and "queued")
    pool = replicas + 1
    eventually(lambda: _at_most(engine.connections, pool), timeout=3)
    eventually(lambda: _at_most(established_to(pid, port), pool), timeout=3)


def _idle(gw: GatewayProcess, model: str) -> None:
    assert in_flight(gw, model) == 0


def _at_most(count: int, bound: int) -> None:
    assert count <= bound, f"{count} connections to the engine, at most {bound} expected"


@pytest.mark.parametrize("how", ["stream", "json"], ids=["admission_queue_stream", "admission_queue_json"])
def test_a_request_that_leaves_the_admission_queue_is_forgotten(setup: Setup, cell: Cell, how: str) -> None:
    """``max_in_flight: 1``: one request holds the slot, each try's request waits in the queue and
    leaves. It must leave the queue at once, never reach the engine, and leave the slot usable."""
    gw, sim = setup.gw, setup.sim
    before = sim.snapshot()
    holder = RawRequest(
        gw.port, {"model": "queued", "messages": MESSAGES, "stream": True, "sim": {"ttft": 60}}
    )
    try:
        holder.read_until(headers_in)
        settle(lambda: sim.engine.running == 1, "the holder to run")
        body = {"model": "queued", "messages": MESSAGES, "stream": how == "stream"}
        gone = []
        for _ in range(TRIES):
            waiting = RawRequest(gw.port, body)
            try:
                settle(lambda: in_flight(gw, "queued") == 2, "the request to wait in the queue")
            finally:
                closed = waiting.close()
            settle(lambda: in_flight(gw, "queued") == 1, "the request to leave the queue")
            gone.append(time.monotonic() - closed)
        assert sim.engine.running == 1 and sim.engine.finished == before  # none reached the engine
    finally:
        holder.close()
    settle(lambda: sim.engine.running == 0, "the holder's engine request to end")

    # The slot is free: the next request is served at once, and the engine saw only the two.
    reply = RawRequest(gw.port, {"model": "queued", "messages": MESSAGES})
    try:
        reply.read_until(lambda got: got.endswith(b"}") and b"\r\n\r\n" in got, timeout=5)
    finally:
        reply.close()
    assert reply.received.startswith(b"HTTP/1.1 200")
    worst = p99(gone)
    cell.saw(
        f"left the queue {TRIES}/{TRIES} (gateway in-flight back down, max {max(gone) * 1000:.0f} ms); "
        "none reached the engine; the next request served at once",
        abort_p99_s=worst,
    )
    assert worst <= ABORT_LIMIT_S, sorted(gone)
    assert dict(sim.snapshot() - before) == {"abort": 1, "stop": 1}
    eventually(lambda: _idle(gw, "queued"), timeout=5)
