"""Engine fails: each way an engine can fail, with one replica and with two, against a real gateway
process. What the client sees, what the engines see (every request ended, none left running) and
what ``/metrics`` counts.

* Before the first byte (refused, reset before the headers, 500/502/503, a 200 whose JSON does not
  parse): two replicas fail over and the client sees no error; one replica gives a real status.
* After the first byte (reset mid-stream, closed without ``[DONE]``, silent past the idle timeout,
  an event that does not parse): one replica ends the stream with an in-band error and ``[DONE]``,
  never a hang; two replicas resume it on the other (the byte-exact splice is tests/sim/test_resume.py).
* An event larger than the relay's read buffer arrives whole.
* ``/health`` answering very slowly: the replica is taken out after repeated failed probes, and
  comes back once it answers again.

Faults before the first byte are per replica (a faulty replica listed first, round robin, so that
requests meet it); faults after it are per request (the simulator's ``sim`` body field, for the
original request only), so one pair of simulators serves them all.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from engines.sim import Knobs, SimConfig
from tests.faults.conftest import Cell
from tests.faults.harness import (
    FaultEngine,
    PeakRSS,
    Sim,
    closed_port,
    in_flight,
    metric,
    post,
    serve_sim,
    start_gateway,
    stream,
)
from tests.integration.servers import GatewayProcess, eventually, wait_until

GROUP = "engine_fails"
IDLE_TIMEOUT = 0.5
TOKENS = 12
MESSAGES = [{"role": "user", "content": "Tell me a story."}]
BIG_EVENT = 4 * 1024 * 1024
MAX_EVENT = 8 * 1024 * 1024  # the gateway's bound on one event (OFFLOAD_UPSTREAM__MAX_EVENT_BYTES)
ENDLESS = 64 * 1024 * 1024  # what the engine would send of an event that never ends

Engine = Sim | FaultEngine


@dataclass
class Rig:
    gw: GatewayProcess
    engines: dict[str, Engine]
    models: dict[str, list[str]] = field(default_factory=dict)
    """Model -> the engines (names in ``engines``) behind its replicas, in order."""

    def idle(self, model: str) -> None:
        """Everything a model's requests touched is back to rest: engines and gateway."""
        for name in self.models[model]:
            engine = self.engines[name]
            assert (engine.running, engine.waiting) == (0, 0), f"{name} still busy"
        assert in_flight(self.gw, model) == 0

    def finished(self, model: str, before: dict[str, Counter[str]]) -> dict[str, dict[str, int]]:
        """Each of a model's engines' finish counts since ``before``."""
        return {
            name: dict(self.engines[name].snapshot() - before[name])
            for name in dict.fromkeys(self.models[model])
        }

    def snapshot(self) -> dict[str, Counter[str]]:
        return {name: engine.snapshot() for name, engine in self.engines.items()}


# Replica faults before the first byte: model stem -> the faulty engine's name.
BEFORE_FIRST_BYTE = {
    "refused": "dead",
    "reset_before_headers": "reset",
    "status_500": "e500",
    "status_502": "e502",
    "status_503": "e503",
    "malformed_json": "bad_json",
}
# Per-request faults after the first byte (the simulator's events: the role, then a token each).
AFTER_FIRST_BYTE: dict[str, dict[str, Any]] = {
    "reset_mid_stream": {"reset_after": 4},
    "closed_without_done": {"close_after": 4},
    "stalled_past_idle_timeout": {"stall_after": 4, "stall_s": 30},
}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    quick = Knobs(output_tokens=TOKENS)
    with ExitStack() as stack:
        engines: dict[str, Engine] = {
            "a": stack.enter_context(serve_sim(SimConfig(model="sim", knobs=quick))),
            "b": stack.enter_context(serve_sim(SimConfig(model="sim", knobs=quick))),
            "dead": stack.enter_context(FaultEngine("hold")),  # killed by its cell
            "reset": stack.enter_context(FaultEngine("reset")),
            "bad_json": stack.enter_context(FaultEngine("bad_json")),
            "bad_sse": stack.enter_context(FaultEngine("bad_sse")),
            "big": stack.enter_context(FaultEngine("big_event", BIG_EVENT)),
            "endless": stack.enter_context(FaultEngine("endless_event", ENDLESS)),
        }
        for status in (500, 502, 503):
            knobs = Knobs(output_tokens=TOKENS, error_rate=1.0, error_status=status)
            engines[f"e{status}"] = stack.enter_context(serve_sim(SimConfig(model="sim", knobs=knobs)))
        models: dict[str, list[str]] = {}
        for stem, faulty in {**BEFORE_FIRST_BYTE, "malformed_sse": "bad_sse"}.items():
            models[f"{stem}-one"] = [faulty]
            models[f"{stem}-two"] = [faulty, "a"]
        models["refused-one"] = ["closed"]  # a port nobody listens on, from the start
        models["sim-one"] = ["a"]
        models["sim-two"] = ["a", "b"]
        models["big-one"] = ["big"]
        models["endless-one"] = ["endless"]
        urls = {name: engine.base_url for name, engine in engines.items()}
        urls["closed"] = f"http://127.0.0.1:{closed_port()}"
        config = [
            {
                "name": model,
                "task": "chat",
                "policy": "round_robin",
                "engines": [{"url": urls[name], "served_name": "sim"} for name in names],
            }
            for model, names in models.items()
        ]
        env = {
            "OFFLOAD_UPSTREAM__STREAM_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
            "OFFLOAD_UPSTREAM__MAX_EVENT_BYTES": str(MAX_EVENT),
            # Requests, not probes, find the failures here (the probe after start comes in 60 s).
            "OFFLOAD_HEALTH__PROBE_INTERVAL": "60",
            "OFFLOAD_HEALTH__SCRAPE_INTERVAL": "0",
        }
        gw = start_gateway(tmp_path_factory.mktemp("fails"), config, env, ready=False)
        stack.callback(gw.stop)
        wait_until(lambda: _ready_but(gw, "refused-one"), 30, what="every other model ready")
        yield Rig(gw, engines, {m: [n for n in names if n != "closed"] for m, names in models.items()})


def _ready_but(gw: GatewayProcess, model: str) -> bool:
    states = httpx.get(gw.base_url + "/ready", timeout=5).json()["models"]
    return all(up for name, up in states.items() if name != model)


def body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, "max_tokens": 64, **extra}


@pytest.mark.parametrize(
    "stem", list(BEFORE_FIRST_BYTE), ids=[f"{s}-two_replicas" for s in BEFORE_FIRST_BYTE]
)
def test_a_failure_before_the_first_byte_fails_over_and_the_client_sees_no_error(
    rig: Rig, cell: Cell, stem: str
) -> None:
    model = f"{stem}-two"
    faulty = rig.engines[BEFORE_FIRST_BYTE[stem]]
    if stem == "refused":
        assert isinstance(faulty, FaultEngine)
        faulty.die()  # the gateway saw it up; from now on it refuses connections
    retries = metric(rig.gw, "offload_retries_total", model=model)
    resumes = metric(rig.gw, "offload_stream_resumes_total", model=model, outcome="resumed")
    before = rig.snapshot()

    took = []
    for streamed in (False, True, False, True):
        if streamed:
            answer = stream(rig.gw, body(model))
            assert (answer.status, answer.error, answer.done, answer.finish) == (200, None, True, ["stop"])
            took.append(answer.seconds)
        else:
            reply = post(rig.gw, body(model))
            assert reply.status == 200, reply.body
            took.append(reply.seconds)

    retried = metric(rig.gw, "offload_retries_total", model=model) - retries
    resumed = metric(rig.gw, "offload_stream_resumes_total", model=model, outcome="resumed") - resumes
    also = (
        f", {int(resumed)} streams resumed there (the engine's 200 had reached the client)" if resumed else ""
    )
    cell.saw(
        f"4/4 answered 200, no error (2 JSON, 2 streams); {int(retried)} failed over to the other "
        f"replica{also}; slowest answer {max(took) * 1000:.0f} ms",
        recover_s=max(took),
    )
    assert retried >= 1
    eventually(lambda: rig.idle(model))
    finished = rig.finished(model, before)
    assert finished["a"].get("stop") == 4


ONE_REPLICA_STATUS = {
    "refused": 503,
    "reset_before_headers": 502,
    "status_500": 502,
    "status_502": 502,
    "status_503": 503,
    "malformed_json": 502,
}


@pytest.mark.parametrize(
    "stem", list(ONE_REPLICA_STATUS), ids=[f"{s}-one_replica" for s in ONE_REPLICA_STATUS]
)
def test_a_failure_before_the_first_byte_with_one_replica_is_a_real_status(
    rig: Rig, cell: Cell, stem: str
) -> None:
    model = f"{stem}-one"
    expected = ONE_REPLICA_STATUS[stem]
    errors = metric(rig.gw, "offload_requests_total", model=model, status=str(expected))
    reply = post(rig.gw, body(model))
    answer = stream(rig.gw, body(model))
    if stem == "malformed_json":  # its stream request gets a 200 and a body that is no stream
        assert (answer.status, answer.done) == (200, True) and answer.error is not None
        streamed = f"stream: {answer.describe()}"
    else:
        assert answer.status == expected, answer.body
        streamed = f"stream: status {answer.status} before any byte"
    cell.saw(f"JSON: {reply.describe()}; {streamed}", recover_s=reply.seconds)
    assert reply.status == expected, reply.body
    assert reply.seconds < 5
    if expected == 503:
        # (the engine's own 503, or no replica up): the client is told when to come back
        assert httpx.post(rig.gw.base_url + "/v1/chat/completions", json=body(model)).headers.get(
            "retry-after"
        )
    assert metric(rig.gw, "offload_requests_total", model=model, status=str(expected)) - errors >= 1
    eventually(lambda: rig.idle(model))


def _after_first_byte(rig: Rig, replicas: str, fault: str) -> tuple[str, dict[str, Any], list[str]]:
    """The model and request body of an after-the-first-byte cell."""
    if fault in AFTER_FIRST_BYTE:
        model = f"sim-{replicas}"
        knobs = {**AFTER_FIRST_BYTE[fault], "fault_scope": "original"}
        return model, body(model, sim=knobs), rig.models[model]
    model = f"malformed_sse-{replicas}"
    return model, body(model), rig.models[model]


FAULTS_AFTER = [*AFTER_FIRST_BYTE, "malformed_sse"]


@pytest.mark.parametrize("fault", FAULTS_AFTER, ids=[f"{f}-one_replica" for f in FAULTS_AFTER])
def test_a_stream_broken_after_the_first_byte_with_one_replica_ends_in_band(
    rig: Rig, cell: Cell, fault: str
) -> None:
    model, request, engines = _after_first_byte(rig, "one", fault)
    errors = metric(rig.gw, "offload_request_errors_total", model=model)
    before = rig.snapshot()

    answer = stream(rig.gw, request)

    cell.saw(
        answer.describe() + f"; longest silence {answer.max_gap * 1000:.0f} ms", recover_s=answer.max_gap
    )
    assert answer.status == 200
    assert answer.error is not None and answer.done  # in-band error, then [DONE]
    assert answer.chunks >= 2 and not answer.finish
    if fault.startswith("stalled"):  # the idle timeout ended it: not sooner, and not much later
        assert IDLE_TIMEOUT * 0.9 <= answer.max_gap < IDLE_TIMEOUT + 2.0
    else:
        assert answer.max_gap < 2.0, "the client waited too long for the error"
    eventually(lambda: rig.idle(model))
    assert rig.finished(model, before) == {engines[0]: {"abort": 1}}  # the engine's request ended
    assert metric(rig.gw, "offload_request_errors_total", model=model) - errors == 1


@pytest.mark.parametrize("fault", FAULTS_AFTER, ids=[f"{f}-two_replicas" for f in FAULTS_AFTER])
def test_a_stream_broken_after_the_first_byte_with_two_replicas_is_resumed(
    rig: Rig, cell: Cell, fault: str
) -> None:
    model, request, _ = _after_first_byte(rig, "two", fault)
    resumed = metric(rig.gw, "offload_stream_resumes_total", model=model, outcome="resumed")
    before = rig.snapshot()

    # (malformed_sse-two: round robin starts on the faulty replica, listed first)
    answer = stream(rig.gw, request)

    cell.saw(
        f"resumed on the other replica: {answer.describe()}; longest silence {answer.max_gap * 1000:.0f} ms",
        recover_s=answer.max_gap,
    )
    assert (answer.status, answer.error, answer.done, answer.finish) == (200, None, True, ["stop"])
    assert metric(rig.gw, "offload_stream_resumes_total", model=model, outcome="resumed") - resumed == 1
    eventually(lambda: rig.idle(model))
    finished = rig.finished(model, before)
    assert sum(f.get("abort", 0) for f in finished.values()) == 1  # the broken request, ended
    assert sum(f.get("stop", 0) for f in finished.values()) == 1  # the continuation


def test_an_event_larger_than_the_relays_buffer_arrives_whole(rig: Rig, cell: Cell) -> None:
    cell.cell = "event_larger_than_read_buffer-one_replica"
    answer = stream(rig.gw, body("big-one"), timeout=30)
    cell.saw(
        f"{answer.describe()}; the {BIG_EVENT // (1024 * 1024)} MiB event relayed whole "
        f"in {answer.seconds:.2f} s",
        recover_s=answer.seconds,
    )
    assert (answer.status, answer.error, answer.done) == (200, None, True)
    assert answer.text == "x" * BIG_EVENT + "!"
    eventually(lambda: rig.idle("big-one"))


def test_an_event_that_never_ends_is_cut_at_the_bound_not_buffered_whole(rig: Rig, cell: Cell) -> None:
    """Regression: the relay held an unfinished event in memory whatever its length, re-scanning all
    of it on every read (128 MiB: 65 s of a blocked event loop, every other stream held up by
    seconds, +264 MiB). Now an event past the bound breaks the stream at once."""
    cell.cell = "event_without_end-one_replica"
    engine = rig.engines["endless"]
    before = rig.snapshot()
    assert rig.gw.proc is not None
    with PeakRSS(rig.gw.proc.pid) as rss:
        answer = stream(rig.gw, body("endless-one"), timeout=30)
    cell.saw(
        f"{answer.describe()} after {answer.seconds:.2f} s: the event was cut at "
        f"{MAX_EVENT // 2**20} MiB (the engine had {ENDLESS // 2**20} MiB to send); "
        f"gateway RSS +{rss.growth_mib:.0f} MiB at the peak",
        recover_s=answer.seconds,
    )
    assert (answer.status, answer.done) == (200, True) and answer.error is not None
    assert "longer than" in answer.error["message"]
    assert answer.seconds < 10
    assert engine.sent < ENDLESS  # the gateway hung up rather than reading it all
    assert rss.growth_mib < ENDLESS / 2**20 - 8, "the gateway held about the whole event"
    eventually(lambda: rig.idle("endless-one"))
    assert rig.finished("endless-one", before) == {"endless": {"abort": 1}}


# -- /health answering very slowly ------------------------------------------------------------------

PROBE_TIMEOUT = 0.3


@dataclass
class Health:
    gw: GatewayProcess
    one: Sim
    slow: Sim
    fine: Sim


@pytest.fixture(scope="module")
def health(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Health]:
    config = SimConfig(model="sim", knobs=Knobs(output_tokens=TOKENS))
    with serve_sim(config) as one, serve_sim(config) as slow, serve_sim(config) as fine:
        models = [
            {"name": "slow-one", "task": "chat", "engine": {"url": one.base_url, "served_name": "sim"}},
            {
                "name": "slow-two",
                "task": "chat",
                "policy": "round_robin",
                "engines": [{"url": r.base_url, "served_name": "sim"} for r in (slow, fine)],
            },
        ]
        env = {
            "OFFLOAD_HEALTH__PROBE_INTERVAL": "0.2",
            "OFFLOAD_HEALTH__PROBE_TIMEOUT": str(PROBE_TIMEOUT),
            "OFFLOAD_HEALTH__COOLDOWN": "0.3",
            "OFFLOAD_HEALTH__SCRAPE_INTERVAL": "0",
        }
        gw = start_gateway(tmp_path_factory.mktemp("health"), models, env)
        try:
            yield Health(gw, one, slow, fine)
        finally:
            gw.stop()


def test_a_replica_whose_health_answers_very_slowly_is_taken_out_then_back(
    health: Health, cell: Cell
) -> None:
    cell.cell = "very_slow_health-one_replica"
    gw, sim = health.gw, health.one
    assert post(gw, body("slow-one")).status == 200
    sim.set_knobs(health_delay=5.0)  # far past the probe timeout; chat still answers at once
    slowed = time.monotonic()
    statuses, slowest = [], 0.0
    try:
        while time.monotonic() - slowed < 15:
            reply = post(gw, body("slow-one"), timeout=10)
            statuses.append(reply.status)
            slowest = max(slowest, reply.seconds)
            if reply.status != 200:
                break
            time.sleep(0.05)
        out = time.monotonic() - slowed
        refused = httpx.post(gw.base_url + "/v1/chat/completions", json=body("slow-one"), timeout=10)
    finally:
        sim.set_knobs(health_delay=0.0)
    healed = time.monotonic()
    wait_until(lambda: post(gw, body("slow-one")).status == 200, 15, interval=0.05, what="served again")
    back = time.monotonic() - healed
    cell.saw(
        f"served ({statuses.count(200)} x 200, none slower than {slowest * 1000:.0f} ms) until repeated "
        f"probes failed, out after {out:.1f} s: then {refused.status_code} with Retry-After; "
        f"served again {back:.1f} s after /health answered",
        recover_s=back,
    )
    assert statuses[-1] == 503 and set(statuses[:-1]) == {200}
    assert refused.status_code == 503 and refused.headers.get("retry-after")
    assert slowest < 2.0  # a slow probe never held a request up
    assert out < 10 and back < 10


def test_with_two_replicas_a_slow_health_moves_the_traffic_without_an_error(
    health: Health, cell: Cell
) -> None:
    cell.cell = "very_slow_health-two_replicas"
    gw, slow = health.gw, health.slow
    slow.set_knobs(health_delay=5.0)
    slowed = time.monotonic()
    statuses: list[int] = []
    moved, streak = 0.0, 0  # since when, and how many in a row, the slow replica got none
    try:
        while streak < 6 and time.monotonic() - slowed < 15:  # (round robin: 6 in a row elsewhere)
            hits = slow.snapshot()
            statuses.append(post(gw, body("slow-two"), timeout=10).status)
            if slow.snapshot() != hits:
                streak = 0
                continue
            if streak == 0:
                moved = time.monotonic() - slowed
            streak += 1
    finally:
        slow.set_knobs(health_delay=0.0)
    healed = time.monotonic()
    wait_until(lambda: _served_by(gw, slow), 15, interval=0.05, what="the slow replica to be back")
    back = time.monotonic() - healed
    cell.saw(
        f"{statuses.count(200)}/{len(statuses)} answered 200; the slow replica got no more traffic "
        f"{moved:.1f} s after its /health slowed, and was back {back:.1f} s after it answered again",
        recover_s=moved,
    )
    assert set(statuses) == {200}
    assert streak == 6 and moved < 10


def _served_by(gw: GatewayProcess, sim: Sim) -> bool:
    hits = sim.snapshot()
    assert post(gw, body("slow-two")).status == 200
    return sim.snapshot() != hits
