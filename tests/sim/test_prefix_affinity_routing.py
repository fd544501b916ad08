"""Prefix affinity through the gateway: a shared prefix stays on one replica and hits its prefix cache.

Runs ``benchmarks.prefix_affinity`` small, on two simulators with the prefix-cache knob, side by side
with round robin (which sends a group's requests to both replicas, so each replica misses once).
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import prefix_affinity


def test_prefix_affinity_keeps_groups_together_and_hits_more_than_round_robin(tmp_path: Path) -> None:
    out = tmp_path / "prefix_affinity-sim"
    argv = [
        "--engine",
        "sim",
        "--policies",
        "prefix_affinity,round_robin",
        "--groups",
        "6",
        "--per-group",
        "3",
    ]
    argv += ["--rounds", "1", "--sim-ttft", "0.2", "--out", str(out)]
    assert prefix_affinity.main(argv) == 0
    summary = json.loads(out.with_suffix(".json").read_text())["summary"]
    affinity, round_robin = summary["prefix_affinity"], summary["round_robin"]
    assert affinity["errors"] == round_robin["errors"] == 0
    assert affinity["kept_together"] == 1.0  # 4 streams: within the load bound's slack, nothing moves
    assert round_robin["kept_together"] < 1.0
    # Affinity: 2 of a group's 3 requests hit (~65%); round robin misses once on each replica it uses.
    assert affinity["prefix_cache_hit_rate"] > 0.6
    assert affinity["prefix_cache_hit_rate"] > round_robin["prefix_cache_hit_rate"] + 0.1
    assert affinity["ttft_p50_ms"] < round_robin["ttft_p50_ms"] / 2
    assert "| prefix_affinity |" in out.with_suffix(".md").read_text()
