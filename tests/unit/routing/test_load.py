"""Loads: the gateway's in-flight counts and the engines' own queue figures."""

from __future__ import annotations

import pytest

from gateway.routing.load import KV_PRESSURE, Loads


def test_in_flight_counts_begin_and_end() -> None:
    loads = Loads()

    loads.begin("r")
    loads.begin("r")
    loads.end("r")

    assert loads.in_flight("r") == 1
    assert loads.in_flight("other") == 0


def test_in_flight_never_goes_negative() -> None:
    loads = Loads()
    loads.end("r")
    loads.end("r")
    loads.begin("r")

    assert loads.in_flight("r") == 1


def test_load_of_an_idle_replica_is_zero() -> None:
    assert Loads().load("r") == 0


def test_load_includes_the_engine_queue_and_kv_pressure() -> None:
    loads = Loads()
    loads.begin("r")

    loads.engine_load("r", waiting=3, running=1, kv_usage=0.95)

    assert loads.load("r") == 1 + 3 + 2.0
    figures = loads.snapshot("r")
    assert (figures.in_flight, figures.engine_waiting, figures.engine_running, figures.kv_cache_usage) == (
        1,
        3,
        1,
        0.95,
    )


@pytest.mark.parametrize(
    ("kv", "extra"), [(0.0, 0.0), (KV_PRESSURE, 0.0), (KV_PRESSURE + 0.01, 2.0), (1.0, 2.0)]
)
def test_kv_cache_pressure_counts_as_two_more_queued_requests(kv: float, extra: float) -> None:
    loads = Loads()

    loads.engine_load("r", waiting=0, running=5, kv_usage=kv)

    assert loads.load("r") == extra


def test_engine_figures_replace_the_last_ones_and_keep_the_in_flight_count() -> None:
    loads = Loads()
    loads.begin("r")
    loads.engine_load("r", waiting=5, running=0, kv_usage=0)

    loads.engine_load("r", waiting=1, running=0, kv_usage=0)

    assert loads.load("r") == 2


def test_forget_keeps_only_the_configured_replicas() -> None:
    loads = Loads()
    loads.begin("a")
    loads.begin("b")

    loads.forget({"a"})

    assert (loads.in_flight("a"), loads.in_flight("b")) == (1, 0)
