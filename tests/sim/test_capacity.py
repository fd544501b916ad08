"""The capacity benchmark's core layout, its load split and its paired ratios and targets."""

from __future__ import annotations

import pytest

from benchmarks import capacity_report as report
from benchmarks import capacity_targets as roles
from benchmarks.capacity_load import split_streams


def _cores(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(roles.os, "sched_getaffinity", lambda pid: set(range(n)))


def test_sixteen_cores_are_split_between_the_roles_without_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    _cores(monkeypatch, 16)
    layout = roles.plan_layout(None, pin=True)
    assert (layout.gateway, layout.sims, layout.load) == (
        tuple(range(6)),
        tuple(range(6, 10)),
        tuple(range(10, 16)),
    )
    assert layout.prefix("gateway")[-1] == "0,1,2,3,4,5"


def test_two_cores_are_shared_by_every_role(monkeypatch: pytest.MonkeyPatch) -> None:
    _cores(monkeypatch, 2)
    layout = roles.plan_layout(None, pin=True)
    assert not layout.pinned and layout.prefix("load") == [] and layout.gateway_cores == 2


def test_a_split_larger_than_the_machine_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _cores(monkeypatch, 16)
    with pytest.raises(ValueError, match="does not fit"):
        roles.plan_layout("8,8,8", pin=True)


def test_streams_are_split_evenly_over_generators() -> None:
    assert split_streams(64, 3) == [22, 21, 21] and sum(split_streams(7, 7)) == 7


def _run(target: str, rnd: int, tps: float, cpu: float) -> dict[str, object]:
    return {
        "target": target,
        "level": 64,
        "round": rnd,
        "tokens_per_s": tps,
        "cpu_us_per_token": cpu,
        "gateway_cores_busy": 1.0,
        "sims_cores_busy": 1.0,
        "load_cores_busy": 1.0,
        "machine_cores_busy": 3.0,
        "ttft_p50_ms": 1.0,
        "itl_p50_ms": 0.1,
        "processes": 1,
        "errors": {},
    }


@pytest.mark.parametrize(("offload_cpu", "met"), [(15.0, True), (16.0, False)])
def test_cpu_target_is_the_median_of_ratios_paired_within_a_round(offload_cpu: float, met: bool) -> None:
    runs = [_run("vllm-router", r, 1000, 10.0) for r in range(3)]
    runs += [_run("offload-1", r, 500, offload_cpu) for r in range(3)]
    runs += [_run("offload-2", r, 900, offload_cpu) for r in range(3)]
    summary = report.summarize(runs, ["vllm-router", "offload-1", "offload-2"], [64])
    layout = {"pinned": True, "gateway": [0, 1]}
    cpu, scale, auto = report.verdicts(summary, [64], layout)
    assert cpu["met"] is met and cpu["value"] == pytest.approx(offload_cpu / 10)
    assert scale["value"] == pytest.approx(1.8) and scale["met"] is True
    assert auto["met"] is None  # no offload-auto run: not measured, neither met nor missed


def test_scaling_is_not_judged_when_roles_share_the_cores() -> None:
    runs = [_run("offload-1", 0, 500, 10), _run("offload-2", 0, 1000, 10)]
    summary = report.summarize(runs, ["offload-1", "offload-2"], [64])
    scale = report.verdicts(summary, [64], {"pinned": False, "gateway": None})[1]
    assert scale["value"] == pytest.approx(2.0) and scale["met"] is None
