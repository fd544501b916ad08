from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway.routing import health as health_module
from gateway.routing.health import HealthRegistry, State
from gateway.routing.table import Replica
from tests.unit.fakes import replica


def replicas(*ids: str) -> tuple[Replica, ...]:
    return tuple(replica(i) for i in ids)


def test_a_replica_never_seen_is_unknown_and_not_up() -> None:
    registry = HealthRegistry()

    assert registry.state("r") is State.UNKNOWN
    assert registry.is_up("r") is False
    assert registry.healthy(replicas("r")) == []


def test_mark_reports_whether_the_state_changed() -> None:
    registry = HealthRegistry()

    assert registry.mark("r", State.UP) is True
    assert registry.mark("r", State.UP) is False
    assert registry.mark("r", State.DOWN) is True
    assert registry.mark("r", State.UNKNOWN) is True
    assert registry.mark("r", State.UNKNOWN) is False


def test_marking_unknown_first_is_not_a_change() -> None:
    assert HealthRegistry().mark("r", State.UNKNOWN) is False


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ({"a": State.UP, "b": State.UP, "c": State.UP}, ["a", "b", "c"]),
        ({"a": State.DOWN, "b": State.UP, "c": State.UNKNOWN}, ["b"]),
        ({"a": State.UP, "b": State.DOWN, "c": State.UP}, ["a", "c"]),
        ({"a": State.DOWN, "b": State.DOWN, "c": State.UNKNOWN}, []),
    ],
)
def test_healthy_keeps_only_up_replicas_in_order(states: dict[str, State], expected: list[str]) -> None:
    registry = HealthRegistry()
    for rid, state in states.items():
        registry.mark(rid, state)

    assert [r.id for r in registry.healthy(replicas("a", "b", "c"))] == expected


def test_mark_updates_since_only_on_change(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([10.0, 20.0])
    monkeypatch.setattr(health_module, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    registry = HealthRegistry()
    registry.mark("r", State.UP)  # changed at 10.0

    registry.mark("r", State.UP)
    assert registry._get("r").since == 10.0
    registry.mark("r", State.DOWN)
    assert registry._get("r").since == 20.0


def test_in_flight_counts_begin_and_end() -> None:
    registry = HealthRegistry()

    registry.begin("r")
    registry.begin("r")
    registry.end("r")

    assert registry.in_flight("r") == 1
    assert registry.in_flight("other") == 0


def test_in_flight_never_goes_negative() -> None:
    registry = HealthRegistry()
    registry.end("r")
    registry.end("r")
    registry.begin("r")

    assert registry.in_flight("r") == 1


def test_state_changes_keep_the_in_flight_count() -> None:
    registry = HealthRegistry()
    registry.begin("r")

    registry.mark("r", State.DOWN)

    assert registry.in_flight("r") == 1
