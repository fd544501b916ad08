"""The overhead benchmark's arithmetic, its keyed target's configuration and the README section it
writes (synthetic runs, no servers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import overhead_bench
from benchmarks import overhead_render as render
from benchmarks import overhead_report as report
from benchmarks import readme as readme_module
from benchmarks.readme import update_section
from gateway.config import load_config
from gateway.keys import KeyRing

SCENARIOS = [("ns1", "non-streaming, 1 client"), ("s64", "streaming, 64 streams")]


def run(target: str, scenario: str, rnd: int, latency: float, cpu: float, rps: float) -> dict[str, Any]:
    return {
        "target": target,
        "scenario": scenario,
        "stream": scenario.startswith("s"),
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


def keyed_summary() -> dict[str, Any]:
    """offload 0.50 / 0.52 ms per request in rounds 0 / 1 and offload-keyed 0.51 / 0.546 (ratios 1.02,
    1.05); streams 3.0 / 3.3 ms each round."""
    runs = []
    for rnd, (keyless, keyed) in enumerate(((0.5, 0.51), (0.52, 0.546))):
        runs.append(run("sim", "ns1", rnd, 1.0, 0.2, 200.0))
        runs.append(run("offload", "ns1", rnd, 1.5, keyless, 196.0))
        runs.append(run("offload-keyed", "ns1", rnd, 1.6, keyed, 195.0))
        runs.append(run("vllm-router", "ns1", rnd, 1.2, 0.25, 199.0))
        runs.append(run("sim", "s64", rnd, 10.0, 2.0, 150.0))
        runs.append(run("offload", "s64", rnd, 10.5, 3.0, 149.0))
        runs.append(run("offload-keyed", "s64", rnd, 10.6, 3.3, 149.0))
        runs.append(run("vllm-router", "s64", rnd, 10.4, 2.0, 149.0))
    targets = ["sim", "offload", "offload-keyed", "vllm-router"]
    return report.summarize(runs, [], {"offload": 80.0, "offload-keyed": 81.0}, targets, SCENARIOS)


def test_keyed_and_keyless_cpu_are_compared_side_by_side_within_rounds() -> None:
    s = keyed_summary()

    ns1 = s["keyed"]["ns1"]
    assert ns1["keyless_cpu_ms_per_req"] == 0.51 and ns1["keyed_cpu_ms_per_req"] == 0.528
    assert abs(ns1["ratio"] - 1.035) < 1e-9  # median of the per-round ratios 1.02 and 1.05
    assert abs(s["keyed"]["s64"]["ratio"] - 1.1) < 1e-9
    assert s["keyed"]["ns1"]["stream"] is False and s["keyed"]["s64"]["stream"] is True
    overall = s["keyed_overall"]  # per-round ratios of every scenario without / with streams
    assert abs(overall["per_request"] - 1.035) < 1e-9 and abs(overall["per_stream"] - 1.1) < 1e-9
    assert set(s["ratios"]) == {"vllm-router"}  # a configuration of Offload is not a peer
    goals = {g["goal"]: g for g in s["goals"]}
    goal = goals["key + limits on: CPU/request <= 1.05x off (all client counts)"]
    assert goal["ok"] is True and abs(goal["value"] - 1.035) < 1e-9
    # Without the keyed target there is no comparison and no goal for it.
    assert summary()["keyed"] == {}
    assert not any("key + limits" in g["goal"] for g in summary()["goals"])


def test_the_report_states_keyless_and_keyed_cpu_and_their_ratio() -> None:
    s = keyed_summary()
    meta = {
        "mode": "quick",
        "started_at": "2026-01-01 00:00:00",
        "plan": {"rounds": 2, "seconds": 2.5},
        "machine": {
            "cpus": 2,
            "cpu_model": "x",
            "python": "3.11",
            "loadavg_start": [1.0],
            "loadavg_end": [1.5],
        },
        "tokens_per_answer": 32,
        "prompt_words": 128,
        "stream_itl_s": 0.01,
        "wall_s": 100.0,
        "targets": {
            "sim": {"version": "floor", "ready_s": 0.0, "failed": None, "processes": ["sim"]},
            "offload": {"version": "0.1.0 (abc)", "ready_s": 1.0, "failed": None, "processes": ["offload"]},
            "offload-keyed": {
                "version": "0.1.0 (abc), key + limits",
                "ready_s": 1.0,
                "failed": None,
                "processes": ["offload-keyed"],
            },
            "vllm-router": {"version": "vllm-router 0.1.17", "ready_s": 1.0, "failed": None, "processes": []},
        },
    }

    text = render.markdown(s, meta)
    assert "## Key and limits on (offload-keyed) vs off (offload)" in text
    assert "| non-streaming, 1 client | 0.510 | 0.528 | 1.035 | +3.5% | +0.50 | +0.60 | 0 |" in text
    assert "| streaming, 64 streams | 3.000 | 3.300 | 1.100 | +10.0% |" in text
    assert "## Offload / offload-keyed" not in text
    assert "Keyed / keyless over every round and client count: 1.035x per request (+3.5%), 1.100x" in text
    assert "| key + limits on: CPU/request <= 1.05x off (all client counts) | 1.035 | yes |" in text

    section = render.readme_summary(s, meta)
    assert "| gateway CPU per request @1 client (ms) | - | 0.510 | 0.528 | 0.250 |" in section
    assert (
        "Key and limits off (offload) vs on (offload-keyed), same run: CPU per request 0.510 vs 0.528 ms at "
        "1 client (1.035x, +3.5%); CPU per stream 3.000 vs 3.300 ms at 64 (1.100x, +10.0%)"
    ) in section
    assert "1.035x per request (+3.5%), 1.100x per stream (+10.0%)." in section

    line = render.headline(s)
    assert "key+limits off vs on: 0.510 vs 0.528ms CPU/req @1 client (1.035x)" in line
    assert "3.00 vs 3.30ms CPU/stream @64 (1.100x), all rounds 1.035x CPU/req and 1.100x CPU/stream" in line


def test_the_keyed_target_configures_a_key_with_limits_and_sends_it(tmp_path: Path) -> None:
    engines = {"fast": "http://127.0.0.1:1", "stream": "http://127.0.0.1:2"}
    target, servers = overhead_bench._keyed_offload(tmp_path, engines)

    assert target.name == "offload-keyed" and servers == target.measured
    config = load_config(Path(servers[0].env["OFFLOAD_CONFIG"]))
    assert [m.name for m in config.models] == ["fast", "stream"]
    key = target.headers["Authorization"].removeprefix("Bearer ")
    principal = KeyRing(config.auth).lookup(key)
    assert principal is not None and principal.limited
    assert (principal.rpm, principal.tpm, principal.max_concurrent) == (10_000_000, 1_000_000_000, 100_000)
    assert not (tmp_path / "offload.yaml").exists()  # the keyless target's file stays its own


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
