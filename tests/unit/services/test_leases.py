"""Leases: a request's hold on a replica, counted in flight and its outcome fed to the breaker."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import EngineConnectError, EngineError, EngineStatusError, EngineTimeoutError
from gateway.routing.breaker import Breakers, State
from gateway.routing.load import Loads
from gateway.routing.table import Replica, RouteTable
from gateway.services.leases import Leases
from tests.unit.conftest import CHAT_URL, RETRY_AFTER
from tests.unit.fakes import FakeEngines


@pytest.fixture
def chat(table: RouteTable) -> Replica:
    return table.replicas()[0]


# --- calling --------------------------------------------------------------------------------------


def test_calling_counts_the_call_in_flight_while_it_runs(leases: Leases, loads: Loads, chat: Replica) -> None:
    with leases.calling(chat):
        assert loads.in_flight(chat.id) == 1
        with leases.calling(chat):
            assert loads.in_flight(chat.id) == 2
    assert loads.in_flight(chat.id) == 0


def test_calling_marks_the_replica_down_when_it_cannot_be_reached(
    leases: Leases, breakers: Breakers, loads: Loads, chat: Replica
) -> None:
    with pytest.raises(EngineConnectError) as info, leases.calling(chat):
        raise EngineConnectError("the engine is unreachable")

    assert breakers.state(chat.id) is State.DOWN
    assert info.value.retry_after == RETRY_AFTER
    assert loads.in_flight(chat.id) == 0


@pytest.mark.parametrize(
    "exc",
    [
        EngineError("broke"),
        EngineTimeoutError("slow"),
        EngineStatusError(502, "failed"),
        EngineStatusError(400, "bad"),
        RuntimeError("bug"),
    ],
)
def test_calling_keeps_the_replica_up_after_one_other_failure(
    leases: Leases, breakers: Breakers, loads: Loads, chat: Replica, exc: Exception
) -> None:
    with pytest.raises(type(exc)), leases.calling(chat):
        raise exc

    assert breakers.state(chat.id) is State.UP
    assert loads.in_flight(chat.id) == 0


@pytest.mark.parametrize(
    "exc", [EngineStatusError(502, "failed"), EngineError("broke"), EngineTimeoutError("slow")]
)
def test_repeated_engine_failures_open_the_circuit(
    leases: Leases, breakers: Breakers, chat: Replica, exc: Exception
) -> None:
    for _ in range(3):  # the breakers' default threshold
        with pytest.raises(type(exc)), leases.calling(chat):
            raise exc

    assert breakers.state(chat.id) is State.DOWN


def test_a_success_resets_the_failure_count(leases: Leases, breakers: Breakers, chat: Replica) -> None:
    for _ in range(2):
        with pytest.raises(EngineStatusError), leases.calling(chat):
            raise EngineStatusError(502, "failed")
    with leases.calling(chat):
        pass

    assert breakers.snapshot(chat.id).failures == 0


def test_client_errors_relayed_by_the_engine_never_open_the_circuit(
    leases: Leases, breakers: Breakers, chat: Replica
) -> None:
    for _ in range(10):
        with pytest.raises(EngineStatusError), leases.calling(chat):
            raise EngineStatusError(400, "prompt too long")

    assert breakers.state(chat.id) is State.UP


def test_a_half_open_replica_takes_one_trial_and_its_success_closes_the_circuit(
    leases: Leases, breakers: Breakers, chat: Replica
) -> None:
    breakers.mark(chat.id, State.HALF_OPEN)

    with leases.calling(chat):
        assert breakers.available(chat.id) is False, "only one trial at a time"

    assert breakers.state(chat.id) is State.UP


def test_a_failed_trial_opens_the_circuit_again(leases: Leases, breakers: Breakers, chat: Replica) -> None:
    breakers.mark(chat.id, State.HALF_OPEN)

    with pytest.raises(EngineStatusError), leases.calling(chat):
        raise EngineStatusError(502, "failed")

    assert breakers.state(chat.id) is State.DOWN


@pytest.mark.parametrize("exc", [EngineStatusError(400, "prompt too long"), asyncio.CancelledError()])
def test_a_half_open_replica_is_available_again_after_its_trial_ends(
    leases: Leases, breakers: Breakers, loads: Loads, chat: Replica, exc: BaseException
) -> None:
    breakers.mark(chat.id, State.HALF_OPEN)
    assert breakers.available(chat.id)

    with pytest.raises(type(exc)), leases.calling(chat):
        raise exc

    assert loads.in_flight(chat.id) == 0
    assert breakers.available(chat.id)


# --- hold (streams) -------------------------------------------------------------------------------


def test_hold_counts_a_stream_in_flight_until_it_is_released(
    leases: Leases, loads: Loads, chat: Replica
) -> None:
    release = leases.hold(chat)
    assert loads.in_flight(chat.id) == 1

    release()

    assert loads.in_flight(chat.id) == 0


def test_release_is_idempotent(leases: Leases, loads: Loads, chat: Replica) -> None:
    release = leases.hold(chat)
    other = leases.hold(chat)  # another stream on the same replica

    release()
    release()

    assert loads.in_flight(chat.id) == 1
    other()
    assert loads.in_flight(chat.id) == 0


def test_a_state_change_keeps_the_in_flight_count(
    leases: Leases, breakers: Breakers, loads: Loads, chat: Replica
) -> None:
    release = leases.hold(chat)

    breakers.mark(chat.id, State.DOWN)

    assert loads.in_flight(chat.id) == 1
    release()
    assert loads.in_flight(chat.id) == 0


def test_a_stream_on_a_half_open_replica_is_its_trial(
    leases: Leases, breakers: Breakers, chat: Replica
) -> None:
    breakers.mark(chat.id, State.HALF_OPEN)

    release = leases.hold(chat)
    assert breakers.available(chat.id) is False
    leases.succeeded(chat)
    release()

    assert breakers.state(chat.id) is State.UP


def test_a_broken_stream_counts_against_the_replica(
    leases: Leases, breakers: Breakers, chat: Replica
) -> None:
    leases.failed(chat)
    assert (breakers.state(chat.id), breakers.snapshot(chat.id).failures) == (State.UP, 1)
    leases.failed(chat)
    leases.failed(chat)

    assert breakers.state(chat.id) is State.DOWN


def test_succeeded_resets_the_failure_count(leases: Leases, breakers: Breakers, chat: Replica) -> None:
    leases.failed(chat)

    leases.succeeded(chat)

    assert breakers.snapshot(chat.id).failures == 0


# --- engine control -------------------------------------------------------------------------------


def test_calls_and_streams_are_reported_to_the_engine_control(
    breakers: Breakers, loads: Loads, chat: Replica
) -> None:
    engines = FakeEngines(set())
    leases = Leases(breakers, loads, engines, retry_after=RETRY_AFTER)

    with leases.calling(chat):
        assert engines.active[CHAT_URL] == 1
    assert engines.active[CHAT_URL] == 0
    with pytest.raises(EngineError), leases.calling(chat):
        raise EngineError("broke")
    assert engines.active[CHAT_URL] == 0
    release = leases.hold(chat)
    assert engines.active[CHAT_URL] == 1
    release()
    release()

    assert engines.active[CHAT_URL] == 0
    assert loads.in_flight(chat.id) == 0


# --- streams cut when a probe takes their replica down ------------------------------------------


def test_a_probe_taking_the_replica_down_cuts_the_watched_streams_once(
    leases: Leases, breakers: Breakers, chat: Replica
) -> None:
    cuts: list[str] = []
    leases.watch(chat, lambda: cuts.append("a"))
    unwatch_b = leases.watch(chat, lambda: cuts.append("b"))
    unwatch_b()  # ended before the replica went down

    breakers.failure(chat.id, unreachable=True)  # a failed request opens the circuit, cuts nothing
    assert cuts == []
    breakers.mark(chat.id, State.UP)
    breakers.probe_failed(chat.id, refused=False, consecutive=1)  # one slow probe: still up
    assert cuts == []
    breakers.probe_failed(chat.id, refused=True, consecutive=2)
    breakers.probe_failed(chat.id, refused=True, consecutive=3)  # already down: nothing more

    assert cuts == ["a"]
