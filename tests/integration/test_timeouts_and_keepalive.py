"""A gateway with tight limits: engine timeout is 504, silence in a stream yields SSE keep-alives."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from tests.integration.conftest import CHAT, Engines
from tests.integration.servers import GatewayProcess


@pytest.fixture(scope="module")
def tight_gateway(engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = {"OFFLOAD_UPSTREAM__REQUEST_TIMEOUT": "1.0", "OFFLOAD_UPSTREAM__KEEPALIVE_INTERVAL": "0.02"}
    gw = GatewayProcess(tmp_path_factory.mktemp("tight"), engines.gateway_models(), env).start()
    yield gw
    gw.stop()


def test_engine_too_slow_is_504(tight_gateway: GatewayProcess) -> None:
    client = OpenAI(base_url=tight_gateway.base_url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(
            model=CHAT,
            messages=[{"role": "user", "content": "Count to a thousand."}],
            max_tokens=500,
            extra_body={"ignore_eos": True},
        )
    assert err.value.status_code == 504
    assert err.value.code == "engine_timeout"


def test_stream_gets_ping_comments_while_engine_is_silent(tight_gateway: GatewayProcess) -> None:
    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream": True,
        "max_tokens": 8,
    }
    with httpx.stream("POST", tight_gateway.base_url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    assert ": ping" in lines, "no keep-alive comment although the engine was silent for > 20 ms"
    assert lines[-1] == "data: [DONE]"
    # and the SDK, which ignores comments, still reads the stream
    client = OpenAI(base_url=tight_gateway.base_url + "/v1", api_key="x", max_retries=0)
    chunks = list(
        client.chat.completions.create(model=CHAT, messages=body["messages"], stream=True, max_tokens=8)
    )
    assert sum(1 for c in chunks for ch in c.choices if ch.finish_reason) == 1
