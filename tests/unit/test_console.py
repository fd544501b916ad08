"""gateway.console: plain tables, /metrics parsing and rates, the reports, and failing cleanly."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from gateway.console import (
    ModelCounts,
    ReplicaState,
    Scrape,
    models_report,
    parse_metrics,
    rates,
    status_report,
    table,
)
from gateway.main import main

ROOT = Path(__file__).resolve().parents[2]


def test_table_aligns_columns_and_shows_none_as_a_dash() -> None:
    text = table(("model", "weight", "replica"), [["chat", 90.0, "chat-v1-0"], ["embeddings-model", None, 3]])
    assert text.splitlines() == [
        "model             weight  replica",
        "chat              90      chat-v1-0",
        "embeddings-model  -       3",
    ]


def test_table_with_no_rows_is_its_header() -> None:
    assert table(("a", "bb"), []) == "a  bb"


def test_table_refuses_a_row_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        table(("a", "b", "c"), [[1, 2]])


def _metrics_page(requests: float, prompt: float, completion: float) -> str:
    """A page shaped like the gateway's (same names and labels), made by prometheus_client itself."""
    r = CollectorRegistry()
    served = ["model", "version", "replica"]
    req = Counter("offload_requests", "", ["endpoint", *served, "status"], registry=r)
    req.labels("/v1/chat/completions", "chat", "v1", "chat-v1-0", "200").inc(requests)
    req.labels("/v1/chat/completions", "chat", "v2", "chat-v2-0", "200").inc(1)
    req.labels("/v1/models", "unknown", "-", "-", "200").inc(50)  # not a model's traffic
    errors = Counter("offload_request_errors", "", ["endpoint", *served, "type"], registry=r)
    errors.labels("/v1/chat/completions", "chat", "v1", "chat-v1-0", "timeout").inc(1)
    Counter("offload_prompt_tokens", "", served, registry=r).labels("chat", "v1", "chat-v1-0").inc(prompt)
    Counter("offload_completion_tokens", "", served, registry=r).labels("chat", "v1", "chat-v1-0").inc(
        completion
    )
    Gauge("offload_requests_in_flight", "", ["model"], registry=r).labels("chat").set(2)
    up = Gauge("offload_replica_up", "", served, registry=r)
    up.labels("chat", "v1", "chat-v1-0").set(1)
    up.labels("chat", "v2", "chat-v2-0").set(0)
    up.labels("emb", "-", "emb-0").set(1)
    Gauge("offload_replica_in_flight", "", served, registry=r).labels("chat", "v1", "chat-v1-0").set(3)
    return generate_latest(r).decode()


def test_parse_metrics_reads_replicas_and_sums_counters_per_model() -> None:
    scrape = parse_metrics(_metrics_page(requests=10, prompt=100, completion=400))
    assert scrape.replicas == (
        ReplicaState("chat", "v1", "chat-v1-0", up=True, in_flight=3),
        ReplicaState("chat", "v2", "chat-v2-0", up=False, in_flight=0),
        ReplicaState("emb", "-", "emb-0", up=True, in_flight=0),
    )
    assert scrape.counts == {
        "chat": ModelCounts(requests=11, errors=1, prompt_tokens=100, completion_tokens=400)
    }
    assert scrape.in_flight == {"chat": 2}


def test_parse_metrics_refuses_what_is_not_prometheus_text() -> None:
    with pytest.raises(ValueError):
        parse_metrics("<html>not metrics</html>\n")


def test_rates_are_the_counter_differences_per_second() -> None:
    before = parse_metrics(_metrics_page(requests=10, prompt=100, completion=400))
    after = parse_metrics(_metrics_page(requests=30, prompt=300, completion=1000))
    [chat] = rates(before, after, seconds=2.0)
    assert (chat.model, chat.requests, chat.errors) == ("chat", 10.0, 0.0)
    assert (chat.prompt_tokens, chat.completion_tokens) == (100.0, 300.0)


def test_rates_count_a_reset_counter_from_zero_and_a_new_model_from_nothing() -> None:
    before = Scrape((), {"chat": ModelCounts(requests=100)})
    after = Scrape((), {"chat": ModelCounts(requests=4), "emb": ModelCounts(requests=6)})
    by_model = {r.model: r.requests for r in rates(before, after, seconds=2.0)}
    assert by_model == {"chat": 2.0, "emb": 3.0}
    with pytest.raises(ValueError):
        rates(before, after, seconds=0)


MODELS = {
    "object": "list",
    "data": [
        {
            "id": "chat",
            "versions": ["chat:v1", "chat:v2"],
            "aliases": {"chat:stable": "chat:v1", "chat:latest": "chat:v2"},
        },
        {"id": "chat:v1", "parent": "chat", "weight": 90.0},
        {"id": "chat:v2", "parent": "chat", "weight": 10.0},
        {"id": "chat:stable", "parent": "chat", "alias_of": "chat:v1"},
        {"id": "chat:latest", "parent": "chat", "alias_of": "chat:v2"},
        {"id": "emb"},
    ],
}


def test_models_report_has_a_row_per_replica_with_weight_aliases_and_health() -> None:
    scrape = parse_metrics(_metrics_page(requests=1, prompt=1, completion=1))
    text = models_report(MODELS, {"status": "ready", "models": {"chat": True, "emb": True}}, scrape)
    rows = [line.split() for line in text.splitlines()]
    assert rows == [
        ["model", "state", "version", "weight", "aliases", "replica", "health", "in_flight"],
        ["chat", "ready", "v1", "90", "stable", "chat-v1-0", "up", "3"],
        ["chat", "ready", "v2", "10", "latest", "chat-v2-0", "down", "0"],
        ["emb", "ready", "-", "-", "-", "emb-0", "up", "0"],
    ]


def test_models_report_shows_a_model_not_probed_yet_and_one_not_ready() -> None:
    text = models_report({"data": [{"id": "emb"}]}, {"models": {"emb": False}}, Scrape((), {}))
    assert text.splitlines()[1].split() == ["emb", "not", "ready", "-", "-", "-", "-", "-", "-"]


def test_status_report_gives_readiness_rates_and_engines() -> None:
    before = parse_metrics(_metrics_page(requests=10, prompt=100, completion=400))
    after = parse_metrics(_metrics_page(requests=12, prompt=120, completion=440))
    engines = [{"name": "chat", "state": "running", "pid": 42, "port": 8101, "uptime_s": 9.5, "restarts": 0}]
    text = status_report(
        {"status": "degraded", "models": {"chat": True, "emb": False}}, engines, before, after, 1.0
    )
    lines = text.splitlines()
    assert lines[0] == "gateway: degraded"
    models_part = lines[: lines.index("engines:")]
    rows = {line.split()[0]: line.split() for line in models_part if line.startswith(("chat ", "emb "))}
    assert rows["chat"][:7] == ["chat", "ready", "2", "2.00", "0.00", "20.0", "40.0"]
    assert rows["emb"][:3] == ["emb", "not", "ready"]
    assert "engines:" in lines
    assert any(line.split()[:4] == ["chat", "running", "42", "8101"] for line in lines)
    no_engines = status_report({"status": "ready", "models": {}}, "none run here", before, after, 1.0)
    assert "engines: none run here" in no_engines.splitlines()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens


@pytest.mark.parametrize("command", [["models"], ["status", "--interval", "0.1"], ["chat", "chat"]])
def test_an_unreachable_gateway_is_one_line_and_exit_status_1(command: list[str]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *command, "--url", url],
        cwd=ROOT,
        input="hello\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done
    assert done.stderr.strip() == done.stderr.strip().splitlines()[0]  # one line
    assert f"cannot reach the gateway at {url}" in done.stderr
    assert "Traceback" not in done.stderr


def test_main_lists_the_console_commands_and_chat_needs_a_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "models" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["chat"])
    assert exc.value.code == 2
    assert "model" in capsys.readouterr().err
