"""Replica discovery from DNS names (Kubernetes headless services)."""

from __future__ import annotations

import pytest

from gateway import discovery
from gateway.config import parse_config
from gateway.discovery import TableSource, dns_names, resolve
from gateway.routing.breaker import Breakers, State
from gateway.routing.load import Loads
from gateway.routing.router import Router
from gateway.routing.table import RouteTable

CONFIG = """
models:
  - name: chat
    task: chat
    versions:
      v1: {weight: 1, engines: [{dns: "localhost:9"}, {url: "http://127.0.0.1:10"}]}
"""


class _Monitor:
    def __init__(self) -> None:
        self.probed: list[str] = []

    async def probe_all(self, replicas):  # type: ignore[no-untyped-def]
        self.probed += [r.id for r in replicas]


def test_dns_names_lists_discovered_engines() -> None:
    assert dns_names(parse_config(CONFIG)) == ["localhost:9"]


async def test_resolve_returns_the_addresses_of_a_name() -> None:
    assert "127.0.0.1" in await resolve("localhost:9")
    assert await resolve("no-such-host.invalid:80") == []


def test_one_replica_per_address_and_ids_hide_the_address() -> None:
    config = parse_config(CONFIG)
    table = RouteTable.from_config(config, {"localhost:9": ["127.0.0.2", "127.0.0.3"]})
    replicas = table.replicas()
    assert [r.base_url for r in replicas] == [
        "http://127.0.0.2:9",
        "http://127.0.0.3:9",
        "http://127.0.0.1:10",
    ]
    assert all("127.0.0" not in r.id for r in replicas)
    assert len({r.id for r in replicas}) == 3
    # the same address keeps the same id across rebuilds (its health carries over)
    again = RouteTable.from_config(config, {"localhost:9": ["127.0.0.3"]})
    assert again.replicas()[0].id == replicas[1].id


def test_unresolved_name_contributes_no_replica() -> None:
    table = RouteTable.from_config(parse_config(CONFIG), {})
    assert [r.base_url for r in table.replicas()] == ["http://127.0.0.1:10"]


async def test_rebuild_resolves_probes_new_replicas_and_swaps_the_table() -> None:
    config = parse_config(CONFIG)
    router = Router(RouteTable.from_config(config), Breakers(), Loads(), 5)
    monitor = _Monitor()
    source = TableSource(config, router, router.breakers, monitor)  # type: ignore[arg-type]
    await source.rebuild()
    urls = {r.base_url for r in router.table.replicas()}
    assert "http://127.0.0.1:9" in urls and "http://127.0.0.1:10" in urls
    assert monitor.probed and all(rid.startswith("chat-v1-0-") for rid in monitor.probed)
    assert source.resolved["localhost:9"]


async def test_rebuild_probes_only_new_replicas_and_starts_a_moved_id_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def fixed(name: str) -> list[str]:
        return ["127.0.0.2"]

    monkeypatch.setattr(discovery, "resolve", fixed)
    config = parse_config(CONFIG)
    before = RouteTable.from_config(config, {"localhost:9": ["127.0.0.2"]})
    breakers = Breakers()
    for replica in before.replicas():
        breakers.mark(replica.id, State.UP)
    router = Router(before, breakers, Loads(), 5)
    monitor = _Monitor()
    source = TableSource(config, router, router.breakers, monitor)  # type: ignore[arg-type]
    # The same replica id ("chat-v1-1") now points at another engine: it must be probed again.
    moved = parse_config(CONFIG.replace("http://127.0.0.1:10", "http://127.0.0.1:11"))

    await source.rebuild(moved)

    discovered, url = router.table.replicas()
    assert (url.id, url.base_url) == ("chat-v1-1", "http://127.0.0.1:11")
    assert monitor.probed == ["chat-v1-1"]
    assert breakers.state("chat-v1-1") is State.UNKNOWN  # started over (the fake monitor probes nothing)
    assert breakers.state(discovered.id) is State.UP  # unchanged: kept, not probed again
    assert source.config is moved
    assert source.resolved == {"localhost:9": ["127.0.0.2"]}
