"""Breakers: the state of each replica's circuit, and which replicas may take a request."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway.routing import breaker as breaker_module
from gateway.routing.breaker import Breakers, State
from gateway.routing.table import Replica
from tests.unit.fakes import replica


def replicas(*ids: str) -> tuple[Replica, ...]:
    return tuple(replica(i) for i in ids)


def test_a_replica_never_seen_is_unknown_and_not_up() -> None:
    breakers = Breakers()

    assert breakers.state("r") is State.UNKNOWN
    assert breakers.is_up("r") is False
    assert breakers.available("r") is False
    assert breakers.healthy(replicas("r")) == []


def test_mark_reports_whether_the_state_changed() -> None:
    breakers = Breakers()

    assert breakers.mark("r", State.UP) is True
    assert breakers.mark("r", State.UP) is False
    assert breakers.mark("r", State.DOWN) is True
    assert breakers.mark("r", State.UNKNOWN) is True
    assert breakers.mark("r", State.UNKNOWN) is False


def test_marking_unknown_first_is_not_a_change() -> None:
    assert Breakers().mark("r", State.UNKNOWN) is False


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ({"a": State.UP, "b": State.UP, "c": State.UP}, ["a", "b", "c"]),
        ({"a": State.DOWN, "b": State.UP, "c": State.UNKNOWN}, ["b"]),
        ({"a": State.UP, "b": State.DOWN, "c": State.UP}, ["a", "c"]),
        ({"a": State.DOWN, "b": State.DOWN, "c": State.UNKNOWN}, []),
        ({"a": State.HALF_OPEN, "b": State.DOWN, "c": State.UP}, ["a", "c"]),
    ],
)
def test_healthy_keeps_only_available_replicas_in_order(
    states: dict[str, State], expected: list[str]
) -> None:
    breakers = Breakers()
    for rid, state in states.items():
        breakers.mark(rid, state)

    assert [r.id for r in breakers.healthy(replicas("a", "b", "c"))] == expected


def test_healthy_leaves_out_excluded_replicas() -> None:
    breakers = Breakers()
    for rid in "abc":
        breakers.mark(rid, State.UP)

    assert [r.id for r in breakers.healthy(replicas("a", "b", "c"), frozenset({"b"}))] == ["a", "c"]


@pytest.mark.parametrize(
    ("state", "up"), [(State.UNKNOWN, False), (State.UP, True), (State.HALF_OPEN, True), (State.DOWN, False)]
)
def test_is_up_for_a_closed_or_half_open_circuit(state: State, up: bool) -> None:
    breakers = Breakers()
    breakers.mark("r", state)

    assert breakers.is_up("r") is up


def test_mark_updates_since_only_on_change(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([10.0, 20.0])
    monkeypatch.setattr(breaker_module, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    breakers = Breakers()
    breakers.mark("r", State.UP)  # changed at 10.0

    breakers.mark("r", State.UP)
    assert breakers.snapshot("r").since == 10.0
    breakers.mark("r", State.DOWN)
    assert breakers.snapshot("r").since == 20.0


def test_admit_on_a_closed_circuit_changes_nothing() -> None:
    breakers = Breakers()
    breakers.mark("r", State.UP)

    breakers.admit("r")
    breakers.admit("r")

    assert breakers.available("r") is True
    assert breakers.snapshot("r").trial_in_flight is False


def test_forget_ids_starts_those_replicas_over() -> None:
    breakers = Breakers()
    breakers.mark("a", State.UP)
    breakers.mark("b", State.UP)

    breakers.forget_ids({"a", "never-seen"})

    assert breakers.state("a") is State.UNKNOWN
    assert breakers.state("b") is State.UP


def test_forget_keeps_only_the_configured_replicas() -> None:
    breakers = Breakers()
    breakers.mark("a", State.UP)
    breakers.mark("b", State.DOWN)

    breakers.forget({"a"})

    assert breakers.state("a") is State.UP
    assert breakers.state("b") is State.UNKNOWN
