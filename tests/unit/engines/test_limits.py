"""Per-engine limits: CPU sets, memory cgroups where writable, RLIMIT_AS otherwise.

Nothing here writes to the machine's real cgroup hierarchy: cgroup discovery is pointed at
temporary directories, so the tests pass the same with and without root.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines import limits
from engines.limits import Limits, MemoryCgroup, limits_for, memory_cgroup, parse_cpus
from engines.process import EngineProcess
from tests.unit.engines.local import script, wait_until

GIB = 2**30


@pytest.mark.parametrize(
    ("spec", "cpus"),
    [("0", {0}), ("0-1,3", {0, 1, 3}), (" 2 , 4-5 ", {2, 4, 5}), ("1-1", {1}), ("3,3", {3})],
)
def test_cpu_sets_parse_into_cpu_numbers(spec: str, cpus: set[int]) -> None:
    assert parse_cpus(spec) == cpus


@pytest.mark.parametrize("spec", ["", ",", "3-1", "a", "0-b"])
def test_malformed_cpu_sets_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_cpus(spec)


@pytest.fixture
def no_cgroups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without a usable memory cgroup."""
    monkeypatch.setattr(limits, "_V2_ROOTS", (tmp_path / "no-v2",))
    monkeypatch.setattr(limits, "_V1_MEMORY", tmp_path / "no-v1")


@pytest.fixture
def v2_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A writable (fake) cgroup v2 root with the memory controller."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    monkeypatch.setattr(limits, "_V2_ROOTS", (root,))
    monkeypatch.setattr(limits, "_V1_MEMORY", tmp_path / "no-v1")
    return root


def test_no_settings_means_no_limits(no_cgroups: None) -> None:
    result = limits_for("e", None, None)

    assert result == Limits()
    assert result.memory_mechanism is None


def test_without_a_cgroup_memory_falls_back_to_rlimit(no_cgroups: None) -> None:
    result = limits_for("e", "0-1", 0.5)

    assert result.cpus == frozenset({0, 1})
    assert result.memory_bytes == GIB // 2
    assert result.cgroup is None
    assert result.memory_mechanism == "rlimit"


def test_a_cgroup_v2_root_with_the_memory_controller_is_used(v2_root: Path) -> None:
    cgroup = memory_cgroup("chat:v1#1")

    assert cgroup == MemoryCgroup(v2_root / "offload" / "chat-v1-1", "memory.max")
    assert limits_for("chat:v1#1", None, 1).memory_mechanism == "cgroup"
    assert limits_for("chat:v1#1", None, None).cgroup is None  # no limit asked: no cgroup


def test_a_v2_root_without_the_memory_controller_is_not_used(v2_root: Path) -> None:
    (v2_root / "cgroup.controllers").write_text("cpu io pids\n")

    assert memory_cgroup("e") is None


def test_the_cgroup_v1_memory_hierarchy_is_the_second_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = tmp_path / "memory"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    monkeypatch.setattr(limits, "_V2_ROOTS", (tmp_path / "no-v2",))
    monkeypatch.setattr(limits, "_V1_MEMORY", v1)

    assert memory_cgroup("e") == MemoryCgroup(v1 / "offload" / "e", "memory.limit_in_bytes")


def test_a_cgroup_is_created_with_its_limit_entered_and_removed_when_empty(tmp_path: Path) -> None:
    cgroup = MemoryCgroup(tmp_path / "offload" / "e", "memory.max")
    lim = Limits(memory_bytes=GIB, cgroup=cgroup)

    lim.prepare()
    assert (cgroup.path / "memory.max").read_text() == str(GIB)
    cgroup.enter()
    assert (cgroup.path / "cgroup.procs").read_text() == str(os.getpid())
    cgroup.remove()  # a real cgroup directory holds only kernel files; this one cannot go yet
    assert cgroup.path.is_dir()

    for f in cgroup.path.iterdir():
        f.unlink()
    cgroup.remove()
    assert not cgroup.path.exists()
    cgroup.remove()  # already gone: no error


REPORT = (
    "import os, resource\n"
    "print(sorted(os.sched_getaffinity(0)), resource.getrlimit(resource.RLIMIT_AS)[0], flush=True)\n"
    "try:\n"
    "    bytearray(2 * 2**30)\n"
    "    print('allocated', flush=True)\n"
    "except MemoryError:\n"
    "    print('MemoryError', flush=True)\n"
)


@pytest.fixture
def engines() -> Iterator[list[EngineProcess]]:
    procs: list[EngineProcess] = []
    yield procs
    for proc in procs:
        proc.stop(grace=0)


def test_the_engine_runs_on_its_cpus_under_its_address_space_limit(
    no_cgroups: None, engines: list[EngineProcess], tmp_path: Path
) -> None:
    cpu = min(os.sched_getaffinity(0))
    proc = EngineProcess(script(REPORT, cpus=str(cpu), memory_limit_gib=0.5), tmp_path / "e.log")
    engines.append(proc)
    assert proc.limits.memory_mechanism == "rlimit"

    proc.start()
    wait_until(lambda: proc.exit_code() is not None, what="the report")

    affinity, rlimit = proc.log_tail(2)[0].rsplit(" ", 1)
    assert ast.literal_eval(affinity) == [cpu]
    assert int(rlimit) == GIB // 2
    assert proc.log_tail(1) == ["MemoryError"]  # over its limit: the allocation fails, not the machine


def test_without_limits_the_engine_inherits_the_parents(
    no_cgroups: None, engines: list[EngineProcess], tmp_path: Path
) -> None:
    proc = EngineProcess(script(REPORT.replace("2 * 2**30", "2**20")), tmp_path / "e.log")
    engines.append(proc)

    proc.start()
    wait_until(lambda: proc.exit_code() is not None, what="the report")

    affinity, _rlimit = proc.log_tail(2)[0].rsplit(" ", 1)
    assert ast.literal_eval(affinity) == sorted(os.sched_getaffinity(0))
    assert proc.log_tail(1) == ["allocated"]
