"""The overhead benchmark's arithmetic and the README section it writes (synthetic runs, no servers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import overhead_render as render
from benchmarks import overhead_report as report
from benchmarks import readme as readme_module
from benchmarks.readme import update_section

SCENARIOS = [("ns1", "non-streaming, 1 client"), ("s64", "streaming, 64 streams")]


def run(target: str, scenario: str, rnd: int, latency: float, cpu: float, rps: float) -> dict[str, Any]:
    return {
        "target": target,
        "scenario": scenario,
        "round": rnd,
        "requests": 100,
        "errors": {},
        "latency_p50_ms": latency,
        "latency_p99_ms": latency * 2,
        "ttft_p50_ms": latency,
        "itl_p99_ms": latency,
        "rps": rps,
        "cpu_ms_per_req": cpu,
    }


def summary() -> dict[str, Any]:
    runs = []
    for rnd in range(3):
        for scenario in ("ns1", "s64"):
            runs.append(run("sim", scenario, rnd, 1.0 + rnd, 0.2, 200.0))
            runs.append(run("offload", scenario, rnd, 1.5 + rnd, 0.5, 196.0))
            runs.append(run("vllm-router", scenario, rnd, 1.2 + rnd, 0.25, 199.0))
    return report.summarize(runs, [], {"offload": 80.0}, ["sim", "offload", "vllm-router"], SCENARIOS)


def test_added_numbers_are_paired_within_a_round_and_ratios_follow() -> None:
    s = summary()

    assert s["scenarios"]["ns1"]["offload"]["added_latency_p50_ms"] == 0.5
    assert s["ratios"]["vllm-router"]["ns1"]["cpu_per_req"] == 2.0
    goals = {g["goal"]: g["ok"] for g in s["goals"]}
    assert goals["CPU/request within 3x of vllm-router (1 client)"] is True
    assert goals["gateway CPU @1 client <= 0.6 ms/request"] is True
    assert goals["streams/s @64 streams >= 0.98x direct"] is True  # 196 / 200


def test_the_readme_section_is_replaced_between_its_markers_only(tmp_path: Path) -> None:
    meta = {
        "mode": "full",
        "started_at": "2026-01-01 00:00:00",
        "plan": {"rounds": 3, "seconds": 8.0},
        "machine": {"cpus": 2, "loadavg_start": [1.0], "loadavg_end": [1.5]},
        "targets": {
            "sim": {"version": "floor"},
            "offload": {"version": "0.1.0 (abc)"},
            "vllm-router": {"version": "vllm-router 0.1.17"},
        },
    }
    text = render.readme_summary(summary(), meta)
    readme = tmp_path / "README.md"
    readme.write_text(
        "before\n<!-- results:overhead:begin -->\nold table\n<!-- results:overhead:end -->\nafter\n"
    )

    assert update_section("overhead", text, readme) is True
    assert update_section("missing", text, readme) is False

    written = readme.read_text()
    assert written.startswith("before\n<!-- results:overhead:begin -->\n") and written.endswith(
        "end -->\nafter\n"
    )
    assert "old table" not in written
    assert "| gateway CPU per request @1 client (ms) | - | 0.500 | 0.250 |" in written
    assert "vllm-router 0.1.17" in written


def test_publish_updates_the_readme_only_for_the_standard_results_file(
    tmp_path: Path, monkeypatch: Any
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:demo:begin -->\nold\n<!-- results:demo:end -->\n")
    monkeypatch.setattr(readme_module, "README", readme)
    monkeypatch.setattr(readme_module, "RESULTS", tmp_path / "results")
    (tmp_path / "results").mkdir()

    readme_module.publish("demo", tmp_path / "elsewhere", ["custom run"])
    assert "old" in readme.read_text() and (tmp_path / "elsewhere.md").read_text() == "custom run\n"

    readme_module.publish("demo", tmp_path / "results" / "demo", ["| table |"])
    assert "| table |" in readme.read_text() and "old" not in readme.read_text()
