"""Version selection: pins, aliases, weights within statistical bounds, stickiness, minimal movement."""

from __future__ import annotations

import random

import pytest

from gateway.config import parse_config
from gateway.routing.table import Route, RouteTable
from gateway.routing.versions import (
    UnknownVersion,
    choose_shadows,
    choose_version,
    fallback_chain,
    rendezvous,
    split_model,
)


def _route(
    weights: dict[str, float], aliases: dict[str, str] | None = None, shadow: dict[str, float] | None = None
) -> Route:
    versions = "\n".join(
        f"      {name}: {{weight: {w}, shadow: {(shadow or {}).get(name, 0)}, engines: [{{url: 'http://e{i}'}}]}}"
        for i, (name, w) in enumerate(weights.items())
    )
    alias_text = "".join(f"\n      {a}: {t}" for a, t in (aliases or {}).items())
    text = f"models:\n  - name: chat\n    task: chat\n    versions:\n{versions}\n"
    if aliases:
        text += f"    aliases:{alias_text}\n"
    route = RouteTable.from_config(parse_config(text)).get("chat")
    assert route is not None
    return route


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("chat", ("chat", None)),
        ("chat:v2", ("chat", "v2")),
        ("org/m:latest", ("org/m", "latest")),
        (":v1", (":v1", None)),
    ],
)
def test_split_model(requested: str, expected: tuple[str, str | None]) -> None:
    assert split_model(requested) == expected


@pytest.mark.parametrize(
    ("selector", "version", "reason"),
    [("v2", "v2", "pinned"), ("v1", "v1", "pinned"), ("stable", "v1", "alias"), ("latest", "v2", "alias")],
)
def test_pins_and_aliases(selector: str, version: str, reason: str) -> None:
    route = _route({"v1": 90, "v2": 10}, {"stable": "v1", "latest": "v2"})
    choice = choose_version(route, selector, session="s")
    assert (choice.version.name, choice.reason) == (version, reason)


def test_unknown_version_names_the_existing_ones() -> None:
    route = _route({"v1": 90, "v2": 10}, {"stable": "v1"})
    with pytest.raises(UnknownVersion) as err:
        choose_version(route, "v9", session=None)
    assert "chat:v1" in str(err.value) and "chat:v2" in str(err.value) and "chat:stable" in str(err.value)


@pytest.mark.parametrize("weights", [{"v1": 90, "v2": 10}, {"v1": 50, "v2": 50}, {"v1": 1, "v2": 1, "v3": 2}])
def test_random_split_follows_weights(weights: dict[str, float]) -> None:
    route = _route(weights)
    rng = random.Random(7)
    n = 20_000
    counts = dict.fromkeys(weights, 0)
    for _ in range(n):
        counts[choose_version(route, None, None, rng).version.name] += 1
    total = sum(weights.values())
    for name, w in weights.items():
        p = w / total
        sigma = (n * p * (1 - p)) ** 0.5
        assert abs(counts[name] - n * p) < 5 * sigma, (name, counts)


@pytest.mark.parametrize("weights", [{"v1": 90, "v2": 10}, {"v1": 1, "v2": 1, "v3": 2}])
def test_sticky_split_follows_weights_across_sessions(weights: dict[str, float]) -> None:
    route = _route(weights)
    n = 20_000
    counts = dict.fromkeys(weights, 0)
    for i in range(n):
        counts[choose_version(route, None, f"user-{i}").version.name] += 1
    total = sum(weights.values())
    for name, w in weights.items():
        p = w / total
        assert abs(counts[name] - n * p) < 5 * (n * p * (1 - p)) ** 0.5, (name, counts)


def test_a_session_always_lands_on_the_same_version() -> None:
    route = _route({"v1": 50, "v2": 50})
    for i in range(200):
        first = choose_version(route, None, f"s{i}").version.name
        assert all(choose_version(route, None, f"s{i}").version.name == first for _ in range(5))
        assert choose_version(route, None, f"s{i}").reason == "sticky"


def test_reweighting_moves_only_the_minimum_share_of_sessions() -> None:
    before = _route({"v1": 90, "v2": 10})
    after = _route({"v1": 80, "v2": 20})
    n = 20_000
    moved_to_v2 = moved_to_v1 = 0
    for i in range(n):
        a = choose_version(before, None, f"u{i}").version.name
        b = choose_version(after, None, f"u{i}").version.name
        moved_to_v2 += a == "v1" and b == "v2"
        moved_to_v1 += a == "v2" and b == "v1"
    assert moved_to_v1 == 0, "no session should leave the version that gained weight"
    # the minimum is 10% of sessions; allow sampling noise
    assert 0.09 * n < moved_to_v2 < 0.11 * n


def test_adding_a_version_only_takes_sessions_for_itself() -> None:
    two = _route({"v1": 50, "v2": 50})
    three = _route({"v1": 50, "v2": 50, "v3": 50})
    n = 9_000
    for i in range(n):
        a = choose_version(two, None, f"k{i}").version.name
        b = choose_version(three, None, f"k{i}").version.name
        assert b in (a, "v3")


def test_zero_weight_version_gets_no_unpinned_traffic() -> None:
    route = _route({"v1": 1, "v2": 0})
    assert {choose_version(route, None, f"s{i}").version.name for i in range(500)} == {"v1"}
    assert choose_version(route, "v2", None).version.name == "v2"


def test_rendezvous_is_deterministic() -> None:
    assert rendezvous("abc", [("a", 1), ("b", 1)]) == rendezvous("abc", [("b", 1), ("a", 1)])


def test_shadow_share_is_close_to_configured_percent() -> None:
    route = _route({"v1": 1, "v2": 0}, shadow={"v2": 25})
    primary = route.versions["v1"]
    hits = sum(bool(choose_shadows(route, primary, f"req-{i}")) for i in range(10_000))
    assert 2_300 < hits < 2_700


def test_primary_is_never_its_own_shadow() -> None:
    route = _route({"v1": 1, "v2": 1}, shadow={"v2": 100})
    assert choose_shadows(route, route.versions["v2"], "r") == []
    assert [v.name for v in choose_shadows(route, route.versions["v1"], "r")] == ["v2"]


def test_fallback_chain_follows_fallbacks_without_cycles() -> None:
    text = """
models:
  - name: chat
    task: chat
    versions:
      v1: {weight: 1, fallback: v2, engines: [{url: "http://a"}]}
      v2: {weight: 1, fallback: v3, engines: [{url: "http://b"}]}
      v3: {weight: 1, fallback: v1, engines: [{url: "http://c"}]}
"""
    route = RouteTable.from_config(parse_config(text)).get("chat")
    assert route is not None
    assert [v.name for v in fallback_chain(route, route.versions["v1"])] == ["v1", "v2", "v3"]
