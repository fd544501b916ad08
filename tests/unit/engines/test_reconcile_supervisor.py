"""The supervisor's set changed while it runs (a reload): add, set aside, drain, retire; real
simulator engine processes through :class:`engines.control.LocalEngineControl`."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines.control import LocalEngineControl
from engines.hostinfo import group_members
from engines.supervisor import Supervisor
from gateway.services.engine_control import EngineSet
from tests.unit.engines.local import sim, wait_until


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    """One engine running (``v1``), watched."""
    sup = Supervisor([sim("chat:v1")], tmp_path / "models", tmp_path / "logs", out=io.StringIO())
    sup.start_all()
    sup.wait_all(poll=0.05)
    sup.start_watching(interval=0.05)
    yield sup
    sup.stop_all(grace=1)


@pytest.fixture
def control(supervisor: Supervisor) -> LocalEngineControl:
    return LocalEngineControl(supervisor)


def states(control: LocalEngineControl) -> list[tuple[str, str]]:
    return [(r["name"], r["state"]) for r in control.describe()]


async def test_an_added_engine_starts_without_blocking_and_becomes_ready(control: LocalEngineControl) -> None:
    v2 = sim("chat:v2")

    await control.add(v2)

    assert "chat:v2" in control.specs()
    assert ("chat:v2", "starting") in states(control) or ("chat:v2", "ready") in states(control)
    assert await control.wait_ready("chat:v2", 20)
    assert ("chat:v2", "ready") in states(control)


async def test_a_retired_engine_finishes_its_requests_then_its_process_group_is_gone(
    supervisor: Supervisor, control: LocalEngineControl
) -> None:
    m = supervisor.managed["chat:v1"]
    url, pid = m.process.spec.base_url, m.process.pid
    assert pid is not None
    control.begin(url)  # a stream in flight

    retiring = asyncio.create_task(control.retire(url, drain_timeout=30))
    await asyncio.to_thread(wait_until, lambda: ("chat:v1", "draining") in states(control), 5, "draining")
    assert control.specs() == {}  # out of the set at once
    assert m.process.pid == pid and not retiring.done()  # still running: its request is not done

    control.end(url)
    assert await asyncio.wait_for(retiring, 20) == 0
    assert states(control) == [("chat:v1", "retired")]
    await asyncio.to_thread(wait_until, lambda: not group_members(pid), 10, "the engine's processes to exit")


async def test_the_drain_deadline_stops_an_engine_whose_requests_do_not_finish(
    supervisor: Supervisor, control: LocalEngineControl
) -> None:
    url = supervisor.managed["chat:v1"].process.spec.base_url
    control.begin(url)

    assert await control.retire(url, drain_timeout=0.1) == 1  # stopped with one still in flight
    assert states(control) == [("chat:v1", "retired")]


async def test_a_replacement_runs_beside_the_engine_it_replaces_until_that_one_retires(
    supervisor: Supervisor, control: LocalEngineControl
) -> None:
    old = supervisor.managed["chat:v1"]
    old_url = old.process.spec.base_url

    await control.add(sim("chat:v1", dtype="float32"))  # same name, other settings (and port)
    assert await control.wait_ready("chat:v1", 20)
    new_url = control.specs()["chat:v1"].base_url

    assert new_url != old_url and old.state == "ready"  # both serve until the switch
    assert [n for n, _ in states(control)] == ["chat:v1", "chat:v1"]
    control.begin(old_url)
    control.begin(new_url)
    assert old.in_flight == 1 and supervisor.managed["chat:v1"].in_flight == 1  # counted apart

    control.end(old_url)
    assert await control.retire(old_url, drain_timeout=10) == 0
    assert states(control) == [("chat:v1", "ready"), ("chat:v1", "retired")]


def test_the_gateway_sees_the_local_control_as_an_engine_set(control: LocalEngineControl) -> None:
    # gateway.app gives a reload to gateway.rollout only for an EngineSet: `offload run`'s is one.
    assert isinstance(control, EngineSet)
