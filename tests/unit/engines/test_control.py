"""LocalEngineControl: the supervisor seen from the gateway's event loop."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines.control import LocalEngineControl
from engines.hostinfo import group_members
from engines.supervisor import Supervisor
from tests.unit.engines.local import sim, wait_until


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    """An always-on engine (not started) and an on-demand one, watched."""
    sup = Supervisor(
        [sim("always", task="embeddings"), sim("lazy", on_demand=True, idle_timeout=600)],
        tmp_path / "models",
        tmp_path / "logs",
        out=io.StringIO(),
    )
    sup.start_watching(interval=0.05)
    yield sup
    sup.stop_all(grace=1)


@pytest.fixture
def control(supervisor: Supervisor) -> LocalEngineControl:
    return LocalEngineControl(supervisor)


def url(supervisor: Supervisor, name: str) -> str:
    return supervisor.managed[name].process.spec.base_url


def test_describe_lists_every_engine_in_order(supervisor: Supervisor, control: LocalEngineControl) -> None:
    rows = control.describe()

    assert [r["name"] for r in rows] == ["always", "lazy"]
    always = rows[0]
    assert always["state"] == "stopped" and always["task"] == "embeddings"
    assert always["served_name"] == "always" and always["on_demand"] is False and rows[1]["on_demand"] is True
    assert always["port"] == supervisor.managed["always"].process.spec.launch.port
    assert always["pid"] is None and always["uptime_s"] is None and always["restarts"] == 0
    assert always["memory_limit"] is None and always["log"].endswith("always.log")


async def test_ensure_running_starts_an_on_demand_engine_and_waits_for_it(
    supervisor: Supervisor, control: LocalEngineControl
) -> None:
    lazy = url(supervisor, "lazy")
    assert control.can_start(lazy) is True
    assert control.can_start(url(supervisor, "always")) is False  # not on demand: the supervisor's job

    assert await control.ensure_running(lazy, timeout=10) is True

    row = next(r for r in control.describe() if r["name"] == "lazy")
    assert row["state"] == "ready" and row["pid"] is not None and row["uptime_s"] is not None
    assert control.can_start(lazy) is False  # already up


async def test_an_unknown_engine_cannot_be_started_or_acted_on(control: LocalEngineControl) -> None:
    assert control.can_start("http://127.0.0.1:1") is False
    assert await control.ensure_running("http://127.0.0.1:1", timeout=1) is False

    with pytest.raises(KeyError):
        await control.act("nope", "start")


async def test_act_starts_and_stops_an_engine_by_name(
    supervisor: Supervisor, control: LocalEngineControl
) -> None:
    m = supervisor.managed["always"]

    await control.act("always", "start")
    await asyncio.to_thread(wait_until, lambda: m.state == "ready", 10, "the start")
    pid = m.process.pid
    assert pid is not None

    await control.act("always", "stop")
    assert m.state == "stopped" and group_members(pid) == []


def test_begin_and_end_count_requests_in_flight_and_mark_activity(
    supervisor: Supervisor, control: LocalEngineControl
) -> None:
    m = supervisor.managed["lazy"]
    lazy = url(supervisor, "lazy")
    m.last_activity = before = time.monotonic() - 100

    control.begin(lazy)
    control.begin(lazy)
    assert m.in_flight == 2 and m.last_activity > before
    control.end(lazy)
    control.end(lazy)
    control.end(lazy)  # never below zero
    assert m.in_flight == 0
    row = next(r for r in control.describe() if r["name"] == "lazy")
    assert row["in_flight"] == 0

    control.begin("http://127.0.0.1:1")  # not ours: ignored
    control.end("http://127.0.0.1:1")


def test_log_tail_reads_the_engines_log(supervisor: Supervisor, control: LocalEngineControl) -> None:
    log = supervisor.managed["always"].process.log_path
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("one\ntwo\n\nthree\n")

    assert control.log_tail("always", 2) == ["two", "three"]
    assert control.log_tail("lazy", 2) == []  # no log yet
