"""API keys end to end: a real gateway process in front of the engine simulator, the official SDK as
the client, and the keys file rewritten under it (as a Kubernetes Secret update would)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from engines.sim import Knobs, SimConfig
from gateway.keys import hash_key
from tests.integration.servers import GatewayProcess, wait_until
from tests.sim.conftest import RunningSim

ALICE, BOB = "ofl-alice-test-key", "ofl-bob-test-key"


def write_keys(path: Path, *names_and_keys: tuple[str, str]) -> None:
    path.write_text(yaml.safe_dump({"keys": [{"name": n, "hash": hash_key(k)} for n, k in names_and_keys]}))


def refused(gw: GatewayProcess, key: str) -> bool:
    return (
        httpx.get(gw.base_url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    )


def test_a_revoked_key_is_refused_within_a_second_while_its_open_stream_finishes(
    start_sim: Callable[[SimConfig], RunningSim], tmp_path: Path
) -> None:
    sim = start_sim(SimConfig(model="sim", knobs=Knobs(itl=0.05, output_tokens=40)))  # a 2 s stream
    models = [{"name": "chat", "task": "chat", "engine": {"url": sim.base_url, "served_name": "sim"}}]
    gw = GatewayProcess(tmp_path, models, {"OFFLOAD_RELOAD__WATCH_INTERVAL": "0.2"})
    keys = tmp_path / "keys.yaml"
    write_keys(keys, ("alice", ALICE), ("bob", BOB))
    gw.config_path.write_text(yaml.safe_dump({"models": models, "auth": {"keys_file": "keys.yaml"}}))
    gw.start()
    try:
        alice = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=ALICE, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=gw.base_url + "/v1", api_key="ofl-nobody", max_retries=0).models.list()

        stream = alice.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = iter(stream)
        first = next(chunks)
        write_keys(keys, ("bob", BOB))  # alice revoked
        revoked = time.monotonic()
        wait_until(lambda: refused(gw, ALICE), 5, interval=0.02, what="alice refused")
        took = time.monotonic() - revoked
        rest = list(chunks)

        assert took < 1.0, f"the revoked key was still accepted {took:.2f} s after the file changed"
        assert [m.id for m in openai.OpenAI(base_url=gw.base_url + "/v1", api_key=BOB).models.list()] == [
            "chat"
        ]
        # the stream alice had open went on to its end
        finishes = [c.choices[0].finish_reason for c in [first, *rest] if c.choices]
        assert finishes[-1] == "stop" and finishes.count("stop") == 1
        assert sum(1 for c in rest if c.choices and c.choices[0].delta.content) >= 30
        wait_until(lambda: '"key":"alice"' in gw.log(), 5, what="alice's summary line")
        assert ALICE not in gw.log() and BOB not in gw.log()
    finally:
        gw.stop()
