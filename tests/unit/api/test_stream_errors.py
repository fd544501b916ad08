"""A streaming request that cannot be routed gets the same OpenAI error as a non-streaming one."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient

from gateway.app import create_app
from gateway.config import parse_config
from gateway.settings import Settings

CONFIG = (
    "models: [{name: chat, task: chat, versions: {v1: {weight: 1, engines: [{url: 'http://127.0.0.1:9'}]}}}]"
)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("model", "status", "code"), [("chat:v9", 404, "model_not_found"), ("nope", 404, "model_not_found")]
)
def test_unroutable_model_is_an_openai_error_streaming_or_not(
    stream: bool, model: str, status: int, code: str
) -> None:
    with TestClient(create_app(Settings(), parse_config(CONFIG))) as client:
        r = client.post(
            "/v1/chat/completions",
            json={"model": model, "stream": stream, "messages": [{"role": "user", "content": "x"}]},
        )
    assert r.status_code == status
    assert r.json()["error"]["code"] == code
