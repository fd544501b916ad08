"""``offload models``, ``offload status`` and ``offload chat`` (the installed console script) against
the gateway in front of real vLLM engines."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from openai import OpenAI

from tests.integration.conftest import CHAT, EMBED, Engines
from tests.integration.servers import ROOT, GatewayProcess, eventually

OFFLOAD = Path(sys.executable).parent / "offload"  # .venv/bin/offload, installed with the package


def offload(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the ``offload`` console script (without the caller's OFFLOAD_URL/OFFLOAD_API_KEY)."""
    assert OFFLOAD.exists(), f"{OFFLOAD} is missing: install the package (`make test` does)"
    base = {k: v for k, v in os.environ.items() if k not in ("OFFLOAD_URL", "OFFLOAD_API_KEY")}
    return subprocess.run(
        [str(OFFLOAD), *args],
        cwd=ROOT,
        input=stdin,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rows(table_text: str) -> list[list[str]]:
    """The rows of a printed table (header first), split on whitespace."""
    return [line.split() for line in table_text.strip().splitlines()]


def test_models_shows_each_model_ready_with_its_replica_up(gateway: GatewayProcess) -> None:
    done = offload("models", "--url", gateway.base_url)
    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)
    assert table[0] == ["model", "state", "version", "weight", "aliases", "replica", "health", "in_flight"]
    by_model = {row[0]: row for row in table[1:]}
    assert by_model.keys() == {CHAT, EMBED}
    for model in (CHAT, EMBED):
        _, state, version, weight, aliases, replica, health, in_flight = by_model[model]
        assert (state, version, weight, aliases, health, in_flight) == ("ready", "-", "-", "-", "up", "0")
        assert replica.startswith(model)


@pytest.fixture(scope="module")
def canary(engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """SmolLM2 as two versions (90/10, aliases stable and latest) on the session's two SmolLM2 engines."""
    gw = GatewayProcess(tmp_path_factory.mktemp("console-canary"), engines.canary_models()).start()
    yield gw
    gw.stop()


def test_models_shows_versions_with_their_weights_aliases_and_replicas(canary: GatewayProcess) -> None:
    done = offload("models", "--url", canary.base_url)
    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)[1:]
    chat = [row for row in table if row[0] == CHAT]
    assert [row[1:5] for row in chat] == [["ready", "v1", "90", "stable"], ["ready", "v2", "10", "latest"]]
    assert [row[6] for row in chat] == ["up", "up"]
    assert chat[0][5] != chat[1][5]  # one replica each


def test_status_shows_readiness_and_the_rates_of_the_traffic(gateway: GatewayProcess, client: OpenAI) -> None:
    stop, flowing = threading.Event(), threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            client.chat.completions.create(
                model=CHAT, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
            )
            client.embeddings.create(model=EMBED, input="hello")
            flowing.set()

    def rates() -> tuple[list[str], dict[str, list[str]]]:
        done = offload("status", "--url", gateway.base_url, "--interval", "2")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["model"] and "req/s" in line)
        return lines, {line.split()[0]: line.split() for line in lines[header + 1 : header + 3]}

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        assert flowing.wait(120), "no chat and embedding answered"
        # A slow machine may finish no request inside one 2-second window: a few windows are tried.
        for _ in range(5):
            lines, by_model = rates()
            if float(by_model[CHAT][3]) > 0 and float(by_model[EMBED][3]) > 0:
                break
    finally:
        stop.set()
        sender.join(timeout=60)
    assert lines[0] == "gateway: ready"
    _, state, _, requests, errors, prompt_rate, completion_rate = by_model[CHAT]
    assert state == "ready"
    assert float(requests) > 0 and float(errors) == 0
    assert float(prompt_rate) > 0 and float(completion_rate) > 0
    assert by_model[EMBED][1] == "ready" and float(by_model[EMBED][3]) > 0
    assert "engines: none run by this gateway (offload serve)" in lines


def test_chat_streams_answers_to_piped_lines_and_keeps_the_conversation(gateway: GatewayProcess) -> None:
    mark = gateway.log_mark()
    done = offload(
        "chat",
        CHAT,
        "--url",
        gateway.base_url,
        "--system",
        "You are brief.",
        "--max-tokens",
        "16",
        "--temperature",
        "0",
        stdin="What is the capital of France?\nAnd of Italy?\n",
    )
    assert done.returncode == 0, done.stderr
    answers = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(answers) >= 2, done.stdout

    # Each turn was one streamed request; the second carried the first turn (a longer prompt).
    def two_turns() -> list[dict[str, Any]]:
        turns = [
            entry
            for line in gateway.log(since=mark).splitlines()
            if line.startswith("{")
            and (entry := orjson.loads(line)).get("event") == "request"
            and entry.get("route") == "/v1/chat/completions"
        ]
        assert len(turns) == 2, turns
        return turns

    turns = eventually(two_turns)
    assert [t["stream"] for t in turns] == [True, True]
    assert [t["status"] for t in turns] == [200, 200]
    first, second = turns
    assert second["prompt_tokens"] > first["prompt_tokens"] + first["completion_tokens"]


def test_chat_with_an_unknown_model_is_one_line_and_exit_status_1(gateway: GatewayProcess) -> None:
    done = offload("chat", "no-such-model", "--url", gateway.base_url, stdin="Hi\n")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "404" in done.stderr and "no-such-model" in done.stderr


@pytest.fixture(scope="module")
def keyed(engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The session's engines behind the demo keys of deploy/examples/keys.yaml."""
    keys = yaml.safe_load((ROOT / "deploy" / "examples" / "keys.yaml").read_text())["auth"]["keys"]
    gw = GatewayProcess(tmp_path_factory.mktemp("console-keyed"), engines.gateway_models())
    gw.config_path.write_text(yaml.safe_dump({"models": engines.gateway_models(), "auth": {"keys": keys}}))
    yield gw.start()
    gw.stop()


def test_the_commands_send_the_api_key_from_the_option_or_the_environment(keyed: GatewayProcess) -> None:
    refused = offload("models", "--url", keyed.base_url)
    assert refused.returncode == 1 and "401" in refused.stderr and "Traceback" not in refused.stderr
    listed = offload("models", "--url", keyed.base_url, env={"OFFLOAD_API_KEY": "ofl-demo-embed"})
    assert listed.returncode == 0, listed.stderr
    assert [row[0] for row in rows(listed.stdout)[1:]] == [EMBED]  # the key's models only
    status = offload("status", "--url", keyed.base_url, "--api-key", "ofl-demo-embed", "--interval", "0.2")
    assert status.returncode == 0, status.stderr
    assert "engines: not shown (they need an admin key: --api-key)" in status.stdout
    admin = offload("status", "--url", keyed.base_url, "--api-key", "ofl-demo-admin", "--interval", "0.2")
    assert admin.returncode == 0, admin.stderr
    assert "engines: none run by this gateway (offload serve)" in admin.stdout
    chat = offload(
        "chat",
        CHAT,
        "--url",
        keyed.base_url,
        "--api-key",
        "ofl-demo-admin",
        "--max-tokens",
        "4",
        stdin="Hi\n",
    )
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
