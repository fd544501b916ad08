"""Replica health as a circuit breaker: unknown, up, down (open), half-open trial."""

from __future__ import annotations

from gateway.routing.breaker import Breakers, State
from gateway.routing.table import Replica


def _replica(rid: str = "r0") -> Replica:
    return Replica(id=rid, model="m", version="", base_url="http://e", served_name="m")


def test_unknown_replica_gets_no_traffic_until_a_probe_succeeds() -> None:
    h = Breakers()
    assert h.healthy((_replica(),)) == []
    assert h.probe_ok("r0")
    assert h.state("r0") is State.UP and h.available("r0")


def test_refused_probe_takes_replica_down_at_once() -> None:
    h = Breakers()
    h.probe_ok("r0")
    assert h.probe_failed("r0", refused=True, consecutive=1)
    assert h.state("r0") is State.DOWN and not h.available("r0")


def test_slow_probes_take_replica_down_only_after_threshold() -> None:
    h = Breakers(failure_threshold=3)
    h.probe_ok("r0")
    assert not h.probe_failed("r0", refused=False, consecutive=1)
    assert not h.probe_failed("r0", refused=False, consecutive=2)
    assert h.probe_failed("r0", refused=False, consecutive=3)
    assert h.state("r0") is State.DOWN


def test_request_failures_open_the_circuit_after_threshold_and_success_resets_count() -> None:
    h = Breakers(failure_threshold=3)
    h.probe_ok("r0")
    h.failure("r0", unreachable=False)
    h.failure("r0", unreachable=False)
    h.success("r0")
    h.failure("r0", unreachable=False)
    assert h.state("r0") is State.UP
    h.failure("r0", unreachable=False)
    h.failure("r0", unreachable=False)
    assert h.state("r0") is State.DOWN


def test_unreachable_opens_at_once() -> None:
    h = Breakers()
    h.probe_ok("r0")
    h.failure("r0", unreachable=True, now=100.0)
    assert h.state("r0") is State.DOWN


def test_open_circuit_waits_for_cooldown_then_half_open_allows_one_trial() -> None:
    h = Breakers(cooldown=2.0)
    h.probe_ok("r0")
    h.failure("r0", unreachable=True, now=100.0)
    assert not h.probe_ok("r0", now=101.0)  # still cooling down
    assert h.state("r0") is State.DOWN
    assert h.probe_ok("r0", now=102.5)
    assert h.state("r0") is State.HALF_OPEN and h.available("r0")
    h.admit("r0")  # the trial request
    assert not h.available("r0"), "only one trial at a time"
    assert h.healthy((_replica(),)) == []
    assert h.success("r0")
    assert h.state("r0") is State.UP and h.available("r0")


def test_failed_trial_reopens_with_doubled_cooldown() -> None:
    h = Breakers(cooldown=2.0, max_cooldown=5.0)
    h.probe_ok("r0")
    h.failure("r0", unreachable=True, now=100.0)
    h.probe_ok("r0", now=102.5)
    h.admit("r0")
    h.failure("r0", unreachable=False, now=103.0)
    assert h.state("r0") is State.DOWN
    assert not h.probe_ok("r0", now=106.0)  # 4 s cooldown now
    assert h.probe_ok("r0", now=107.5)
    h.admit("r0")
    h.failure("r0", unreachable=False, now=108.0)
    assert not h.probe_ok("r0", now=112.0)  # capped at 5 s
    assert h.probe_ok("r0", now=113.5)


def test_an_abandoned_trial_lets_another_one_through() -> None:
    h = Breakers(cooldown=2.0)
    h.probe_ok("r0")
    h.failure("r0", unreachable=True, now=100.0)
    h.probe_ok("r0", now=102.5)
    h.admit("r0")

    h.abandoned("r0")

    assert h.state("r0") is State.HALF_OPEN and h.available("r0")


def test_a_successful_trial_resets_the_cooldown() -> None:
    h = Breakers(cooldown=2.0, max_cooldown=30.0)
    h.probe_ok("r0")
    h.failure("r0", unreachable=True, now=100.0)
    h.probe_ok("r0", now=102.5)
    h.admit("r0")
    h.failure("r0", unreachable=False, now=103.0)  # 4 s now
    h.probe_ok("r0", now=107.5)
    h.admit("r0")
    h.success("r0")

    h.failure("r0", unreachable=True, now=200.0)

    assert not h.probe_ok("r0", now=201.5)
    assert h.probe_ok("r0", now=202.5)  # back to the base 2 s


def test_failures_while_down_do_not_extend_the_cooldown() -> None:
    h = Breakers(cooldown=2.0)
    h.probe_ok("r0")
    h.failure("r0", unreachable=True, now=100.0)

    assert not h.failure("r0", unreachable=True, now=101.5)

    assert h.probe_ok("r0", now=102.5)


def test_probe_failures_of_an_unknown_replica_only_count_when_refused() -> None:
    h = Breakers(failure_threshold=2)

    assert not h.probe_failed("r0", refused=False, consecutive=5)
    assert h.state("r0") is State.UNKNOWN
    assert h.probe_failed("r0", refused=True, consecutive=6)
    assert h.state("r0") is State.DOWN
