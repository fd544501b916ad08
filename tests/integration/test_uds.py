"""The Unix socket in front of real vLLM engines: the official OpenAI SDK over httpx's Unix-socket
transport (chat, stream, embeddings). The simulator covers the socket's life cycle (tests/sim/test_uds.py)."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import CHAT, EMBED, Engines
from tests.integration.servers import GatewayProcess


@pytest.fixture(scope="module")
def uds_client(
    engines: Engines, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[openai.OpenAI, Path]]:
    tmp = tmp_path_factory.mktemp("uds")
    path = tmp / "offload.sock"
    gw = GatewayProcess(tmp, engines.gateway_models(), {"OFFLOAD_SERVER__UDS": str(path)}).start()
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=120)
    yield openai.OpenAI(base_url="http://offload/v1", api_key="unused", max_retries=0, http_client=http), path
    http.close()
    gw.stop()
    assert not path.exists(), "the socket file outlived the gateway"


def test_chat_stream_and_embeddings_over_the_socket(uds_client: tuple[openai.OpenAI, Path]) -> None:
    client, path = uds_client
    assert stat.S_IMODE(path.lstat().st_mode) == 0o660
    messages = [{"role": "user", "content": "Say hello."}]

    answer = client.chat.completions.create(model=CHAT, messages=messages, max_tokens=8)  # type: ignore[arg-type]
    assert answer.model == CHAT and answer.choices[0].message.content

    chunks = list(
        client.chat.completions.create(model=CHAT, messages=messages, max_tokens=8, stream=True)  # type: ignore[arg-type]
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] in (
        ["length"],
        ["stop"],
    )

    embedded = client.embeddings.create(model=EMBED, input=["a cat", "a dog"])
    assert [len(e.embedding) for e in embedded.data] == [384, 384]
