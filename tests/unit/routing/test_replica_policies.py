"""Replica policies: least outstanding, round robin, prefix affinity with bounded load."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.routing.load import Loads
from gateway.routing.policy import LeastOutstanding, PrefixAffinity, RoundRobin, make_policy
from gateway.routing.table import Replica


def _replicas(n: int) -> list[Replica]:
    return [
        Replica(id=f"r{i}", model="m", version="", base_url=f"http://e{i}", served_name="m") for i in range(n)
    ]


def _loads(
    replicas: list[Replica], in_flight: dict[str, int] | None = None, waiting: dict[str, float] | None = None
) -> Loads:
    loads = Loads()
    for r in replicas:
        for _ in range((in_flight or {}).get(r.id, 0)):
            loads.begin(r.id)
        loads.engine_load(r.id, (waiting or {}).get(r.id, 0.0), 0.0, 0.0)
    return loads


@pytest.mark.parametrize(
    ("in_flight", "waiting", "expected"),
    [
        ({"r0": 3, "r1": 1, "r2": 2}, {}, "r1"),
        ({"r0": 0, "r1": 0, "r2": 0}, {}, "r0"),  # ties: first
        ({"r0": 1, "r1": 0, "r2": 1}, {"r1": 5}, "r0"),  # the engine's own queue counts
    ],
)
def test_least_outstanding_picks_least_loaded(
    in_flight: dict[str, int], waiting: dict[str, float], expected: str
) -> None:
    replicas = _replicas(3)
    assert LeastOutstanding(_loads(replicas, in_flight, waiting)).choose(replicas).id == expected


def test_round_robin_cycles_through_candidates() -> None:
    replicas = _replicas(3)
    policy = RoundRobin(_loads(replicas))
    assert [policy.choose(replicas).id for _ in range(6)] == ["r0", "r1", "r2", "r0", "r1", "r2"]


def test_prefix_affinity_keeps_a_prefix_on_one_replica() -> None:
    replicas = _replicas(4)
    policy = PrefixAffinity(_loads(replicas))
    for key in ("alpha", "beta", "gamma", "delta"):
        chosen = {policy.choose(replicas, key).id for _ in range(20)}
        assert len(chosen) == 1


def test_prefix_affinity_spreads_different_prefixes() -> None:
    replicas = _replicas(4)
    policy = PrefixAffinity(_loads(replicas))
    counts = Counter(policy.choose(replicas, f"prefix-{i}").id for i in range(4000))
    assert set(counts) == {"r0", "r1", "r2", "r3"}
    assert min(counts.values()) > 800


def test_prefix_affinity_falls_back_when_its_replica_is_overloaded() -> None:
    replicas = _replicas(2)
    idle = PrefixAffinity(_loads(replicas)).choose(replicas, "hot").id
    other = "r1" if idle == "r0" else "r0"
    busy = _loads(replicas, in_flight={idle: 10, other: 0})
    assert PrefixAffinity(busy).choose(replicas, "hot").id == other


def test_prefix_affinity_hot_prefix_cannot_pile_everything_on_one_replica() -> None:
    replicas = _replicas(2)
    figures = _loads(replicas)
    policy = PrefixAffinity(figures)
    for _ in range(40):  # one very hot prefix; requests stay in flight
        figures.begin(policy.choose(replicas, "hot").id)
    loads = sorted(figures.in_flight(r.id) for r in replicas)
    assert loads[1] <= 1.5 * 41 / 2 + 1, loads  # bounded by the balance factor


def test_prefix_affinity_without_key_is_least_loaded() -> None:
    replicas = _replicas(2)
    assert PrefixAffinity(_loads(replicas, {"r0": 2})).choose(replicas, None).id == "r1"


@pytest.mark.parametrize("name", ["least_outstanding", "round_robin", "prefix_affinity"])
def test_make_policy_builds_each_named_policy(name: str) -> None:
    replicas = _replicas(2)
    assert make_policy(name, _loads(replicas)).choose(replicas, "k") in replicas  # type: ignore[arg-type]
