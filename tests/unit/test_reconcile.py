"""gateway.rollout: a reload reconciles the local engines (plan, then start, route, drain, stop)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines.spec import EngineSpec
from gateway.config import OffloadConfig, parse_config
from gateway.local_engines import engine_specs, with_ports
from gateway.rollout import Plan, Rollout, plan
from gateway.services.engine_control import EngineSet

MODELS = Path("/data/models")


def config(versions: dict[str, float], ports: dict[str, int], **local: object) -> OffloadConfig:
    """Model ``chat`` with the given versions (weight each), each a local smollm2 engine."""
    extra = "".join(f", {k}: {v}" for k, v in local.items())
    lines = ["models:", "  - name: chat", "    task: chat", "    versions:"]
    for v, weight in versions.items():
        lines.append(
            f"      {v}: {{weight: {weight}, engines: [{{local: {{model: smollm2, port: {ports[v]}{extra}}}}}]}}"
        )
    return parse_config("\n".join(lines) + "\n")


def specs(cfg: OffloadConfig) -> list[EngineSpec]:
    return engine_specs(cfg, MODELS)


def ports_free(n: int) -> list[int]:
    """``n`` ports nobody listens on."""
    found = []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            found.append(int(s.getsockname()[1]))
    return found


# --- the plan ----------------------------------------------------------------------------------
def test_the_plan_adds_new_names_replaces_changed_settings_and_removes_the_rest() -> None:
    p1, p2, p3 = ports_free(3)
    running = {s.name: s for s in specs(config({"v1": 1, "v2": 1}, {"v1": p1, "v2": p2}))}
    desired = specs(config({"v2": 1, "v3": 1}, {"v2": p2, "v3": p3}, dtype="float32"))

    steps = plan(desired, running)

    assert [s.name for s in steps.add] == ["chat:v3"]
    assert [s.name for s in steps.replace] == ["chat:v2"]  # dtype changed
    assert steps.remove == ("chat:v1",)
    assert not plan(desired, {s.name: s for s in desired})  # nothing to do
    assert plan([], {}) == Plan()


def test_a_weight_change_alone_restarts_nothing() -> None:
    p1, p2 = ports_free(2)
    before = specs(config({"v1": 90, "v2": 10}, {"v1": p1, "v2": p2}))
    after = specs(config({"v1": 10, "v2": 90}, {"v1": p1, "v2": p2}))

    assert not plan(after, {s.name: s for s in before})


def test_with_ports_moves_the_routes_and_the_specs_alike() -> None:
    cfg = config({"v1": 1, "v2": 1}, {"v1": 8101, "v2": 8102})

    moved = with_ports(cfg, {"chat:v2": 9999})

    urls = {v: vc.engines[0].base_url for v, vc in moved.models[0].version_configs().items()}
    assert urls == {"v1": "http://127.0.0.1:8101", "v2": "http://127.0.0.1:9999"}
    assert [s.launch.port for s in engine_specs(cfg, MODELS, {"chat:v2": 9999})] == [8101, 9999]
    assert with_ports(cfg, {}) is cfg


# --- applying it -------------------------------------------------------------------------------
class FakeSet:
    """An :class:`EngineSet` whose engines become ready when the test says so."""

    def __init__(self, initial: list[EngineSpec]) -> None:
        self.running = {s.name: s for s in initial}
        self.ready = {s.name: asyncio.Event() for s in initial}
        for event in self.ready.values():
            event.set()
        self.log: list[tuple[str, str]] = []

    def specs(self) -> dict[str, EngineSpec]:
        return dict(self.running)

    async def add(self, spec: EngineSpec) -> None:
        self.log.append(("add", f"{spec.name}@{spec.launch.port}"))
        self.running[spec.name] = spec
        self.ready[spec.name] = asyncio.Event()

    async def wait_ready(self, name: str, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.ready[name].wait(), timeout or 0.001)
        except TimeoutError:
            return False
        return True

    async def retire(self, base_url: str, drain_timeout: float) -> int:
        self.log.append(("retire", base_url))
        self.running = {n: s for n, s in self.running.items() if s.base_url != base_url}
        return 0


class FakeRoutes:
    """Records the configurations put in force, and what had been retired by then."""

    def __init__(self, engines: FakeSet) -> None:
        self.engines = engines
        self.swaps: list[OffloadConfig] = []

    async def rebuild(self, config: OffloadConfig) -> None:
        self.engines.log.append(("routes", ",".join(sorted(config.models[0].version_configs()))))
        self.swaps.append(config)


@pytest.fixture
def ports() -> Iterator[list[int]]:
    yield ports_free(3)


def rollout(start: OffloadConfig) -> tuple[Rollout, FakeSet, FakeRoutes]:
    engines = FakeSet(specs(start))
    assert isinstance(engines, EngineSet)
    routes = FakeRoutes(engines)
    return Rollout(engines, routes, start, specs, drain_timeout=5), engines, routes


async def test_an_added_version_is_started_and_routed_only_once_ready(ports: list[int]) -> None:
    p1, p2, _ = ports
    start = config({"v1": 1}, {"v1": p1})
    roll, engines, routes = rollout(start)

    await roll.rebuild(config({"v1": 90, "v2": 10}, {"v1": p1, "v2": p2}))

    assert engines.log == [("add", f"chat:v2@{p2}")]  # started; the reload returned without waiting
    assert routes.swaps == []  # v2 gets no traffic before it is up
    engines.ready["chat:v2"].set()
    await roll.settled()
    assert engines.log[1:] == [("routes", "v1,v2")]


async def test_a_removed_version_leaves_the_routes_at_once_then_drains(ports: list[int]) -> None:
    p1, p2, _ = ports
    roll, engines, _ = rollout(config({"v1": 90, "v2": 10}, {"v1": p1, "v2": p2}))

    await roll.rebuild(config({"v2": 1}, {"v2": p2}))
    await roll.settled()

    assert engines.log == [("routes", "v2"), ("retire", f"http://127.0.0.1:{p1}")]
    assert list(engines.running) == ["chat:v2"]


async def test_switching_versions_keeps_the_old_one_routed_until_the_new_one_is_up(ports: list[int]) -> None:
    p1, p2, _ = ports
    roll, engines, _ = rollout(config({"v2": 1}, {"v2": p2}))

    await roll.rebuild(config({"v1": 1}, {"v1": p1}))
    assert engines.log == [("add", f"chat:v1@{p1}")]  # v2 still serves: nothing retired yet
    engines.ready["chat:v1"].set()
    await roll.settled()

    assert engines.log[1:] == [("routes", "v1"), ("retire", f"http://127.0.0.1:{p2}")]


async def test_changed_settings_start_a_replacement_on_a_free_port_before_the_old_one_retires(
    ports: list[int],
) -> None:
    p1, _, _ = ports
    roll, engines, routes = rollout(config({"v1": 1}, {"v1": p1}))
    with socket.socket() as held:  # the running engine holds the file's port
        held.bind(("127.0.0.1", p1))
        held.listen()
        await roll.rebuild(config({"v1": 1}, {"v1": p1}, dtype="float32"))

    (action, added), *_ = engines.log
    new_port = int(added.split("@")[1])
    assert action == "add" and new_port != p1
    engines.ready["chat:v1"].set()
    await roll.settled()
    routed = routes.swaps[-1].models[0].version_configs()["v1"].engines[0].base_url
    assert routed == f"http://127.0.0.1:{new_port}"  # the routes follow the replacement
    assert engines.log[1:] == [("routes", "v1"), ("retire", f"http://127.0.0.1:{p1}")]

    # unchanged in the next reload: it stays where it runs, nothing restarts
    await roll.rebuild(config({"v1": 1}, {"v1": p1}, dtype="float32"))
    assert routes.swaps[-1].models[0].version_configs()["v1"].engines[0].base_url == routed
    assert [a for a, _ in engines.log].count("add") == 1


async def test_a_newer_reload_supersedes_a_rollout_still_waiting(ports: list[int]) -> None:
    p1, p2, _ = ports
    start = config({"v1": 1}, {"v1": p1})
    roll, engines, routes = rollout(start)

    await roll.rebuild(config({"v1": 90, "v2": 10}, {"v1": p1, "v2": p2}))  # v2 loading...
    await roll.rebuild(start)  # ...and taken back out
    await roll.settled()

    assert engines.log == [("add", f"chat:v2@{p2}"), ("routes", "v1"), ("retire", f"http://127.0.0.1:{p2}")]
    engines.ready["chat:v2"].set()
    await asyncio.sleep(0)
    assert len(routes.swaps) == 1  # the superseded switch never happens


async def test_an_engine_that_never_comes_up_leaves_the_running_routes(ports: list[int]) -> None:
    p1, p2, _ = ports
    roll, engines, routes = rollout(config({"v1": 1}, {"v1": p1}, startup_timeout=0.05))

    await roll.rebuild(config({"v1": 1, "v2": 1}, {"v1": p1, "v2": p2}, startup_timeout=0.05))
    await roll.settled()

    assert routes.swaps == [] and ("add", f"chat:v2@{p2}") in engines.log
