from __future__ import annotations

import pytest

from gateway.routing.load import Loads
from gateway.routing.policy import LeastOutstanding
from tests.unit.fakes import replica


@pytest.mark.parametrize(
    ("in_flight", "expected"),
    [
        ({"a": 0}, "a"),
        ({"a": 0, "b": 0, "c": 0}, "a"),  # ties go to the first
        ({"a": 2, "b": 1, "c": 3}, "b"),
        ({"a": 1, "b": 1, "c": 0}, "c"),
        ({"a": 5, "b": 2, "c": 2}, "b"),
        ({"a": 0, "b": 7}, "a"),
    ],
)
def test_least_outstanding_picks_the_fewest_in_flight(in_flight: dict[str, int], expected: str) -> None:
    loads = Loads()
    for rid, count in in_flight.items():
        for _ in range(count):
            loads.begin(rid)

    chosen = LeastOutstanding(loads).choose([replica(rid) for rid in in_flight])

    assert chosen.id == expected


def test_least_outstanding_follows_load_as_it_changes() -> None:
    loads = Loads()
    policy = LeastOutstanding(loads)
    candidates = [replica("a"), replica("b")]

    picks = []
    for _ in range(4):
        chosen = policy.choose(candidates)
        loads.begin(chosen.id)
        picks.append(chosen.id)

    assert picks == ["a", "b", "a", "b"]
