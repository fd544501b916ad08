"""The fault matrix's report: each cell (a test that takes the ``cell`` fixture) says what it saw;
at the end of the session the cells that ran are written to
``benchmarks/results/reliability/faults.json`` for ``docs/RELIABILITY.md``.

Shape: ``{"cells": [{"group", "cell", "outcome", "abort_p99_s", "recover_s", "passed"}], "generated"}``
(``abort_p99_s``: seconds from the client's close to the engine's request ending, p99 over the
cell's tries; ``recover_s``: seconds until the client or the gateway was served again, or until a
broken stream ended; both null where not measured).
"""

from __future__ import annotations

import datetime
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

REPORT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "reliability" / "faults.json"
GROUPS = ("client_leaves", "engine_fails", "dns", "memory", "reload")


@dataclass
class Cell:
    """One cell of the matrix: what the client saw (``outcome``) and the times measured."""

    group: str
    cell: str
    outcome: str = "did not get as far as an outcome"
    abort_p99_s: float | None = None
    recover_s: float | None = None
    passed: bool = False

    def saw(self, outcome: str, abort_p99_s: float | None = None, recover_s: float | None = None) -> None:
        self.outcome = outcome
        if abort_p99_s is not None:
            self.abort_p99_s = round(abort_p99_s, 4)
        if recover_s is not None:
            self.recover_s = round(recover_s, 4)


_CELLS: list[Cell] = []


@pytest.fixture
def cell(request: pytest.FixtureRequest) -> Iterator[Cell]:
    """This test's cell: its group is the module's ``GROUP``, its name the test's parameters (or
    the test's name without ``test_``)."""
    group = getattr(request.module, "GROUP", None)
    assert group in GROUPS, f"{request.module.__name__} sets no GROUP"
    callspec = getattr(request.node, "callspec", None)
    name = callspec.id if callspec is not None else request.node.name.removeprefix("test_")
    entry = Cell(group, name)
    request.node.fault_cell = entry
    _CELLS.append(entry)
    yield entry


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    entry: Cell | None = getattr(item, "fault_cell", None)
    if entry is None:
        return
    if report.when == "call":
        entry.passed = report.passed
        if report.failed and entry.outcome.startswith("did not"):
            entry.outcome = "failed: " + str(call.excinfo.value if call.excinfo else "")[:300]
    elif report.failed:  # a failing teardown (engine left busy) fails the cell too
        entry.passed = False


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _CELLS:
        return
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "cells": [asdict(c) for c in _CELLS],
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    REPORT.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
